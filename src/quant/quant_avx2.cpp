// AVX2 + FMA + F16C twins of the activation quantizers and the dot products. Each function
// carries its target attribute, so this file needs no special compiler flags; callers check
// CpuHasAvx2Fma() first.
//
// Integer work is exact: _mm256_maddubs_epi16 (u8 x s8 pairs summed into int16) is used only
// where the pair sums cannot saturate, which each use below states.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/dot.h"
#include "quant/k_scales.h"
#include "quant/quant.h"
#include "quant/rows.h"

#define STARLING_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace starling {
namespace {

STARLING_AVX2 inline float HalfToFloatF16c(uint16_t h) {
  return _cvtsh_ss(h);
}

STARLING_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

STARLING_AVX2 inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Four vectors of 8 int32 in [-128, 127] -> 32 int8 in element order. The packs work per
// 128-bit lane, which leaves the 32-bit groups in the order 0 2 4 6 1 3 5 7 ... undone by the
// permute.
STARLING_AVX2 inline __m256i PackToInt8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b);
  const __m256i cd = _mm256_packs_epi32(c, d);
  const __m256i abcd = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// roundf (half away from zero) of integral-range floats, exactly: trunc, then step away from
// zero where the dropped fraction (exact: x - trunc(x) needs no rounding) is at least one half.
STARLING_AVX2 inline __m256i RoundHalfAway(__m256 x) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256 t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(x, t));
  const __m256 away = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const __m256 step = _mm256_or_ps(_mm256_and_ps(x, sign_mask), _mm256_set1_ps(1.0f));
  return _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(away, step)));
}

}  // namespace

bool CpuHasAvx2Fma() {
  return CpuHasAvx2();
}

STARLING_AVX2 void QuantizeRowQ8_0_Avx2(const float* x, int64_t n, void* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, n);
  auto* y = static_cast<BlockQ8_0*>(out);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < blocks; ++i, x += 32) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[k]));
    }
    // The maximum is exact in any order, so d and id are the scalar twin's.
    const float d = HorizontalMax(amax) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    // F16C rounds to nearest even, as FloatToHalf. (Not _cvtss_sh: a compound literal in clang.)
    y[i].d = static_cast<uint16_t>(
        _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT), 0));
    const __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = RoundHalfAway(_mm256_mul_ps(v[k], idv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs), PackToInt8(q[0], q[1], q[2], q[3]));
  }
}

STARLING_AVX2 void QuantizeRowQ8_K_Avx2(const float* x, int64_t n, void* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_K, n);
  auto* y = static_cast<BlockQ8_K*>(out);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < blocks; ++i, x += 256) {
    BlockQ8_K& b = y[i];
    __m256 amax_v = _mm256_setzero_ps();
    for (int k = 0; k < 32; ++k) {
      amax_v = _mm256_max_ps(amax_v, _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + 8 * k)));
    }
    const float amax = HorizontalMax(amax_v);
    if (amax == 0.0f) {
      std::memset(&b, 0, sizeof(b));
      continue;
    }
    // The scalar twin takes the sign of the first element of largest magnitude.
    float max = amax;
    const __m256 target = _mm256_set1_ps(amax);
    for (int k = 0; k < 32; ++k) {
      const __m256 a = _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + 8 * k));
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(a, target, _CMP_EQ_OQ));
      if (mask != 0) {
        max = x[8 * k + __builtin_ctz(static_cast<unsigned>(mask))];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m256 is = _mm256_set1_ps(iscale);
    const __m256i limit = _mm256_set1_epi32(127);
    // Sums of 16 quants through unsigned SADs: q + 128 = q ^ 0x80 as a byte.
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int k = 0; k < 8; ++k) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        // Round to nearest even, as NearestInt; |product| <= 127 (times 1 + 2^-23).
        const __m256 p = _mm256_mul_ps(is, _mm256_loadu_ps(x + 32 * k + 8 * j));
        q[j] = _mm256_min_epi32(limit, _mm256_cvtps_epi32(_mm256_round_ps(
                                           p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
      }
      const __m256i packed = PackToInt8(q[0], q[1], q[2], q[3]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.qs + 32 * k), packed);
      // Four 64-bit lanes: the sums of 8 biased bytes. Lanes 0+1 make bsum 2k, lanes 2+3 2k+1.
      const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(packed, bias), _mm256_setzero_si256());
      const __m256i pair = _mm256_add_epi64(sad, _mm256_srli_si256(sad, 8));
      b.bsums[2 * k] = static_cast<int16_t>(_mm256_extract_epi64(pair, 0) - 16 * 128);
      b.bsums[2 * k + 1] = static_cast<int16_t>(_mm256_extract_epi64(pair, 2) - 16 * 128);
    }
    b.d = 1 / iscale;
  }
}

// Per block: the exact int32 sums of 4 products in 8 lanes, scaled by d_w * d_a with one fma
// per lane; the lanes' sum at the end (HorizontalSum).
STARLING_AVX2 float DotQ8_0Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, n);
  const auto* x = static_cast<const BlockQ8_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i qw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs));
    // |w| * (a * sign(w)) = w * a. |w| <= 128 as u8 and |a| <= 127 (a != -128, or the sign
    // flip wraps): pair sums <= 2 * 128 * 127 < 2^15, no saturation.
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(qw), _mm256_sign_epi8(qa, qw));
    // Lanes hold sums of 4 products, |.| <= 65024: exact as floats.
    const __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
    const __m256 scale = _mm256_set1_ps(HalfToFloatF16c(x[b].d) * HalfToFloatF16c(y[b].d));
    acc = _mm256_fmadd_ps(scale, lanes, acc);
  }
  return HorizontalSum(acc);
}

// As Q8_0, with (u - 8) a = u a - 8 a formed in int16 pair sums: the unsigned nibbles u
// (elements 0-15 in the low 128 bits, 16-31 in the high) against the activations, minus 8
// times the activations' pairs. |u a pair| <= 2 * 15 * 128 = 3840 and |8 a pair| <= 2048: no
// saturation for any bytes.
STARLING_AVX2 float DotQ4_0Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_0, n);
  const auto* x = static_cast<const BlockQ4_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i eight = _mm256_set1_epi8(8);
  const __m128i low4 = _mm_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs));
    const __m256i u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low4),
                                       _mm_and_si128(packed, low4));
    const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs));
    const __m256i pairs =
        _mm256_sub_epi16(_mm256_maddubs_epi16(u, qa), _mm256_maddubs_epi16(eight, qa));
    // Lanes hold sums of 4 products, |.| <= 4 * 8 * 128: exact as floats.
    const __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
    const __m256 scale = _mm256_set1_ps(HalfToFloatF16c(x[b].d) * HalfToFloatF16c(y[b].d));
    acc = _mm256_fmadd_ps(scale, lanes, acc);
  }
  return HorizontalSum(acc);
}

// One row against one token: one block's work in one register pass. Same bits as the scalar
// twins. (Matrices run on the interleaved layouts' tiles, interleaved_tiles.h.)
STARLING_AVX2 float DotQ4_KQ8_K_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_K, n);
  const auto* x = static_cast<const BlockQ4_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  // Shuffle masks that spread int16 scale j (bytes 2j, 2j + 1) over all 16 lanes.
  __m256i spread[8];
  for (int j = 0; j < 8; ++j)
    spread[j] = _mm256_set1_epi16(static_cast<int16_t>(0x0100 * (2 * j + 1) + 2 * j));
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    const Q4_KScales scales = DecodeQ4_KScales(x[i].scales);
    // The eight 6-bit scales as int16, in both 128-bit lanes.
    const __m256i sc16 = _mm256_broadcastsi128_si256(
        _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(scales.sc))));
    __m256i acc = _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs + 32 * g));
      const __m256i lo = _mm256_and_si256(q, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
      const auto* qa = reinterpret_cast<const __m256i*>(y[i].qs + 64 * g);
      // u4 x s8 pairs: |.| <= 2 * 15 * 128, no saturation. Times the 6-bit scale in madd.
      const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256(qa)),
                                            _mm256_shuffle_epi8(sc16, spread[2 * g]));
      const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256(qa + 1)),
                                            _mm256_shuffle_epi8(sc16, spread[2 * g + 1]));
      acc = _mm256_add_epi32(acc, _mm256_add_epi32(plo, phi));
    }
    // sum_k bsums[k] * m[k / 2]: duplicate each min into two int16 lanes.
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(scales.m)));
    const __m256i mins =
        _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
    const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].bsums));
    // Both reductions at once (integer sums: exact in any order): lane 0 sumi, lane 1 summ.
    const __m256i both = _mm256_hadd_epi32(acc, _mm256_madd_epi16(bsums, mins));
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
    r = _mm_hadd_epi32(r, r);
    const int32_t sumi = _mm_cvtsi128_si32(r);
    const int32_t summ = _mm_extract_epi32(r, 1);
    // The scalar twin's float operations, in its order.
    sum = rows::AddScaleMinBlock(sum, HalfToFloatF16c(x[i].d), HalfToFloatF16c(x[i].dmin), y[i].d,
                                 sumi, summ);
  }
  return sum;
}

STARLING_AVX2 float DotQ6_KQ8_K_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ6_K, n);
  const auto* x = static_cast<const BlockQ6_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  // Shuffle masks for quarter k: int16 scale 2k over the low 128-bit lane (elements 0-15 of the
  // quarter), 2k + 1 over the high lane (elements 16-31), from a register holding 8 scales.
  __m256i quarter_scales[4];
  for (int k = 0; k < 4; ++k) {
    const auto lo = static_cast<int16_t>(0x0100 * (4 * k + 1) + 4 * k);
    const auto hi = static_cast<int16_t>(0x0100 * (4 * k + 3) + 4 * k + 2);
    quarter_scales[k] = _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo));
  }
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    const BlockQ6_K& b = x[i];
    // The sixteen int8 scales as int16: scales16 = [0..7 | 8..15].
    const __m256i scales16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      // Scales 8h .. 8h + 7 in both 128-bit lanes.
      // (The selector must be an immediate: a conditional operand is one only once the loop
      // is unrolled, which ASan builds do not do.)
      const __m256i half_scales = h == 0 ? _mm256_permute2x128_si256(scales16, scales16, 0x00)
                                         : _mm256_permute2x128_si256(scales16, scales16, 0x11);
      const auto* ql = reinterpret_cast<const __m256i*>(b.ql + 64 * h);
      const __m256i ql0 = _mm256_loadu_si256(ql);
      const __m256i ql1 = _mm256_loadu_si256(ql + 1);
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
      // The unsigned 6-bit quants (q, not q - 32) of the four 32-element quarters. The 16-bit
      // shifts cannot move bits across bytes that the masks keep.
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                             _mm256_and_si256(qh, _mm256_set1_epi8(0x30)));
      q[3] = _mm256_or_si256(
          _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
          _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(static_cast<char>(0xC0))), 2));
      for (int k = 0; k < 4; ++k) {
        const int e = 128 * h + 32 * k;  // first element; scales e/16 and e/16 + 1
        const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + e));
        const __m256i scale = _mm256_shuffle_epi8(half_scales, quarter_scales[k]);  // e/16, +1
        // u6 x s8 pairs: |.| <= 2 * 63 * 128 < 2^15, no saturation.
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], qa), scale));
      }
    }
    // sum sc * (q - 32) * a = sum sc * q * a - 32 * sum_k sc[k] * bsums[k]; both reductions at
    // once (integer sums: exact in any order).
    const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].bsums));
    const __m256i both = _mm256_hadd_epi32(acc, _mm256_madd_epi16(scales16, bsums));
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
    r = _mm_hadd_epi32(r, r);
    const int32_t sumi = _mm_cvtsi128_si32(r) - 32 * _mm_extract_epi32(r, 1);
    const float d = HalfToFloatF16c(b.d) * y[i].d;
    sum = std::fma(d, static_cast<float>(sumi), sum);
  }
  return sum;
}

}  // namespace starling
