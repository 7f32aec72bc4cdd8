// Q4_K and Q6_K interleaved eight rows at a time (layouts in quant.h): the repacking and the
// readable scalar dot products. Their vector twins, one per instruction set, are the tiles of
// interleaved_tiles.h.
//
// Every dot product, scalar or vector, computes exact int32 sums per 256-block and then performs
// DotQ4_KQ8_K's / DotQ6_KQ8_K's float operations in their order, so all of them return the bits
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

// ---- Both

using interleaved::Source;

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

namespace {

// The scalar twins: per row and token, DotQ4_KQ8_K's / DotQ5_KQ8_K's / DotQ6_KQ8_K's sums and
// float operations.
template <typename Interleaved>
void DotsScaleMin(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                  int64_t n, float* out, int64_t out_stride) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  for (int64_t row = 0; row < rows; ++row) {
    const auto [x, r] = RowBlocks<Interleaved>(w, row, blocks);
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
          for (int e = 32 * j; e < 32 * j + 32; ++e) part += UnsignedQuant(x[b], r, e) * y[b].qs[e];
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

}  // namespace

void DotsQ4_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsScaleMin<BlockQ4_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
}
void DotsQ5_Kx8Q8_K(const void* w, int64_t rows, const void* a, size_t a_stride, int64_t tokens,
                    int64_t n, float* out, int64_t out_stride) {
  DotsScaleMin<BlockQ5_Kx8>(w, rows, a, a_stride, tokens, n, out, out_stride);
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

}  // namespace starling
