// Q4_0 and Q8_0 interleaved eight rows at a time (layouts in quant.h): the repacking, the
// readable scalar dot products, and their AVX2 twins, side by side.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "quant/interleaved.h"
#include "quant/quant.h"

#define STARLING_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace starling {
namespace {

using interleaved::GroupCount;
using interleaved::kGroupRows;

// The row-major block type an interleaved block comes from.
template <typename Interleaved>
struct Source;
template <>
struct Source<BlockQ4_0x8> {
  using Block = BlockQ4_0;
  static constexpr WeightFormat kType = WeightFormat::kQ4_0;
};
template <>
struct Source<BlockQ8_0x8> {
  using Block = BlockQ8_0;
  static constexpr WeightFormat kType = WeightFormat::kQ8_0;
};

// Both layouts keep row r's bytes qs[4j..4j+3] at bytes 4r..4r+3 of 32-byte chunk j.
template <typename Interleaved>
void Repack(const void* w, int64_t rows, int64_t n, void* out) {
  using Block = typename Source<Interleaved>::Block;
  constexpr int kChunks = sizeof(Block{}.qs) / 4;
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* in = static_cast<const Block*>(w);
  auto* groups = static_cast<Interleaved*>(out);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      Interleaved& x = groups[g * blocks + b];
      std::memset(&x, 0, sizeof(x));
      for (int r = 0; r < kGroupRows && g * kGroupRows + r < rows; ++r) {
        const Block& src = in[(g * kGroupRows + r) * blocks + b];
        x.d[r] = src.d;
        for (int j = 0; j < kChunks; ++j) std::memcpy(x.qs + 32 * j + 4 * r, src.qs + 4 * j, 4);
      }
    }
  }
}

// Quant k (< 16 for Q4_0's bytes, < 32 for Q8_0) of row r, as stored: the byte at qs[k] of the
// row's own block.
template <typename Interleaved>
auto StoredByte(const Interleaved& x, int r, int k) {
  return x.qs[32 * (k / 4) + 4 * r + k % 4];
}

// Element e (< 32) of row r: the signed quant (Q4_0: nibble - 8).
int Quant(const BlockQ4_0x8& x, int r, int e) {
  const uint8_t byte = StoredByte(x, r, e % 16);
  return (e < 16 ? byte & 0x0F : byte >> 4) - 8;
}
int Quant(const BlockQ8_0x8& x, int r, int e) {
  return StoredByte(x, r, e);
}

template <typename Interleaved>
void DequantizeRowInterleaved(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* group = static_cast<const Interleaved*>(w) + row / kGroupRows * blocks;
  const int r = static_cast<int>(row % kGroupRows);
  for (int64_t b = 0; b < blocks; ++b) {
    const float d = HalfToFloat(group[b].d[r]);
    for (int e = 0; e < 32; ++e) out[32 * b + e] = d * static_cast<float>(Quant(group[b], r, e));
  }
}

// The scalar twin: per row and token, exact integer block sums, one fma per block.
template <typename Interleaved>
void DotsInterleaved(const void* w, int64_t rows, const void* a, size_t a_stride,
                     const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                     int64_t out_stride) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* groups = static_cast<const Interleaved*>(w);
  for (int64_t row = 0; row < rows; ++row) {
    const Interleaved* x = groups + row / kGroupRows * blocks;
    const int r = static_cast<int>(row % kGroupRows);
    for (int64_t t = 0; t < tokens; ++t) {
      const auto* y =
          reinterpret_cast<const BlockQ8_0*>(static_cast<const char*>(a) + t * a_stride);
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t sumi = 0;
        for (int e = 0; e < 32; ++e) sumi += Quant(x[b], r, e) * y[b].qs[e];
        const float scale = HalfToFloat(x[b].d[r]) * terms[t * blocks + b].d;
        sum = std::fma(static_cast<float>(sumi), scale, sum);
      }
      out[t * out_stride + row] = sum;
    }
  }
}

}  // namespace

int64_t InterleavedBlockCount(int64_t rows, int64_t n) {
  return GroupCount(rows) * (n / 32);
}

void RepackQ4_0x8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ4_0x8>(w, rows, n, out);
}
void RepackQ8_0x8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ8_0x8>(w, rows, n, out);
}

void DequantizeRowQ4_0x8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeRowInterleaved<BlockQ4_0x8>(w, row, n, out);
}
void DequantizeRowQ8_0x8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeRowInterleaved<BlockQ8_0x8>(w, row, n, out);
}

void ComputeQ8_0BlockTerms(const void* a, int64_t n, Q8_0BlockTerms* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, n);
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
  DotsInterleaved<BlockQ4_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void DotsQ8_0x8Q8_0(const void* w, int64_t rows, const void* a, size_t a_stride,
                    const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                    int64_t out_stride) {
  DotsInterleaved<BlockQ8_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}

namespace {

// One group (8 rows) against kTokens activation rows: out[t] = the 8 rows' sums for token t.
// The block loop is the same for both formats; BlockSums differs.
//
// Q4_0, per block and token: 8 maddubs, 7 int16 adds, one widening, one offset add; the
// nibbles are unpacked once per block for all tokens.
template <int kTokens>
STARLING_AVX2 inline void BlockSums(const BlockQ4_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* y_terms, __m256i* sumi) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i sums[kTokens];
  for (auto& s : sums) s = _mm256_setzero_si256();
    // Not unrolled: unrolled, GCC schedules all products first and spills them.
#pragma GCC unroll 1
  for (int j = 0; j < 4; ++j) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
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
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < kTokens; ++t) {
    // Lanes 2r and 2r + 1 hold row r's pairs: madd with ones gives row r's sum in lane r; the
    // offset turns sum u q_a into sum (u - 8) q_a.
    sumi[t] =
        _mm256_add_epi32(_mm256_madd_epi16(sums[t], ones), _mm256_set1_epi32(y_terms[t][b].offset));
  }
}

// Q8_0, per block and token: 8 x (sign, maddubs, widening, int32 add); |w| once per chunk.
template <int kTokens>
STARLING_AVX2 inline void BlockSums(const BlockQ8_0x8& x, const BlockQ8_0* const* y, int64_t b,
                                    const Q8_0BlockTerms* const* /*y_terms*/, __m256i* sumi) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < kTokens; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
  for (int j = 0; j < 8; ++j) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
    const __m256i w_abs = _mm256_abs_epi8(w);
    for (int t = 0; t < kTokens; ++t) {
      int32_t a4;  // activation values 4j..4j+3
      std::memcpy(&a4, y[t][b].qs + 4 * j, 4);
      // |w| x sign(a, w) = w a; pair sums |.| <= 2 * 128 * 127 (activations in [-127, 127]):
      // no saturation, but two would overflow int16, so each is widened.
      const __m256i p = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(_mm256_set1_epi32(a4), w));
      sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, ones));
    }
  }
}

// stream: the weights come from memory (generation: one tile of tokens per group), so the
// lines ahead are prefetched.
template <typename Interleaved, int kTokens>
STARLING_AVX2 void Tile(const Interleaved* x, int64_t blocks, const char* a, size_t a_stride,
                        const Q8_0BlockTerms* terms, bool stream, __m256* out) {
  const BlockQ8_0* y[kTokens];
  const Q8_0BlockTerms* y_terms[kTokens];
  for (int t = 0; t < kTokens; ++t) {
    y[t] = reinterpret_cast<const BlockQ8_0*>(a + t * a_stride);
    y_terms[t] = terms + t * blocks;
  }
  __m256 acc[kTokens];  // local, so that it lives in registers
  for (auto& sum : acc) sum = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    if (stream) interleaved::PrefetchLines(x + b, interleaved::kPrefetchBytes);
    __m256i sumi[kTokens];
    BlockSums<kTokens>(x[b], y, b, y_terms, sumi);
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].d)));
    for (int t = 0; t < kTokens; ++t) {
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(y_terms[t][b].d));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), scale, acc[t]);
    }
  }
  for (int t = 0; t < kTokens; ++t) out[t] = acc[t];
}

// Groups of 8 rows, each against tiles of up to 4 tokens.
template <typename Interleaved>
STARLING_AVX2 void DotsInterleavedAvx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                                       const Q8_0BlockTerms* terms, int64_t tokens, int64_t n,
                                       float* out, int64_t out_stride) {
  constexpr int kTokens = 4;
  using TileFn = void (*)(const Interleaved*, int64_t, const char*, size_t, const Q8_0BlockTerms*,
                          bool, __m256*);
  static constexpr TileFn kTiles[kTokens] = {Tile<Interleaved, 1>, Tile<Interleaved, 2>,
                                             Tile<Interleaved, 3>, Tile<Interleaved, 4>};
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* groups = static_cast<const Interleaved*>(w);
  const auto* ab = static_cast<const char*>(a);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    const int64_t valid = interleaved::ValidRows(g, rows);
    for (int64_t t = 0; t < tokens; t += kTokens) {
      const int64_t tile_tokens = std::min<int64_t>(kTokens, tokens - t);
      __m256 acc[kTokens];
      kTiles[tile_tokens - 1](groups + g * blocks, blocks, ab + t * a_stride, a_stride,
                              terms + t * blocks, tokens <= kTokens, acc);
      interleaved::StoreGroupTile(acc, tile_tokens, valid, out + t * out_stride + g * kGroupRows,
                                  out_stride);
    }
  }
}

}  // namespace

void DotsQ4_0x8Q8_0_Avx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                         const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                         int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ4_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void DotsQ8_0x8Q8_0_Avx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                         const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                         int64_t out_stride) {
  DotsInterleavedAvx2<BlockQ8_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}

}  // namespace starling
