// AVX2 twins of the dot products of Q4_1, Q5_0, Q5_1, Q2_K, Q3_K and Q5_K (quant_more.cpp). Each
// block's integer sums are computed with vector instructions, exactly; then the scalar twin's
// float operations run in its order, so every function returns the scalar twin's bits. Each
// function carries its target attribute; callers check CpuHasAvx2Fma() first.
//
// _mm256_maddubs_epi16 (u8 x s8, pairs summed into int16) is used only where a pair sum cannot
// saturate: unsigned quants below 32 times activations in [-128, 127] give at most
// 2 * 31 * 128 = 7936.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "quant/k_scales.h"
#include "quant/quant.h"
#include "quant/rows.h"

#define STARLING_AVX2 __attribute__((target("avx2,fma,f16c")))

// The float steps must be the scalar twin's, which is compiled without fma contraction (its
// explicit std::fma calls aside): fusing `sum += a * b` here would round once less.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace starling {
namespace {

constexpr int kQK = 256;

STARLING_AVX2 inline int32_t Sum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
  return _mm_cvtsi128_si32(s);
}

STARLING_AVX2 inline float Half(uint16_t h) {
  return _cvtsh_ss(h);
}

// 32 unsigned quants (each < 32) times 32 int8 activations, as 8 int32 partial sums.
STARLING_AVX2 inline __m256i DotU8(__m256i u, __m256i a) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
}

// The nibbles of 16 bytes as 32 bytes: low nibbles (elements 0-15) then high nibbles (16-31).
STARLING_AVX2 inline __m256i Nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
}

// Bit j of the 32-bit little-endian word at qh as byte j: 0x10 where set, 0 elsewhere.
STARLING_AVX2 inline __m256i FifthBits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  // Byte j gets byte j / 8 of the word, then the bit j % 8 of it is tested.
  const __m256i bytes =
      _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(bits)),
                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                           2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// Lanes 0-7 = int16 of byte k of `bytes`, lanes 8-15 = byte k + 1 (sign- or zero-extended):
// the scales of two 16-element sub-blocks for one madd over 32 elements.
template <bool kSigned>
STARLING_AVX2 inline __m256i ScalePair(__m128i bytes, int k) {
  const __m128i pick = _mm_shuffle_epi8(
      bytes,
      _mm_set_epi64x(static_cast<int64_t>(0x0101010101010101ull * static_cast<uint64_t>(k + 1)),
                     static_cast<int64_t>(0x0101010101010101ull * static_cast<uint64_t>(k))));
  return kSigned ? _mm256_cvtepi8_epi16(pick) : _mm256_cvtepu8_epi16(pick);
}

STARLING_AVX2 inline __m256i Load32(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// sum += float(sumi) * (d_w * d_a) [+ float(suma) * (m_w * d_a)] per block, as DotSmallBlocks in
// quant_more.cpp; sumi = sum u * a - offset * suma for unsigned quants u = q + offset.
template <typename Block, bool kFifthBit, bool kAffine, int kOffset>
STARLING_AVX2 float DotSmall(const void* w, const void* a, int64_t n) {
  const auto* x = static_cast<const Block*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  const __m256i ones = _mm256_set1_epi8(1);
  for (int64_t i = 0; i < n / 32; ++i) {
    __m256i u = Nibbles(x[i].qs);
    if constexpr (kFifthBit) u = _mm256_or_si256(u, FifthBits(x[i].qh));
    const __m256i act = Load32(y[i].qs);
    const int32_t dot = Sum(DotU8(u, act));
    const int32_t suma = Sum(DotU8(ones, act));
    const int32_t sumi = dot - kOffset * suma;
    const float da = Half(y[i].d);
    sum += static_cast<float>(sumi) * (Half(x[i].d) * da);
    if constexpr (kAffine) sum += static_cast<float>(suma) * (Half(x[i].m) * da);
  }
  return sum;
}

}  // namespace

STARLING_AVX2 float DotQ4_1Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  QuantBlockCount(WeightFormat::kQ4_1, n);
  return DotSmall<BlockQ4_1, false, true, 0>(w, a, n);
}

STARLING_AVX2 float DotQ5_0Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  QuantBlockCount(WeightFormat::kQ5_0, n);
  return DotSmall<BlockQ5_0, true, false, 16>(w, a, n);
}

STARLING_AVX2 float DotQ5_1Q8_0_Avx2(const void* w, const void* a, int64_t n) {
  QuantBlockCount(WeightFormat::kQ5_1, n);
  return DotSmall<BlockQ5_1, true, true, 0>(w, a, n);
}

STARLING_AVX2 float DotQ2_KQ8_K_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ2_K, n);
  const auto* x = static_cast<const BlockQ2_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  const __m256i three = _mm256_set1_epi8(3);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales));
    const __m128i scales = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i bits = Load32(x[i].qs + 32 * h);
      for (int s = 0; s < 4; ++s) {
        // Elements 128h + 32s + l: sub-blocks k = 8h + 2s (l < 16) and k + 1.
        const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * s), three);
        const __m256i pairs = _mm256_maddubs_epi16(q, Load32(y[i].qs + 128 * h + 32 * s));
        acc = _mm256_add_epi32(acc,
                               _mm256_madd_epi16(pairs, ScalePair<false>(scales, 8 * h + 2 * s)));
      }
    }
    const int32_t sumi = Sum(acc);
    // summ = sum_k (scales[k] >> 4) * bsums[k], in one madd (products <= 15 * 2048).
    const __m256i mins =
        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F)));
    const int32_t summ = Sum(_mm256_madd_epi16(mins, Load32(y[i].bsums)));
    sum = rows::AddScaleMinBlock(sum, Half(x[i].d), Half(x[i].dmin), y[i].d, sumi, summ);
  }
  return sum;
}

STARLING_AVX2 float DotQ3_KQ8_K_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ3_K, n);
  const auto* x = static_cast<const BlockQ3_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  const __m256i three = _mm256_set1_epi8(3);
  const __m256i one = _mm256_set1_epi8(1);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    // The 16 scales minus 32 as bytes, by word arithmetic (the layout in quant.h): the low
    // nibbles of bytes 0-7 then their high nibbles, with two bits each from bytes 8-11.
    uint32_t u[3];
    std::memcpy(u, x[i].scales, 12);
    const uint32_t low[4] = {u[0] & 0x0F0F0F0Fu, u[1] & 0x0F0F0F0Fu, u[0] >> 4 & 0x0F0F0F0Fu,
                             u[1] >> 4 & 0x0F0F0F0Fu};
    uint32_t words[4];
    for (int g = 0; g < 4; ++g) words[g] = low[g] | (u[2] >> (2 * g) & 0x03030303u) << 4;
    // Each byte is in [0, 63], so subtracting 32 bytewise cannot borrow across bytes.
    const __m128i sc8 =
        _mm_sub_epi8(_mm_setr_epi32(static_cast<int32_t>(words[0]), static_cast<int32_t>(words[1]),
                                    static_cast<int32_t>(words[2]), static_cast<int32_t>(words[3])),
                     _mm_set1_epi8(32));
    const __m256i hmask = Load32(x[i].hmask);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i bits = Load32(x[i].qs + 32 * h);
      for (int s = 0; s < 4; ++s) {
        // u = low + 4 * high in [0, 7] = q + 4; the 4 * sum(a) is taken off with the bsums.
        const __m256i low2 = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * s), three);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hmask, 4 * h + s), one);
        const __m256i uq = _mm256_or_si256(low2, _mm256_slli_epi16(high, 2));
        const __m256i pairs = _mm256_maddubs_epi16(uq, Load32(y[i].qs + 128 * h + 32 * s));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ScalePair<true>(sc8, 8 * h + 2 * s)));
      }
    }
    // offset = sum_k sc[k] * bsums[k], in one madd (products <= 32 * 2048).
    const int32_t offset = Sum(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), Load32(y[i].bsums)));
    const int32_t sumi = Sum(acc) - 4 * offset;
    sum = std::fma(Half(x[i].d) * y[i].d, static_cast<float>(sumi), sum);
  }
  return sum;
}

STARLING_AVX2 float DotQ5_KQ8_K_Avx2(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ5_K, n);
  const auto* x = static_cast<const BlockQ5_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  const __m256i low_mask = _mm256_set1_epi8(0x0F);
  const __m256i one = _mm256_set1_epi8(1);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    const __m256i qh = Load32(x[i].qh);
    const Q4_KScales scales = DecodeQ4_KScales(x[i].scales);
    __m256i acc = _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
      const __m256i bytes = Load32(x[i].qs + 32 * g);
      for (int half = 0; half < 2; ++half) {
        const int j = 2 * g + half;
        const __m256i nib = half == 0 ? _mm256_and_si256(bytes, low_mask)
                                      : _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_mask);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, j), one);
        const __m256i u = _mm256_or_si256(nib, _mm256_slli_epi16(high, 4));
        const auto sc = static_cast<int16_t>(scales.sc >> (8 * j) & 0xFF);
        // Pairs of u * a (|.| <= 7936) times the 6-bit scale: exact in int32; one horizontal
        // sum per super-block.
        const __m256i pairs = _mm256_maddubs_epi16(u, Load32(y[i].qs + 32 * j));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(sc)));
      }
    }
    // summ = sum_j m[j] * (bsums[2j] + bsums[2j + 1]): pair sums fit int16 (|.| <= 2 * 16 * 128).
    const __m128i bsum_pairs =
        _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y[i].bsums)),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(y[i].bsums + 8)));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(scales.m)));
    __m128i summ4 = _mm_madd_epi16(mins, bsum_pairs);
    summ4 = _mm_add_epi32(summ4, _mm_unpackhi_epi64(summ4, summ4));
    summ4 = _mm_add_epi32(summ4, _mm_shuffle_epi32(summ4, 0b01));
    const int32_t summ = _mm_cvtsi128_si32(summ4);
    const int32_t sumi = Sum(acc);
    sum = rows::AddScaleMinBlock(sum, Half(x[i].d), Half(x[i].dmin), y[i].d, sumi, summ);
  }
  return sum;
}

}  // namespace starling
