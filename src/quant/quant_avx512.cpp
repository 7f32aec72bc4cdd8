// AVX-512 (F, BW, VL) + VNNI twins of the Q8_0-activation dot products: vpdpbusd multiplies
// unsigned by signed bytes and adds groups of 4 into int32 lanes in one instruction, and a
// 512-bit register holds two 32-element blocks. Each function carries its target attribute, so
// this file needs no special compiler flags; callers check CpuHasAvx512Vnni() first.
//
// Per output (whatever the tile shape, so batching never changes a result): 16 float lanes;
// per pair of blocks (b, b + 1): acc = fma(scale, float(exact int32 lane sums), acc) with
// scale = d_w * d_a of block b in lanes 0-7 and of block b + 1 in lanes 8-15 (a trailing odd
// block pairs with zeros); the result is the lanes' sum in a fixed tree order. Q4_0 adds the
// -8 offset once per output, as the AVX2 version does.
// GCC 12 warns that the _mm512_undefined_* placeholders inside its own intrinsics may be used
// uninitialized when they are inlined here (a known false positive of its headers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "quant/quant.h"

#define STARLING_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))

namespace starling {
namespace {

STARLING_AVX512 inline float Sum16(__m512 v) {
  // (AVX512F only: the 256-bit halves through the double-typed extract.)
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), high);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

STARLING_AVX512 inline float HalfToFloat16c(uint16_t h) {
  return _cvtsh_ss(h);
}

// Lanes 0-7 = s[0], lanes 8-15 = s[1].
STARLING_AVX512 inline __m512 PairScale(float s0, float s1) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(s0)),
                                             _mm256_castps_pd(_mm256_set1_ps(s1)), 1));
}

// The activation bytes of blocks b and b + 1 (zeros for a missing b + 1).
STARLING_AVX512 inline __m512i ActivationPair(const BlockQ8_0* y, int64_t b, bool pair) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs));
  const __m256i hi = pair ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b + 1].qs))
                          : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// Q4_0 nibbles of blocks b and b + 1 as bytes in element order: [b low | b high | b+1 low |
// b+1 high] (16 bytes each); zeros for a missing b + 1.
STARLING_AVX512 inline __m512i NibblePair(const BlockQ4_0* x, int64_t b, bool pair) {
  const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs));
  const __m128i q1 =
      pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b + 1].qs)) : _mm_setzero_si128();
  const __m512i both = _mm512_castsi256_si512(_mm256_set_m128i(q1, q0));
  const __m512i spread = _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(1, 1, 0, 0));
  const __m512i shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
  return _mm512_and_si512(_mm512_srlv_epi64(spread, shifts), _mm512_set1_epi8(0x0F));
}

// sum_b x[b] * y[b] in 16 lanes of fma over whole groups, their Sum16, then the tail in order.
STARLING_AVX512 inline float OffsetDot16(const float* x, const float* y, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 16 <= n; b += 16) {
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + b), _mm512_loadu_ps(y + b), acc);
  }
  float sum = Sum16(acc);
  for (; b < n; ++b) sum = std::fma(x[b], y[b], sum);
  return sum;
}

template <int RM, int RN>
STARLING_AVX512 void TileQ4_0(const char* w, size_t w_stride, const char* a, size_t a_stride,
                              int64_t blocks, const float* dw, const float* da, const float* offset,
                              float* out, int64_t out_stride) {
  __m512 acc[RM][RN];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < blocks; b += 2) {
    const bool pair = b + 1 < blocks;
    __m512i q[RM];
    for (int i = 0; i < RM; ++i) {
      q[i] = NibblePair(reinterpret_cast<const BlockQ4_0*>(w + i * w_stride), b, pair);
    }
    for (int j = 0; j < RN; ++j) {
      const __m512i qa =
          ActivationPair(reinterpret_cast<const BlockQ8_0*>(a + j * a_stride), b, pair);
      const float* da_j = da + j * blocks + b;
      for (int i = 0; i < RM; ++i) {
        // u8 nibbles x s8: exact int32 sums of 4 products (|.| <= 4 * 15 * 128).
        const __m512 lanes =
            _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q[i], qa));
        const float* dw_i = dw + i * blocks + b;
        const __m512 scale = PairScale(dw_i[0] * da_j[0], pair ? dw_i[1] * da_j[1] : 0.0f);
        acc[i][j] = _mm512_fmadd_ps(scale, lanes, acc[i][j]);
      }
    }
  }
  for (int i = 0; i < RM; ++i) {
    for (int j = 0; j < RN; ++j) {
      out[j * out_stride + i] =
          Sum16(acc[i][j]) + OffsetDot16(dw + i * blocks, offset + j * blocks, blocks);
    }
  }
}

template <int RM, int RN>
STARLING_AVX512 void TileQ8_0(const char* w, size_t w_stride, const char* a, size_t a_stride,
                              int64_t blocks, float* out, int64_t out_stride) {
  __m512 acc[RM][RN];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < blocks; b += 2) {
    const bool pair = b + 1 < blocks;
    __m512i qw[RM];
    float dw[RM][2];
    for (int i = 0; i < RM; ++i) {
      const auto* x = reinterpret_cast<const BlockQ8_0*>(w + i * w_stride);
      qw[i] = ActivationPair(x, b, pair);  // same layout as activations
      dw[i][0] = HalfToFloat16c(x[b].d);
      dw[i][1] = pair ? HalfToFloat16c(x[b + 1].d) : 0.0f;
    }
    for (int j = 0; j < RN; ++j) {
      const auto* y = reinterpret_cast<const BlockQ8_0*>(a + j * a_stride);
      const __m512i qa = ActivationPair(y, b, pair);
      const float da0 = HalfToFloat16c(y[b].d);
      const float da1 = pair ? HalfToFloat16c(y[b + 1].d) : 0.0f;
      for (int i = 0; i < RM; ++i) {
        // |w| * (a with w's sign) = w * a; |a| <= 127 (QuantizeRow never writes -128), so the
        // negation cannot wrap. Exact int32 sums of 4 products.
        const __mmask64 negative = _mm512_movepi8_mask(qw[i]);
        const __m512i signed_a = _mm512_mask_sub_epi8(qa, negative, _mm512_setzero_si512(), qa);
        const __m512i sums =
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qw[i]), signed_a);
        const __m512 scale = PairScale(dw[i][0] * da0, dw[i][1] * da1);
        acc[i][j] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums), acc[i][j]);
      }
    }
  }
  for (int i = 0; i < RM; ++i) {
    for (int j = 0; j < RN; ++j) out[j * out_stride + i] = Sum16(acc[i][j]);
  }
}

}  // namespace

STARLING_AVX512 void DotsQ4_0Q8_0_Avx512(const void* w, size_t w_stride, int64_t rows,
                                         const void* a, size_t a_stride, int64_t tokens, int64_t n,
                                         float* out, int64_t out_stride) {
  constexpr int kRows = 4, kTokens = 3;
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_0, n);
  const auto* wb = static_cast<const char*>(w);
  const auto* ab = static_cast<const char*>(a);
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(blocks) * static_cast<size_t>(2 * tokens + kRows);
  if (scratch.size() < need) scratch.resize(need);
  float* da = scratch.data();
  float* offset = da + tokens * blocks;
  float* dw = offset + tokens * blocks;
  for (int64_t t = 0; t < tokens; ++t) {
    const auto* y = reinterpret_cast<const BlockQ8_0*>(ab + t * a_stride);
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t sum = 0;  // -8 * sum(qa): exact
      for (const int8_t q : y[b].qs) sum += q;
      da[t * blocks + b] = HalfToFloat16c(y[b].d);
      offset[t * blocks + b] = da[t * blocks + b] * static_cast<float>(-8 * sum);
    }
  }
  using Tile = void (*)(const char*, size_t, const char*, size_t, int64_t, const float*,
                        const float*, const float*, float*, int64_t);
  static constexpr Tile kTiles[4][3] = {{TileQ4_0<1, 1>, TileQ4_0<1, 2>, TileQ4_0<1, 3>},
                                        {TileQ4_0<2, 1>, TileQ4_0<2, 2>, TileQ4_0<2, 3>},
                                        {TileQ4_0<3, 1>, TileQ4_0<3, 2>, TileQ4_0<3, 3>},
                                        {TileQ4_0<4, 1>, TileQ4_0<4, 2>, TileQ4_0<4, 3>}};
  for (int64_t r = 0; r < rows; r += kRows) {
    const int64_t rm = std::min<int64_t>(kRows, rows - r);
    for (int64_t i = 0; i < rm; ++i) {
      const auto* x = reinterpret_cast<const BlockQ4_0*>(wb + (r + i) * w_stride);
      for (int64_t b = 0; b < blocks; ++b) dw[i * blocks + b] = HalfToFloat16c(x[b].d);
    }
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t rn = std::min<int64_t>(kTokens, tokens - t);
      kTiles[rm - 1][rn - 1](wb + r * w_stride, w_stride, ab + t * a_stride, a_stride, blocks, dw,
                             da + t * blocks, offset + t * blocks, out + t * out_stride + r,
                             out_stride);
    }
  }
}

STARLING_AVX512 void DotsQ8_0Q8_0_Avx512(const void* w, size_t w_stride, int64_t rows,
                                         const void* a, size_t a_stride, int64_t tokens, int64_t n,
                                         float* out, int64_t out_stride) {
  constexpr int kRows = 4, kTokens = 3;
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, n);
  const auto* wb = static_cast<const char*>(w);
  const auto* ab = static_cast<const char*>(a);
  using Tile = void (*)(const char*, size_t, const char*, size_t, int64_t, float*, int64_t);
  static constexpr Tile kTiles[4][3] = {{TileQ8_0<1, 1>, TileQ8_0<1, 2>, TileQ8_0<1, 3>},
                                        {TileQ8_0<2, 1>, TileQ8_0<2, 2>, TileQ8_0<2, 3>},
                                        {TileQ8_0<3, 1>, TileQ8_0<3, 2>, TileQ8_0<3, 3>},
                                        {TileQ8_0<4, 1>, TileQ8_0<4, 2>, TileQ8_0<4, 3>}};
  for (int64_t r = 0; r < rows; r += kRows) {
    const int64_t rm = std::min<int64_t>(kRows, rows - r);
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t rn = std::min<int64_t>(kTokens, tokens - t);
      kTiles[rm - 1][rn - 1](wb + r * w_stride, w_stride, ab + t * a_stride, a_stride, blocks,
                             out + t * out_stride + r, out_stride);
    }
  }
}

float DotQ4_0Q8_0_Avx512(const void* w, const void* a, int64_t n) {
  float out = 0.0f;
  DotsQ4_0Q8_0_Avx512(w, 0, 1, a, 0, 1, n, &out, 1);
  return out;
}

float DotQ8_0Q8_0_Avx512(const void* w, const void* a, int64_t n) {
  float out = 0.0f;
  DotsQ8_0Q8_0_Avx512(w, 0, 1, a, 0, 1, n, &out, 1);
  return out;
}

}  // namespace starling
