// The K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) interleaved eight rows at a time (layouts in
// quant.h): the repacking and the readable scalar dot products. Their vector twins, one per
// instruction set, are the tiles of interleaved_tiles.h.
//
// Every dot product, scalar or vector, computes exact int32 sums per 256-block and then performs
// the row-major dot product's float operations in its order, so all of them return the bits
// of the row-major functions on the original rows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
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

namespace starling {
namespace {

constexpr int kGroupRows = 8;
constexpr int kQK = 256;  // values per super-block

int64_t GroupCount(int64_t rows) {
  return (rows + kGroupRows - 1) / kGroupRows;
}

// ---- Q4_K

// Row r's 12 packed scale bytes, as in its BlockQ4_K.
// (Q4_K and Q5_K.)
template <typename ScaleMinBlock>
void PackedScales(const ScaleMinBlock& x, int r, uint8_t* packed) {
  for (int w = 0; w < 3; ++w) std::memcpy(packed + 4 * w, x.scales + 32 * w + 4 * r, 4);
}

// The unsigned nibble of value e (< 256) of row r: the row's qs byte k = 32 (e / 64) + e % 32
// (low nibble for e % 64 < 32), stored at chunk k / 4, byte 4r + k % 4.
template <typename ScaleMinBlock>
int Nibble(const ScaleMinBlock& x, int r, int e) {
  const int k = 32 * (e / 64) + e % 32;
  const uint8_t byte = x.qs[32 * (k / 4) + 4 * r + k % 4];
  return e % 64 < 32 ? byte & 0x0F : byte >> 4;
}

// Value e's unsigned 5-bit q: its nibble and, from qh chunk (e % 32) / 4, bit e / 32.
int FiveBits(const BlockQ5_Kx8& x, int r, int e) {
  const int l = e % 32;
  const uint8_t high = x.qh[32 * (l / 4) + 4 * r + l % 4];
  return Nibble(x, r, e) | (high >> (e / 32) & 1) << 4;
}

// The quant the twins read: Q4_K's nibble, Q5_K's five bits.
int UnsignedQuant(const BlockQ4_Kx8& x, int r, int e) {
  return Nibble(x, r, e);
}
int UnsignedQuant(const BlockQ5_Kx8& x, int r, int e) {
  return FiveBits(x, r, e);
}

template <typename Interleaved, typename Block>
void RepackScaleMinGroup(const Block* const* src, int valid, Interleaved& x) {
  std::memset(&x, 0, sizeof(x));
  for (int r = 0; r < valid; ++r) {
    x.d[r] = src[r]->d;
    x.dmin[r] = src[r]->dmin;
    for (int w = 0; w < 3; ++w) std::memcpy(x.scales + 32 * w + 4 * r, src[r]->scales + 4 * w, 4);
    for (int j = 0; j < 32; ++j) std::memcpy(x.qs + 32 * j + 4 * r, src[r]->qs + 4 * j, 4);
    if constexpr (std::is_same_v<Block, BlockQ5_K>) {
      for (int c = 0; c < 8; ++c) std::memcpy(x.qh + 32 * c + 4 * r, src[r]->qh + 4 * c, 4);
    }
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

// ---- Q3_K and Q2_K (quant.h's layouts: Q6_K's order of values and scales)

// The unsigned 2-bit part of value e of row r (Q2_K's quant, Q3_K's low bits).
template <typename TwoBitBlock>
int TwoBits(const TwoBitBlock& x, int r, int e) {
  const int k = e / 16;
  const int p = e % 16 / 4;
  return x.ql[32 * k + 4 * r + e % 4] >> (2 * p) & 3;
}

// Q3_K's unsigned 3-bit q (quant + 4).
int ThreeBits(const BlockQ3_Kx8& x, int r, int e) {
  const int k = e / 16;
  const int p = e % 16 / 4;
  const int high = x.qh[32 * (k / 2) + 4 * r + e % 4] >> (4 * (k % 2) + p) & 1;
  return TwoBits(x, r, e) | high << 2;
}

// Index of row r's sub-block k among the 128 scale entries (Q6_K's order).
int ScaleEntry(int r, int k) {
  return 16 * (k / 2) + 2 * r + k % 2;
}

int8_t Scale(const BlockQ3_Kx8& x, int r, int k) {
  const int j = ScaleEntry(r, k);
  const int low = j < 64 ? x.scales_low[j] & 0x0F : x.scales_low[j - 64] >> 4;
  const int high = x.scales_high[j % 32] >> (2 * (j / 32)) & 3;
  return static_cast<int8_t>((low | high << 4) - 32);
}

void RepackQ3_KGroup(const BlockQ3_K* const* src, int valid, BlockQ3_Kx8& x) {
  std::memset(&x, 0, sizeof(x));
  int8_t sc[16];
  for (int r = 0; r < valid; ++r) {
    const BlockQ3_K& b = *src[r];
    x.d[r] = b.d;
    Q3_KScales(b.scales, sc);
    for (int k = 0; k < 16; ++k) {
      const int j = ScaleEntry(r, k);
      const int stored = sc[k] + 32;  // 6 bits
      x.scales_low[j % 64] |= static_cast<uint8_t>((stored & 0x0F) << (j < 64 ? 0 : 4));
      x.scales_high[j % 32] |= static_cast<uint8_t>((stored >> 4) << (2 * (j / 32)));
    }
    for (int e = 0; e < kQK; ++e) {
      const int k = e / 16;
      const int p = e % 16 / 4;
      const int i = e % 4;
      const int low = b.qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
      const int high = b.hmask[e % 32] >> (e / 32) & 1;
      x.ql[32 * k + 4 * r + i] |= static_cast<uint8_t>(low << (2 * p));
      x.qh[32 * (k / 2) + 4 * r + i] |= static_cast<uint8_t>(high << (4 * (k % 2) + p));
    }
  }
}

void RepackQ2_KGroup(const BlockQ2_K* const* src, int valid, BlockQ2_Kx8& x) {
  std::memset(&x, 0, sizeof(x));
  for (int r = 0; r < valid; ++r) {
    const BlockQ2_K& b = *src[r];
    x.d[r] = b.d;
    x.dmin[r] = b.dmin;
    for (int k = 0; k < 16; ++k) x.scales[ScaleEntry(r, k)] = b.scales[k];
    for (int e = 0; e < kQK; ++e) {
      const int q = b.qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
      x.ql[32 * (e / 16) + 4 * r + e % 4] |= static_cast<uint8_t>(q << (2 * (e % 16 / 4)));
    }
  }
}

// ---- All

using interleaved::Source;

void RepackGroup(const BlockQ2_K* const* src, int valid, BlockQ2_Kx8& x) {
  RepackQ2_KGroup(src, valid, x);
}
void RepackGroup(const BlockQ3_K* const* src, int valid, BlockQ3_Kx8& x) {
  RepackQ3_KGroup(src, valid, x);
}

void RepackGroup(const BlockQ4_K* const* src, int valid, BlockQ4_Kx8& x) {
  RepackScaleMinGroup(src, valid, x);
}
void RepackGroup(const BlockQ5_K* const* src, int valid, BlockQ5_Kx8& x) {
  RepackScaleMinGroup(src, valid, x);
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

void RepackQ2_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ2_Kx8>(w, rows, n, out);
}
void RepackQ3_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ3_Kx8>(w, rows, n, out);
}
void RepackQ4_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ4_Kx8>(w, rows, n, out);
}
void RepackQ5_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ5_Kx8>(w, rows, n, out);
}
void RepackQ6_Kx8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ6_Kx8>(w, rows, n, out);
}

namespace {

// DequantizeRow's expressions, element for element (Q4_K and Q5_K).
template <typename Interleaved>
void DequantizeScaleMinRow(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto [x, r] = RowBlocks<Interleaved>(w, row, blocks);
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
        out[32 * j + l] = dj * static_cast<float>(UnsignedQuant(x[b], r, 32 * j + l)) - mj;
      }
    }
  }
}

}  // namespace

void DequantizeRowQ4_Kx8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeScaleMinRow<BlockQ4_Kx8>(w, row, n, out);
}
void DequantizeRowQ5_Kx8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeScaleMinRow<BlockQ5_Kx8>(w, row, n, out);
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

void DequantizeRowQ3_Kx8(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ3_K, n);
  const auto [x, r] = RowBlocks<BlockQ3_Kx8>(w, row, blocks);
  for (int64_t b = 0; b < blocks; ++b, out += kQK) {
    const float d = HalfToFloat(x[b].d[r]);
    for (int e = 0; e < kQK; ++e) {
      // (d * sc) * q, as DequantizeRow
      out[e] = d * static_cast<float>(Scale(x[b], r, e / 16)) *
               static_cast<float>(ThreeBits(x[b], r, e) - 4);
    }
  }
}

void DequantizeRowQ2_Kx8(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ2_K, n);
  const auto [x, r] = RowBlocks<BlockQ2_Kx8>(w, row, blocks);
  for (int64_t b = 0; b < blocks; ++b, out += kQK) {
    const float d = HalfToFloat(x[b].d[r]);
    const float dmin = HalfToFloat(x[b].dmin[r]);
    for (int e = 0; e < kQK; ++e) {
      const uint8_t sc = x[b].scales[ScaleEntry(r, e / 16)];
      out[e] = d * static_cast<float>(sc & 0x0F) * static_cast<float>(TwoBits(x[b], r, e)) -
               dmin * static_cast<float>(sc >> 4);
    }
  }
}

namespace {

// The scalar twins: per row and token, the row-major dot product's sums and float operations,
// block after block: sum = block_step(x[b], r, y[b], sum).
template <typename Interleaved, typename BlockStep>
void DotsPerRow(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                int64_t n, float* out, int64_t out_stride, BlockStep block_step) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  for (int64_t row = 0; row < rows; ++row) {
    const auto [x, r] = RowBlocks<Interleaved>(w, row, blocks);
    for (int64_t t = 0; t < tokens; ++t) {
      const auto* y =
          reinterpret_cast<const BlockQ8_K*>(static_cast<const char*>(a) + t * a_stride);
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) sum = block_step(x[b], r, y[b], sum);
      out[t * out_stride + row] = sum;
    }
  }
}

// DotQ4_KQ8_K's / DotQ5_KQ8_K's block.
template <typename Interleaved>
float ScaleMinBlock(const Interleaved& x, int r, const BlockQ8_K& y, float sum) {
  uint8_t packed[12];
  PackedScales(x, r, packed);
  int32_t sumi = 0;  // sum_j sc[j] * (q . qa over sub-block j)
  int32_t summ = 0;  // sum_j m[j] * (sum of qa over sub-block j, from two bsums)
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    Q4_KScaleMin(packed, j, &sc, &m);
    int32_t part = 0;
    for (int e = 32 * j; e < 32 * j + 32; ++e) part += UnsignedQuant(x, r, e) * y.qs[e];
    sumi += sc * part;
    summ += m * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
  }
  return rows::AddScaleMinBlock(sum, HalfToFloat(x.d[r]), HalfToFloat(x.dmin[r]), y.d, sumi, summ);
}

// DotQ6_KQ8_K's block: sum_k sc[k] * ((q - 32) . qa over sub-block k), one fma.
float Q6_KBlock(const BlockQ6_Kx8& x, int r, const BlockQ8_K& y, float sum) {
  int32_t sumi = 0;
  for (int k = 0; k < 16; ++k) {
    int32_t part = 0;
    for (int e = 16 * k; e < 16 * k + 16; ++e) part += (SixBits(x, r, e) - 32) * y.qs[e];
    sumi += Scale(x, r, k) * part;
  }
  return std::fma(HalfToFloat(x.d[r]) * y.d, static_cast<float>(sumi), sum);
}

// DotQ3_KQ8_K's block: sum_k sc[k] * ((q - 4) . qa over sub-block k), one fma.
float Q3_KBlock(const BlockQ3_Kx8& x, int r, const BlockQ8_K& y, float sum) {
  int32_t sumi = 0;
  for (int k = 0; k < 16; ++k) {
    int32_t part = 0;
    for (int e = 16 * k; e < 16 * k + 16; ++e) part += (ThreeBits(x, r, e) - 4) * y.qs[e];
    sumi += Scale(x, r, k) * part;
  }
  return std::fma(HalfToFloat(x.d[r]) * y.d, static_cast<float>(sumi), sum);
}

// DotQ2_KQ8_K's block: sum_k sc[k] * (q . qa over sub-block k) and sum_k m[k] * bsums[k].
float Q2_KBlock(const BlockQ2_Kx8& x, int r, const BlockQ8_K& y, float sum) {
  int32_t sumi = 0;
  int32_t summ = 0;
  for (int k = 0; k < 16; ++k) {
    const uint8_t sc = x.scales[ScaleEntry(r, k)];
    int32_t part = 0;
    for (int e = 16 * k; e < 16 * k + 16; ++e) part += TwoBits(x, r, e) * y.qs[e];
    sumi += (sc & 0x0F) * part;
    summ += (sc >> 4) * y.bsums[k];
  }
  return rows::AddScaleMinBlock(sum, HalfToFloat(x.d[r]), HalfToFloat(x.dmin[r]), y.d, sumi, summ);
}

}  // namespace

void DotsQ2_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsPerRow<BlockQ2_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride, Q2_KBlock);
}
void DotsQ3_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsPerRow<BlockQ3_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride, Q3_KBlock);
}
void DotsQ4_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsPerRow<BlockQ4_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride,
                          ScaleMinBlock<BlockQ4_Kx8>);
}
void DotsQ5_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsPerRow<BlockQ5_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride,
                          ScaleMinBlock<BlockQ5_Kx8>);
}
void DotsQ6_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsPerRow<BlockQ6_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride, Q6_KBlock);
}

}  // namespace starling
