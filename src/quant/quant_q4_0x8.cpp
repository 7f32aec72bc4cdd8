// Q4_0 interleaved eight rows at a time (layout in quant.h): the repacking, the readable
// scalar dot products, and their AVX2 twin, side by side.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "quant/quant.h"

#define STARLING_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace starling {
namespace {

constexpr int kGroupRows = 8;

int64_t GroupCount(int64_t rows) {
  return (rows + kGroupRows - 1) / kGroupRows;
}

// Element e (< 32) of row r in an interleaved block, as the unsigned nibble u = q + 8.
uint8_t Nibble(const BlockQ4_0x8& x, int r, int e) {
  const int half = e / 16;  // 0: low nibbles, 1: high nibbles
  const int k = e % 16;     // qs index in the row's own Q4_0 block
  const uint8_t byte = x.qs[32 * (k / 4) + 4 * r + k % 4];
  return half == 0 ? byte & 0x0F : byte >> 4;
}

}  // namespace

int64_t Q4_0x8BlockCount(int64_t rows, int64_t n) {
  return GroupCount(rows) * QuantBlockCount(QuantType::kQ4_0, n);
}

void RepackQ4_0x8(const void* w, int64_t rows, int64_t n, void* out) {
  const int64_t blocks = QuantBlockCount(QuantType::kQ4_0, n);
  const auto* in = static_cast<const BlockQ4_0*>(w);
  auto* groups = static_cast<BlockQ4_0x8*>(out);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      BlockQ4_0x8& x = groups[g * blocks + b];
      std::memset(&x, 0, sizeof(x));
      for (int r = 0; r < kGroupRows && g * kGroupRows + r < rows; ++r) {
        const BlockQ4_0& src = in[(g * kGroupRows + r) * blocks + b];
        x.d[r] = src.d;
        for (int j = 0; j < 4; ++j) std::memcpy(x.qs + 32 * j + 4 * r, src.qs + 4 * j, 4);
      }
    }
  }
}

void DequantizeRowQ4_0x8(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(QuantType::kQ4_0, n);
  const auto* group = static_cast<const BlockQ4_0x8*>(w) + row / kGroupRows * blocks;
  const int r = static_cast<int>(row % kGroupRows);
  for (int64_t b = 0; b < blocks; ++b) {
    const float d = HalfToFloat(group[b].d[r]);
    for (int e = 0; e < 32; ++e) out[32 * b + e] = d * (Nibble(group[b], r, e) - 8);
  }
}

void ComputeQ8_0BlockTerms(const void* a, int64_t n, Q8_0BlockTerms* out) {
  const int64_t blocks = QuantBlockCount(QuantType::kQ8_0, n);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t sum = 0;
    for (const int8_t q : y[b].qs) sum += q;
    out[b] = {HalfToFloat(y[b].d), -8 * sum};
  }
}

void DotsQ4_0x8Q8_0(const void* w, int64_t rows, const void* a, size_t a_stride,
                    const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                    int64_t out_stride) {
  const int64_t blocks = QuantBlockCount(QuantType::kQ4_0, n);
  const auto* groups = static_cast<const BlockQ4_0x8*>(w);
  for (int64_t row = 0; row < rows; ++row) {
    const BlockQ4_0x8* x = groups + row / kGroupRows * blocks;
    const int r = static_cast<int>(row % kGroupRows);
    for (int64_t t = 0; t < tokens; ++t) {
      const auto* y =
          reinterpret_cast<const BlockQ8_0*>(static_cast<const char*>(a) + t * a_stride);
      const Q8_0BlockTerms* y_terms = terms + t * blocks;
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t sumi = y_terms[b].offset;
        for (int e = 0; e < 32; ++e) sumi += Nibble(x[b], r, e) * y[b].qs[e];
        const float scale = HalfToFloat(x[b].d[r]) * y_terms[b].d;
        sum = std::fma(static_cast<float>(sumi), scale, sum);
      }
      out[t * out_stride + row] = sum;
    }
  }
}

namespace {

// One group (8 rows) against kTokens activation rows: acc[t] holds the 8 rows' sums for
// token t. Per block and token: 8 maddubs, 7 int16 adds, one widening, one conversion, one
// multiply and one fma; the nibbles are unpacked once per block for all tokens.
template <int kTokens>
STARLING_AVX2 void TileQ4_0x8Q8_0(const BlockQ4_0x8* x, int64_t blocks, const char* a,
                                  size_t a_stride, const Q8_0BlockTerms* terms, __m256* acc) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const BlockQ8_0* y[kTokens];
  const Q8_0BlockTerms* y_terms[kTokens];
  for (int t = 0; t < kTokens; ++t) {
    y[t] = reinterpret_cast<const BlockQ8_0*>(a + t * a_stride);
    y_terms[t] = terms + t * blocks;
    acc[t] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i sums[kTokens];
    for (auto& s : sums) s = _mm256_setzero_si256();
    // Not unrolled: unrolled, GCC schedules all 32 products first and spills them.
#pragma GCC unroll 1
    for (int j = 0; j < 4; ++j) {
      const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs + 32 * j));
      const __m256i lo = _mm256_and_si256(packed, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
      for (int t = 0; t < kTokens; ++t) {
        int32_t a_lo, a_hi;  // activation values 4j..4j+3 and 16+4j..16+4j+3
        std::memcpy(&a_lo, y[t][b].qs + 4 * j, 4);
        std::memcpy(&a_hi, y[t][b].qs + 16 + 4 * j, 4);
        // u8 nibbles x s8: pair sums |.| <= 2 * 15 * 128 = 3840; eight of them <= 30720: no
        // int16 saturation or wrap.
        const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(a_lo)),
                                           _mm256_maddubs_epi16(hi, _mm256_set1_epi32(a_hi)));
        sums[t] = _mm256_add_epi16(sums[t], p);
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].d)));
    for (int t = 0; t < kTokens; ++t) {
      // Lanes 2r and 2r + 1 hold row r's pairs: madd with ones gives row r's sum in lane r.
      const __m256i sumi = _mm256_add_epi32(_mm256_madd_epi16(sums[t], ones),
                                            _mm256_set1_epi32(y_terms[t][b].offset));
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(y_terms[t][b].d));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), scale, acc[t]);
    }
  }
}

}  // namespace

STARLING_AVX2 void DotsQ4_0x8Q8_0_Avx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                                       const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                       float* out, int64_t out_stride) {
  constexpr int kTokens = 4;
  using Tile =
      void (*)(const BlockQ4_0x8*, int64_t, const char*, size_t, const Q8_0BlockTerms*, __m256*);
  static constexpr Tile kTiles[kTokens] = {TileQ4_0x8Q8_0<1>, TileQ4_0x8Q8_0<2>, TileQ4_0x8Q8_0<3>,
                                           TileQ4_0x8Q8_0<4>};
  const int64_t blocks = QuantBlockCount(QuantType::kQ4_0, n);
  const auto* groups = static_cast<const BlockQ4_0x8*>(w);
  const auto* ab = static_cast<const char*>(a);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    const int64_t valid = std::min<int64_t>(kGroupRows, rows - g * kGroupRows);
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t tile_tokens = std::min<int64_t>(kTokens, tokens - t);
      __m256 acc[kTokens];
      kTiles[tile_tokens - 1](groups + g * blocks, blocks, ab + t * a_stride, a_stride,
                              terms + t * blocks, acc);
      for (int64_t i = 0; i < tile_tokens; ++i) {
        float* dst = out + (t + i) * out_stride + g * kGroupRows;
        if (valid == kGroupRows) {
          _mm256_storeu_ps(dst, acc[i]);
        } else {
          alignas(32) float lanes[kGroupRows];
          _mm256_store_ps(lanes, acc[i]);
          std::copy(lanes, lanes + valid, dst);
        }
      }
    }
  }
}

}  // namespace starling
