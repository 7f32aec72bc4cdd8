// Q4_K and Q6_K interleaved eight rows at a time (layouts in quant.h): the repacking, the
// readable scalar dot products, and their AVX2 twins, side by side.
//
// Every dot product, scalar or AVX2, computes exact int32 sums per 256-block and then performs
// DotQ4_KQ8_K's / DotQ6_KQ8_K's float operations in their order, so all of them return the bits
// of the row-major functions on the original rows.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/kernels.h"
#include "quant/interleaved.h"
#include "quant/quant.h"
#include "quant/rows.h"

// The dequantizers must round as DequantizeRow (quant.cpp, compiled the same way): no fusing of
// a * b - c into an fma, wherever this is compiled.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define STARLING_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace starling {
namespace {

constexpr int kGroupRows = 8;
constexpr int kQK = 256;  // values per super-block

int64_t GroupCount(int64_t rows) {
  return (rows + kGroupRows - 1) / kGroupRows;
}

// ---- Q4_K

// Row r's 12 packed scale bytes, as in its BlockQ4_K.
void PackedScales(const BlockQ4_Kx8& x, int r, uint8_t* packed) {
  for (int w = 0; w < 3; ++w) std::memcpy(packed + 4 * w, x.scales + 32 * w + 4 * r, 4);
}

// The unsigned nibble of value e (< 256) of row r: the row's qs byte k = 32 (e / 64) + e % 32
// (low nibble for e % 64 < 32), stored at chunk k / 4, byte 4r + k % 4.
int Nibble(const BlockQ4_Kx8& x, int r, int e) {
  const int k = 32 * (e / 64) + e % 32;
  const uint8_t byte = x.qs[32 * (k / 4) + 4 * r + k % 4];
  return e % 64 < 32 ? byte & 0x0F : byte >> 4;
}

void RepackQ4_KGroup(const BlockQ4_K* const* src, int valid, BlockQ4_Kx8& x) {
  std::memset(&x, 0, sizeof(x));
  for (int r = 0; r < valid; ++r) {
    x.d[r] = src[r]->d;
    x.dmin[r] = src[r]->dmin;
    for (int w = 0; w < 3; ++w) std::memcpy(x.scales + 32 * w + 4 * r, src[r]->scales + 4 * w, 4);
    for (int j = 0; j < 32; ++j) std::memcpy(x.qs + 32 * j + 4 * r, src[r]->qs + 4 * j, 4);
  }
}

// ---- Q6_K

// The unsigned 6-bit q (quant + 32) of value e of row r (layout in quant.h).
int SixBits(const BlockQ6_Kx8& x, int r, int e) {
  const int k = e / 16;
  const int p = e % 16 / 4;
  const int i = e % 4;
  const uint8_t low = x.ql[32 * (2 * k + p / 2) + 4 * r + i];
  const uint8_t high = x.qh[32 * k + 4 * r + i];
  return (p % 2 == 0 ? low & 0x0F : low >> 4) | (high >> (2 * p) & 3) << 4;
}

int8_t Scale(const BlockQ6_Kx8& x, int r, int k) {
  return x.scales[16 * (k / 2) + 2 * r + k % 2];
}

void RepackQ6_KGroup(const BlockQ6_K* const* src, int valid, BlockQ6_Kx8& x) {
  std::memset(&x, 0, sizeof(x));
  int8_t signed_q[kQK];
  uint8_t q[kQK];  // unsigned: quant + 32
  for (int r = 0; r < valid; ++r) {
    x.d[r] = src[r]->d;
    for (int k = 0; k < 16; ++k) x.scales[16 * (k / 2) + 2 * r + k % 2] = src[r]->scales[k];
    UnpackQ6_K(*src[r], signed_q);
    for (int e = 0; e < kQK; ++e) q[e] = static_cast<uint8_t>(signed_q[e] + 32);
    // Byte i of row r's word in each chunk: values 16k + 4p + i, p = 0..3.
    for (int k = 0; k < 16; ++k) {
      for (int i = 0; i < 4; ++i) {
        const uint8_t* v = q + 16 * k + i;  // v[4p]: quad p's value
        x.ql[32 * (2 * k) + 4 * r + i] = static_cast<uint8_t>((v[0] & 0x0F) | (v[4] & 0x0F) << 4);
        x.ql[32 * (2 * k + 1) + 4 * r + i] =
            static_cast<uint8_t>((v[8] & 0x0F) | (v[12] & 0x0F) << 4);
        x.qh[32 * k + 4 * r + i] = static_cast<uint8_t>(v[0] >> 4 | (v[4] >> 4) << 2 |
                                                        (v[8] >> 4) << 4 | (v[12] >> 4) << 6);
      }
    }
  }
}

// ---- Both

template <typename Interleaved>
struct Source;
template <>
struct Source<BlockQ4_Kx8> {
  using Block = BlockQ4_K;
  static constexpr WeightFormat kType = WeightFormat::kQ4_K;
};
template <>
struct Source<BlockQ6_Kx8> {
  using Block = BlockQ6_K;
  static constexpr WeightFormat kType = WeightFormat::kQ6_K;
};

void RepackGroup(const BlockQ4_K* const* src, int valid, BlockQ4_Kx8& x) {
  RepackQ4_KGroup(src, valid, x);
}
void RepackGroup(const BlockQ6_K* const* src, int valid, BlockQ6_Kx8& x) {
  RepackQ6_KGroup(src, valid, x);
}

template <typename Interleaved>
void Repack(const void* w, int64_t rows, int64_t n, void* out) {
  using Block = typename Source<Interleaved>::Block;
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* in = static_cast<const Block*>(w);
  auto* groups = static_cast<Interleaved*>(out);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    const int valid = static_cast<int>(interleaved::ValidRows(g, rows));
    for (int64_t b = 0; b < blocks; ++b) {
      const Block* src[kGroupRows];
      for (int r = 0; r < valid; ++r) src[r] = &in[(g * kGroupRows + r) * blocks + b];
      RepackGroup(src, valid, groups[g * blocks + b]);
    }
  }
}

// Row `row`'s blocks and its index in their group.
template <typename Interleaved>
std::pair<const Interleaved*, int> RowBlocks(const void* w, int64_t row, int64_t blocks) {
  return {static_cast<const Interleaved*>(w) + row / kGroupRows * blocks,
          static_cast<int>(row % kGroupRows)};
}

}  // namespace

void RepackQ4_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ4_Kx8>(w, rows, n, out);
}
void RepackQ6_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ6_Kx8>(w, rows, n, out);
}

// DequantizeRow's expressions, element for element.
void DequantizeRowQ4_Kx8(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_K, n);
  const auto [x, r] = RowBlocks<BlockQ4_Kx8>(w, row, blocks);
  for (int64_t b = 0; b < blocks; ++b, out += kQK) {
    uint8_t packed[12];
    PackedScales(x[b], r, packed);
    const float d = HalfToFloat(x[b].d[r]);
    const float dmin = HalfToFloat(x[b].dmin[r]);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      Q4_KScaleMin(packed, j, &sc, &m);
      const float dj = d * sc;
      const float mj = dmin * m;
      for (int l = 0; l < 32; ++l) {
        out[32 * j + l] = dj * static_cast<float>(Nibble(x[b], r, 32 * j + l)) - mj;
      }
    }
  }
}

void DequantizeRowQ6_Kx8(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ6_K, n);
  const auto [x, r] = RowBlocks<BlockQ6_Kx8>(w, row, blocks);
  for (int64_t b = 0; b < blocks; ++b, out += kQK) {
    const float d = HalfToFloat(x[b].d[r]);
    for (int e = 0; e < kQK; ++e) {
      const auto q = static_cast<int8_t>(SixBits(x[b], r, e) - 32);
      out[e] = d * Scale(x[b], r, e / 16) * q;  // (d * sc) * q, as DequantizeRow
    }
  }
}

// The scalar twins: per row and token, DotQ4_KQ8_K's / DotQ6_KQ8_K's sums and float operations.
void DotsQ4_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_K, n);
  for (int64_t row = 0; row < rows; ++row) {
    const auto [x, r] = RowBlocks<BlockQ4_Kx8>(w, row, blocks);
    for (int64_t t = 0; t < tokens; ++t) {
      const auto* y =
          reinterpret_cast<const BlockQ8_K*>(static_cast<const char*>(a) + t * a_stride);
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        uint8_t packed[12];
        PackedScales(x[b], r, packed);
        int32_t sumi = 0;  // sum_j sc[j] * (q . qa over sub-block j)
        int32_t summ = 0;  // sum_j m[j] * (sum of qa over sub-block j, from two bsums)
        for (int j = 0; j < 8; ++j) {
          uint8_t sc, m;
          Q4_KScaleMin(packed, j, &sc, &m);
          int32_t part = 0;
          for (int e = 32 * j; e < 32 * j + 32; ++e) part += Nibble(x[b], r, e) * y[b].qs[e];
          sumi += sc * part;
          summ += m * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        sum = rows::AddScaleMinBlock(sum, HalfToFloat(x[b].d[r]), HalfToFloat(x[b].dmin[r]), y[b].d,
                                     sumi, summ);
      }
      out[t * out_stride + row] = sum;
    }
  }
}

void DotsQ6_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ6_K, n);
  for (int64_t row = 0; row < rows; ++row) {
    const auto [x, r] = RowBlocks<BlockQ6_Kx8>(w, row, blocks);
    for (int64_t t = 0; t < tokens; ++t) {
      const auto* y =
          reinterpret_cast<const BlockQ8_K*>(static_cast<const char*>(a) + t * a_stride);
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t sumi = 0;  // sum_k sc[k] * ((q - 32) . qa over sub-block k)
        for (int k = 0; k < 16; ++k) {
          int32_t part = 0;
          for (int e = 16 * k; e < 16 * k + 16; ++e) {
            part += (SixBits(x[b], r, e) - 32) * y[b].qs[e];
          }
          sumi += Scale(x[b], r, k) * part;
        }
        const float d = HalfToFloat(x[b].d[r]) * y[b].d;
        sum = std::fma(d, static_cast<float>(sumi), sum);
      }
      out[t * out_stride + row] = sum;
    }
  }
}

namespace {

// ---- AVX2
//
// A tile is one group (8 rows) against kTokens activation rows; lane r of every vector belongs
// to row r. Per 256-block and token, the block's integer sums are exact int32 lanes, then the
// scalar twin's float operations run lane-wise (a vector multiply, fma, fnmadd (= fma(-a, b, c)
// exactly) and int32 -> float conversion each round as their scalar forms).

// Activation word: values e..e+3 of a Q8_K block, broadcast to all eight rows' lanes.
STARLING_AVX2 inline __m256i Broadcast4(const int8_t* qs) {
  int32_t word;
  std::memcpy(&word, qs, 4);
  return _mm256_set1_epi32(word);
}

// A shuffle mask that fills each row's 32-bit lane with bytes (b0, b1, b2, b3) of that same
// lane (an index >= 4 zeroes the byte). _mm256_shuffle_epi8 indexes within 128-bit halves, each
// holding four rows.
STARLING_AVX2 inline __m256i WithinRows(int b0, int b1, int b2, int b3) {
  auto lane = [&](int r) {
    auto byte = [r](int i) { return i < 4 ? static_cast<uint32_t>(4 * r + i) : 0x80u; };
    return static_cast<int>(byte(b0) | byte(b1) << 8 | byte(b2) << 16 | byte(b3) << 24);
  };
  return _mm256_setr_epi32(lane(0), lane(1), lane(2), lane(3), lane(0), lane(1), lane(2), lane(3));
}

// Byte j of each row into both of its int16 lanes, zero-extended.
STARLING_AVX2 inline __m256i SpreadByte(int j) {
  return WithinRows(j, 4, j, 4);
}

// Streaming a matrix from memory (generation), the hardware prefetchers alone reach 5-9 GB/s
// on one Zen 3 core here (the Q6_K blocks, read in two regions at once, worst); prefetching two
// blocks ahead, a few lines per step of each block's loop, 12-14 GB/s. Lines [first, first +
// count) of the block kPrefetchBlocks after x; past the matrix's end is harmless (prefetches do
// not fault).
constexpr int kPrefetchBlocks = 2;

template <typename Interleaved>
STARLING_AVX2 inline void PrefetchAhead(const Interleaved& x, int first, int count) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(&x) + kPrefetchBlocks * sizeof(x);
  for (int i = 0; i < count; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * (first + i)), _MM_HINT_T0);
  }
}

STARLING_AVX2 inline __m256 ActivationScale(const BlockQ8_K& y) {
  return _mm256_set1_ps(y.d);
}

// Q4_K per block and token: 64 maddubs summed in int16 per sub-block (8 each), 8 madds with the
// sub-blocks' scales, 8 madds of the mins with the bsums; the nibbles and scales are unpacked
// once per block for all tokens.
template <int kTokens>
STARLING_AVX2 void TileQ4_K(const BlockQ4_Kx8* x, int64_t blocks, const BlockQ8_K* const* y,
                            __m256* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i spread[4] = {SpreadByte(0), SpreadByte(1), SpreadByte(2), SpreadByte(3)};
  __m256 acc[kTokens];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const BlockQ4_Kx8& xb = x[b];
    // Decoded scales and mins, row r's four bytes in lane r: sc[0..3], sc[4..7], m[0..3],
    // m[4..7] (Q4_KScaleMin's formulas on 32-bit lanes; the shifts bring in only bits that
    // the masks drop).
    const auto* words = reinterpret_cast<const __m256i*>(xb.scales);
    const __m256i u0 = _mm256_loadu_si256(words);
    const __m256i u1 = _mm256_loadu_si256(words + 1);
    const __m256i u2 = _mm256_loadu_si256(words + 2);
    const __m256i low6 = _mm256_set1_epi8(0x3F);
    const __m256i top2 = _mm256_set1_epi8(0x30);  // bits 6-7 moved to 4-5
    const __m256i sc[2] = {_mm256_and_si256(u0, low6),
                           _mm256_or_si256(_mm256_and_si256(u2, low4),
                                           _mm256_and_si256(_mm256_srli_epi32(u0, 2), top2))};
    const __m256i mins[2] = {_mm256_and_si256(u1, low6),
                             _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), low4),
                                             _mm256_and_si256(_mm256_srli_epi32(u1, 2), top2))};
    // Sub-blocks 2g (low nibbles of chunks 8g..8g+7) and 2g + 1 (their high nibbles), one
    // after the other: one int16 sum per token is live, so more tokens fit the registers.
    __m256i sumi[kTokens];
    for (auto& v : sumi) v = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int g = 0; g < 4; ++g) {
      PrefetchAhead(xb, 5 * g, 5);  // 20 lines: the block's 18
      const __m256i* chunks = reinterpret_cast<const __m256i*>(xb.qs + 256 * g);
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        __m256i sum16[kTokens];
        for (auto& v : sum16) v = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m256i packed = _mm256_loadu_si256(chunks + c);
          const __m256i q = half == 0 ? _mm256_and_si256(packed, low4)
                                      : _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
#pragma GCC unroll 8
          for (int t = 0; t < kTokens; ++t) {
            // u4 x s8 pairs: |.| <= 2 * 15 * 128 = 3840; eight of them <= 30720: no int16
            // saturation or wrap.
            const int8_t* qa = y[t][b].qs + 64 * g + 32 * half + 4 * c;
            sum16[t] = _mm256_add_epi16(sum16[t], _mm256_maddubs_epi16(q, Broadcast4(qa)));
            // Keeps the sums in registers: without this, GCC reassociates the unrolled sums,
            // computes all the products first and spills them.
            asm("" : "+x"(sum16[t]));
          }
        }
        // Sub-block 2g + half's 6-bit scale in both int16 lanes of each row.
        const __m256i scale = _mm256_shuffle_epi8(sc[g / 2], spread[2 * g % 4 + half]);
        for (int t = 0; t < kTokens; ++t) {
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sum16[t], scale));
        }
      }
    }
    // summ = sum_j m[j] * (bsums[2j] + bsums[2j + 1]): both int16 lanes of a row hold m[j],
    // against bsums word j (|.| <= 2^25, exact).
    __m256i summ[kTokens];
    for (auto& v : summ) v = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i m = _mm256_shuffle_epi8(mins[j / 4], spread[j % 4]);
      for (int t = 0; t < kTokens; ++t) {
        int32_t bsum_pair;
        std::memcpy(&bsum_pair, y[t][b].bsums + 2 * j, 4);
        summ[t] = _mm256_add_epi32(summ[t], _mm256_madd_epi16(m, _mm256_set1_epi32(bsum_pair)));
      }
    }
    // DotQ4_KQ8_K's float operations, in its order.
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.d)));
    const __m256 dminw =
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.dmin)));
    for (int t = 0; t < kTokens; ++t) {
      const __m256 da = ActivationScale(y[t][b]);
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dminw, da), _mm256_cvtepi32_ps(summ[t]), acc[t]);
    }
  }
  for (int t = 0; t < kTokens; ++t) out[t] = acc[t];
}

// Q6_K per block and token: 64 maddubs, added in int16 two at a time, 32 madds with the
// sub-blocks' scales, and 8 madds of the scales with the bsums for the -32 offset; the 6-bit
// quants and scales are unpacked once per block for all tokens.
template <int kTokens>
STARLING_AVX2 void TileQ6_K(const BlockQ6_Kx8* x, int64_t blocks, const BlockQ8_K* const* y,
                            __m256* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i high2 = _mm256_set1_epi8(0x30);
  // Shuffles of a row's int16 scale pair (sc[2s], sc[2s + 1]): the first into both int16
  // lanes, the second into both.
  const __m256i first = WithinRows(0, 1, 0, 1);
  const __m256i second = WithinRows(2, 3, 2, 3);
  __m256 acc[kTokens];
  for (auto& v : acc) v = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const BlockQ6_Kx8& xb = x[b];
    __m256i sumi[kTokens];
    for (auto& v : sumi) v = _mm256_setzero_si256();
#pragma GCC unroll 1
    for (int k = 0; k < 16; ++k) {
      PrefetchAhead(xb, 2 * k, 2);  // 32 lines: the block's 27
      const __m256i pair = _mm256_cvtepi8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.scales + 16 * (k / 2))));
      const __m256i scale = _mm256_shuffle_epi8(pair, k % 2 == 0 ? first : second);
      const auto* ql = reinterpret_cast<const __m256i*>(xb.ql + 64 * k);
      const __m256i ql0 = _mm256_loadu_si256(ql);
      const __m256i ql1 = _mm256_loadu_si256(ql + 1);
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qh + 32 * k));
      // Quads p = 0..3 of the sub-block: the nibble, and qh bits 2p, 2p + 1 moved to bits 4-5
      // (the 16-bit shifts bring in only bits that the masks drop).
      const __m256i q0 = _mm256_or_si256(_mm256_and_si256(ql0, low4),
                                         _mm256_and_si256(_mm256_slli_epi16(qh, 4), high2));
      const __m256i q1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                         _mm256_and_si256(_mm256_slli_epi16(qh, 2), high2));
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_and_si256(qh, high2));
      const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), high2));
#pragma GCC unroll 8
      for (int t = 0; t < kTokens; ++t) {
        const int8_t* qa = y[t][b].qs + 16 * k;
        // u6 x s8 pairs: |.| <= 2 * 63 * 128 = 16128; two of them <= 32256: no int16
        // saturation or wrap. Times the int8 scale in madd: exact int32 lanes.
        const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(q0, Broadcast4(qa)),
                                             _mm256_maddubs_epi16(q1, Broadcast4(qa + 4)));
        const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(q2, Broadcast4(qa + 8)),
                                             _mm256_maddubs_epi16(q3, Broadcast4(qa + 12)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(s01, scale),
                                                             _mm256_madd_epi16(s23, scale)));
        asm("" : "+x"(sumi[t]));  // as in TileQ4_K
      }
    }
    // sum sc (q - 32) qa = sum sc q qa - 32 sum_k sc[k] bsums[k]: the scale pairs against
    // bsums words (|.| <= 16 * 128 * 2048 = 2^22, times 32 <= 2^27: exact).
    __m256i offset[kTokens];
    for (auto& v : offset) v = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      const __m256i pair = _mm256_cvtepi8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.scales + 16 * s)));
      for (int t = 0; t < kTokens; ++t) {
        int32_t bsum_pair;
        std::memcpy(&bsum_pair, y[t][b].bsums + 2 * s, 4);
        offset[t] =
            _mm256_add_epi32(offset[t], _mm256_madd_epi16(pair, _mm256_set1_epi32(bsum_pair)));
      }
    }
    for (int t = 0; t < kTokens; ++t) {
      sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(offset[t], 5));
    }
    // DotQ6_KQ8_K's float operations.
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.d)));
    for (int t = 0; t < kTokens; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, ActivationScale(y[t][b])),
                               _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < kTokens; ++t) out[t] = acc[t];
}

// Tiles of 8 rows x up to 8 tokens. Measured on Zen 3, one thread, a 64 x 4096 chunk in cache
// against 64 tokens: tiles of 8 tokens ran ~1.2x the row-major kernels (1 row x 8 tokens) for
// Q4_K and 1.05-1.2x for Q6_K (tiles of 4 or 6: as fast for Q4_K, slower for Q6_K); against one
// token (generation), ~2.2x (Q4_K) and ~1.5x (Q6_K) the row-major single dot products, so
// streaming from memory is bound by the memory, not the kernel.
constexpr int kTileTokens = 8;

template <typename Interleaved>
using TileFn = void (*)(const Interleaved* x, int64_t blocks, const BlockQ8_K* const* y,
                        __m256* out);

// Groups of 8 rows, each against tiles of up to kTileTokens tokens; tiles[k - 1] takes k.
template <typename Interleaved>
STARLING_AVX2 void DotsInterleavedAvx2(const TileFn<Interleaved> (&tiles)[kTileTokens],
                                       const void* w, int64_t rows, const void* a, size_t a_stride,
                                       int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* groups = static_cast<const Interleaved*>(w);
  const auto* ab = static_cast<const char*>(a);
  for (int64_t g = 0; g < GroupCount(rows); ++g) {
    const int64_t valid = interleaved::ValidRows(g, rows);
    for (int64_t t = 0; t < tokens; t += kTileTokens) {
      const int64_t tile_tokens = std::min<int64_t>(kTileTokens, tokens - t);
      const BlockQ8_K* y[kTileTokens];
      for (int64_t i = 0; i < tile_tokens; ++i) {
        y[i] = reinterpret_cast<const BlockQ8_K*>(ab + (t + i) * a_stride);
      }
      __m256 acc[kTileTokens];
      tiles[tile_tokens - 1](groups + g * blocks, blocks, y, acc);
      interleaved::StoreGroupTile(acc, tile_tokens, valid, out + t * out_stride + g * kGroupRows,
                                  out_stride);
    }
  }
}

}  // namespace

void DotsQ4_Kx8Q8_K_Avx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                         int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  static constexpr TileFn<BlockQ4_Kx8> kTiles[kTileTokens] = {TileQ4_K<1>, TileQ4_K<2>, TileQ4_K<3>,
                                                              TileQ4_K<4>, TileQ4_K<5>, TileQ4_K<6>,
                                                              TileQ4_K<7>, TileQ4_K<8>};
  DotsInterleavedAvx2(kTiles, w, rows, a, a_stride, tokens, n, out, out_stride);
}

void DotsQ6_Kx8Q8_K_Avx2(const void* w, int64_t rows, const void* a, size_t a_stride,
                         int64_t tokens, int64_t n, float* out, int64_t out_stride) {
  static constexpr TileFn<BlockQ6_Kx8> kTiles[kTileTokens] = {TileQ6_K<1>, TileQ6_K<2>, TileQ6_K<3>,
                                                              TileQ6_K<4>, TileQ6_K<5>, TileQ6_K<6>,
                                                              TileQ6_K<7>, TileQ6_K<8>};
  DotsInterleavedAvx2(kTiles, w, rows, a, a_stride, tokens, n, out, out_stride);
}

}  // namespace starling
