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

STARLING_AVX2 inline int32_t HorizontalSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
  return _mm_cvtsi128_si32(s);
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

namespace {

// sum_b x[b] * y[b]: 8 lanes of fma over whole groups of 8, their HorizontalSum, then the tail
// in order.
STARLING_AVX2 inline float OffsetDot(const float* x, const float* y, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= n; b += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + b), _mm256_loadu_ps(y + b), acc);
  float sum = HorizontalSum(acc);
  for (; b < n; ++b) sum = std::fma(x[b], y[b], sum);
  return sum;
}

// One tile of RM weight rows x RN activation rows of the Q8_0-activation products. Each output
// has its own accumulator of 8 float lanes and sees the same operations in the same order for
// every tile shape (the tile only shares loads), so results do not depend on how rows and
// tokens are batched:
//   per block: d = d_w * d_a (float); acc = fma(d, float(exact int32 lane sums), acc)
//   at the end: the lanes' sum (HorizontalSum).
template <int RM, int RN>
STARLING_AVX2 inline void TileQ8_0Q8_0(const char* w, size_t w_stride, const char* a,
                                       size_t a_stride, int64_t blocks, const float* dw,
                                       const float* da, float* out, int64_t out_stride) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[RM][RN];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i qw[RM];
    for (int i = 0; i < RM; ++i) {
      const auto* x = reinterpret_cast<const BlockQ8_0*>(w + i * w_stride) + b;
      qw[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs));
    }
    for (int j = 0; j < RN; ++j) {
      const auto* y = reinterpret_cast<const BlockQ8_0*>(a + j * a_stride) + b;
      const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y->qs));
      const __m256 da_b = _mm256_broadcast_ss(da + j * blocks + b);
      for (int i = 0; i < RM; ++i) {
        // |w| * (a * sign(w)) = w * a. |w| <= 128 as u8 and |a| <= 127 (a != -128, or the sign
        // flip wraps): pair sums <= 2 * 128 * 127 < 2^15, no saturation.
        const __m256i pairs =
            _mm256_maddubs_epi16(_mm256_abs_epi8(qw[i]), _mm256_sign_epi8(qa, qw[i]));
        // Lanes hold sums of 4 products, |.| <= 65024: exact as floats.
        const __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        const __m256 scale = _mm256_mul_ps(_mm256_broadcast_ss(dw + i * blocks + b), da_b);
        acc[i][j] = _mm256_fmadd_ps(scale, lanes, acc[i][j]);
      }
    }
  }
  for (int i = 0; i < RM; ++i) {
    for (int j = 0; j < RN; ++j) out[j * out_stride + i] = HorizontalSum(acc[i][j]);
  }
}

// out[b] = float(x[b].d) for a row of Q4_0 or Q8_0 blocks: eight 2-byte scales gathered (18 or
// 34 bytes apart) into one register and converted together.
template <typename Block>
STARLING_AVX2 inline void BlockScales(const Block* x, int64_t blocks, float* out) {
  int64_t b = 0;
  for (; b + 8 <= blocks; b += 8) {
    const __m128i halves =
        _mm_setr_epi16(static_cast<int16_t>(x[b].d), static_cast<int16_t>(x[b + 1].d),
                       static_cast<int16_t>(x[b + 2].d), static_cast<int16_t>(x[b + 3].d),
                       static_cast<int16_t>(x[b + 4].d), static_cast<int16_t>(x[b + 5].d),
                       static_cast<int16_t>(x[b + 6].d), static_cast<int16_t>(x[b + 7].d));
    _mm256_storeu_ps(out + b, _mm256_cvtph_ps(halves));
  }
  for (; b < blocks; ++b) out[b] = HalfToFloatF16c(x[b].d);
}

// Q4_0 weights, two rows per register: a row pair's blocks share one 256-bit register (row r0
// in the low 128 bits, r1 in the high), low nibbles (elements 0-15) in one register and high
// nibbles (16-31) in another, against the activation block's halves broadcast to both 128-bit
// lanes. So one maddubs pair, add, madd, cvt, mul and fma serve 64 products.
// q . a uses the unsigned nibbles q in [0, 15]; the offset -8 * sum(a) is added once per output
// as sum_b d_w[b] * offset[b], with offset[b] = d_a[b] * float(-8 * sum(qa[b])) precomputed
// per token. Per output, whatever the tile (its row's 4 lanes of the pair's register):
//   per block: acc = fma(d_w[b] * d_a[b], float(exact int32 lane sums of q . a), acc)
//   at the end: Sum4(acc lanes) + OffsetDot(dw, offset)
struct Q4_0RowPair {
  const BlockQ4_0* row[2];  // row[1] == row[0] when the tile has an odd row: its lanes unused
  const float* dw[2];       // [blocks] each
};

STARLING_AVX2 inline float Sum4(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

template <int RP, int RN>
STARLING_AVX2 void TileQ4_0Q8_0(const Q4_0RowPair* pairs, const char* a, size_t a_stride,
                                int64_t blocks, const float* da, const float* offset,
                                float* const* out_rows, int64_t out_stride) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[RP][RN];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i lo[RP], hi[RP];
    __m256 dw[RP];
    for (int p = 0; p < RP; ++p) {
      const __m256i packed = _mm256_inserti128_si256(
          _mm256_castsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(pairs[p].row[0][b].qs))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(pairs[p].row[1][b].qs)), 1);
      lo[p] = _mm256_and_si256(packed, low4);
      hi[p] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
      dw[p] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(pairs[p].dw[0] + b)),
                                   _mm_broadcast_ss(pairs[p].dw[1] + b), 1);
    }
    for (int j = 0; j < RN; ++j) {
      const auto* y = reinterpret_cast<const BlockQ8_0*>(a + j * a_stride) + b;
      const __m256i a_lo =
          _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y->qs)));
      const __m256i a_hi = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(y->qs + 16)));
      const __m256 da_b = _mm256_broadcast_ss(da + j * blocks + b);
      for (int p = 0; p < RP; ++p) {
        // u8 nibbles x s8: maddubs pair sums |.| <= 2 * 15 * 128; the add, <= 7680: no int16
        // saturation. Lanes hold sums of 8 products: exact as floats.
        const __m256i sums =
            _mm256_add_epi16(_mm256_maddubs_epi16(lo[p], a_lo), _mm256_maddubs_epi16(hi[p], a_hi));
        const __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, ones));
        acc[p][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw[p], da_b), lanes, acc[p][j]);
      }
    }
  }
  for (int p = 0; p < RP; ++p) {
    for (int j = 0; j < RN; ++j) {
      const __m128 halves[2] = {_mm256_castps256_ps128(acc[p][j]),
                                _mm256_extractf128_ps(acc[p][j], 1)};
      for (int h = 0; h < 2; ++h) {
        float* out = out_rows[2 * p + h];
        if (out == nullptr) continue;  // the duplicate of an odd row
        out[j * out_stride] =
            Sum4(halves[h]) + OffsetDot(pairs[p].dw[h], offset + j * blocks, blocks);
      }
    }
  }
}

}  // namespace

STARLING_AVX2 void DotsQ8_0Q8_0_Avx2(const void* w, size_t w_stride, int64_t rows, const void* a,
                                     size_t a_stride, int64_t tokens, int64_t n, float* out,
                                     int64_t out_stride) {
  // 3 x 2 tiles: 6 accumulators, 3 weight vectors and the activations fit the 16 registers.
  constexpr int kRows = 3;
  constexpr int kTokens = 2;
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, n);
  const auto* wb = static_cast<const char*>(w);
  const auto* ab = static_cast<const char*>(a);
  // The activations' scales [tokens][blocks] and a row tile's weight scales [kRows][blocks].
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(blocks) * static_cast<size_t>(tokens + kRows);
  if (scratch.size() < need) scratch.resize(need);
  float* da = scratch.data();
  float* dw = da + tokens * blocks;
  for (int64_t t = 0; t < tokens; ++t) {
    BlockScales(reinterpret_cast<const BlockQ8_0*>(ab + t * a_stride), blocks, da + t * blocks);
  }
  using Tile = void (*)(const char*, size_t, const char*, size_t, int64_t, const float*,
                        const float*, float*, int64_t);
  static constexpr Tile kTiles[3][2] = {{TileQ8_0Q8_0<1, 1>, TileQ8_0Q8_0<1, 2>},
                                        {TileQ8_0Q8_0<2, 1>, TileQ8_0Q8_0<2, 2>},
                                        {TileQ8_0Q8_0<3, 1>, TileQ8_0Q8_0<3, 2>}};
  for (int64_t r = 0; r < rows; r += kRows) {
    const int64_t rm = std::min<int64_t>(kRows, rows - r);
    for (int64_t i = 0; i < rm; ++i) {
      BlockScales(reinterpret_cast<const BlockQ8_0*>(wb + (r + i) * w_stride), blocks,
                  dw + i * blocks);
    }
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t rn = std::min<int64_t>(kTokens, tokens - t);
      kTiles[rm - 1][rn - 1](wb + r * w_stride, w_stride, ab + t * a_stride, a_stride, blocks, dw,
                             da + t * blocks, out + t * out_stride + r, out_stride);
    }
  }
}

STARLING_AVX2 void DotsQ4_0Q8_0_Avx2(const void* w, size_t w_stride, int64_t rows, const void* a,
                                     size_t a_stride, int64_t tokens, int64_t n, float* out,
                                     int64_t out_stride) {
  // Tiles of 2 row pairs x 3 tokens: 6 accumulators, 4 nibble and 2 scale vectors, and the
  // activation halves fit the 16 registers.
  constexpr int kPairs = 2;
  constexpr int kTokens = 3;
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_0, n);
  const auto* wb = static_cast<const char*>(w);
  const auto* ab = static_cast<const char*>(a);
  // The activations' scales and offsets, [tokens][blocks], and a row tile's weight scales.
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(blocks) * static_cast<size_t>(2 * tokens + 2 * kPairs);
  if (scratch.size() < need) scratch.resize(need);
  float* da = scratch.data();
  float* offset = da + tokens * blocks;
  float* dw = offset + tokens * blocks;
  const __m256i eight = _mm256_set1_epi8(8);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t t = 0; t < tokens; ++t) {
    const auto* y = reinterpret_cast<const BlockQ8_0*>(ab + t * a_stride);
    for (int64_t b = 0; b < blocks; ++b) {
      const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs));
      // -8 * sum(qa): |.| <= 8 * 32 * 128 = 2^15, exact in int32 and as a float.
      const int32_t sum = HorizontalSum(_mm256_madd_epi16(_mm256_maddubs_epi16(eight, qa), ones));
      da[t * blocks + b] = HalfToFloatF16c(y[b].d);
      offset[t * blocks + b] = da[t * blocks + b] * static_cast<float>(-sum);
    }
  }
  using Tile = void (*)(const Q4_0RowPair*, const char*, size_t, int64_t, const float*,
                        const float*, float* const*, int64_t);
  static constexpr Tile kTiles[2][3] = {
      {TileQ4_0Q8_0<1, 1>, TileQ4_0Q8_0<1, 2>, TileQ4_0Q8_0<1, 3>},
      {TileQ4_0Q8_0<2, 1>, TileQ4_0Q8_0<2, 2>, TileQ4_0Q8_0<2, 3>}};
  for (int64_t r = 0; r < rows; r += 2 * kPairs) {
    const int64_t rm = std::min<int64_t>(2 * kPairs, rows - r);
    const int64_t pairs_used = (rm + 1) / 2;
    Q4_0RowPair pairs[kPairs];
    for (int64_t i = 0; i < rm; ++i) {
      const auto* x = reinterpret_cast<const BlockQ4_0*>(wb + (r + i) * w_stride);
      BlockScales(x, blocks, dw + i * blocks);
    }
    for (int64_t p = 0; p < pairs_used; ++p) {
      for (int64_t h = 0; h < 2; ++h) {
        const int64_t i = std::min(2 * p + h, rm - 1);  // an odd last row pairs with itself
        pairs[p].row[h] = reinterpret_cast<const BlockQ4_0*>(wb + (r + i) * w_stride);
        pairs[p].dw[h] = dw + i * blocks;
      }
    }
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t rn = std::min<int64_t>(kTokens, tokens - t);
      float* out_rows[2 * kPairs] = {};
      for (int64_t i = 0; i < rm; ++i) out_rows[i] = out + t * out_stride + r + i;
      kTiles[pairs_used - 1][rn - 1](pairs, ab + t * a_stride, a_stride, blocks, da + t * blocks,
                                     offset + t * blocks, out_rows, out_stride);
    }
  }
}

float DotQ8_0Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  float out = 0.0f;
  DotsQ8_0Q8_0_Avx2(w, 0, 1, a, 0, 1, n, &out, 1);
  return out;
}

float DotQ4_0Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  float out = 0.0f;
  DotsQ4_0Q8_0_Avx2(w, 0, 1, a, 0, 1, n, &out, 1);
  return out;
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
