// The 32-value formats (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1) interleaved eight rows at a time (layouts
// in quant.h): the repacking and the readable scalar dot products. Their vector twins, one per
// instruction set, are the tiles of interleaved_tiles.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"
#include "quant/interleaved.h"
#include "quant/quant.h"

namespace starling {
namespace {

using interleaved::GroupCount;
using interleaved::kGroupRows;
using interleaved::kHasFifthBits;
using interleaved::kHasMins;
using interleaved::Source;

// Every layout keeps row r's bytes qs[4j..4j+3] at bytes 4r..4r+3 of 32-byte chunk j; the
// mins and fifth bits as quant.h says.
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
        if constexpr (kHasMins<Interleaved>) x.m[r] = src.m;
        if constexpr (kHasFifthBits<Interleaved>) {
          uint32_t qh;  // bit e: the fifth bit of value e
          std::memcpy(&qh, src.qh, 4);
          for (int j = 0; j < 4; ++j) {
            for (int i = 0; i < 4; ++i) {
              x.qh[4 * r + i] |= static_cast<uint8_t>((qh >> (4 * j + i) & 1) << j |
                                                      (qh >> (16 + 4 * j + i) & 1) << (4 + j));
            }
          }
        }
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

// The unsigned 4 (or 5) bits of element e (< 32) of row r.
template <typename Interleaved>
int Nibble(const Interleaved& x, int r, int e) {
  const uint8_t byte = StoredByte(x, r, e % 16);
  return e < 16 ? byte & 0x0F : byte >> 4;
}
template <typename Interleaved>
int FiveBits(const Interleaved& x, int r, int e) {
  const int j = e % 16 / 4;
  const int bit = e < 16 ? j : 4 + j;
  return Nibble(x, r, e) | (x.qh[4 * r + e % 4] >> bit & 1) << 4;
}

// Element e (< 32) of row r: the quant its format multiplies by d (Q4_0: nibble - 8; Q5_0:
// five bits - 16; Q4_1, Q5_1: unsigned, beside the min).
int Quant(const BlockQ4_0x8& x, int r, int e) {
  return Nibble(x, r, e) - 8;
}
int Quant(const BlockQ8_0x8& x, int r, int e) {
  return StoredByte(x, r, e);
}
int Quant(const BlockQ4_1x8& x, int r, int e) {
  return Nibble(x, r, e);
}
int Quant(const BlockQ5_0x8& x, int r, int e) {
  return FiveBits(x, r, e) - 16;
}
int Quant(const BlockQ5_1x8& x, int r, int e) {
  return FiveBits(x, r, e);
}

template <typename Interleaved>
void DequantizeRowInterleaved(const void* w, int64_t row, int64_t n, float* out) {
  const int64_t blocks = QuantBlockCount(Source<Interleaved>::kType, n);
  const auto* group = static_cast<const Interleaved*>(w) + row / kGroupRows * blocks;
  const int r = static_cast<int>(row % kGroupRows);
  for (int64_t b = 0; b < blocks; ++b) {
    const float d = HalfToFloat(group[b].d[r]);
    for (int e = 0; e < 32; ++e) {
      if constexpr (kHasMins<Interleaved>) {  // DequantizeRow's q * d + m
        out[32 * b + e] =
            static_cast<float>(Quant(group[b], r, e)) * d + HalfToFloat(group[b].m[r]);
      } else {
        out[32 * b + e] = d * static_cast<float>(Quant(group[b], r, e));
      }
    }
  }
}

// The scalar twin: per row and token, exact integer block sums, then one fma per block (Q4_0,
// Q8_0) or DotQ4_1Q8_0's ... multiplies and adds.
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
        int32_t suma = 0;
        for (int e = 0; e < 32; ++e) {
          sumi += Quant(x[b], r, e) * y[b].qs[e];
          suma += y[b].qs[e];
        }
        const float da = terms[t * blocks + b].d;
        const float scale = HalfToFloat(x[b].d[r]) * da;
        if constexpr (std::is_same_v<Interleaved, BlockQ4_0x8> ||
                      std::is_same_v<Interleaved, BlockQ8_0x8>) {
          sum = std::fma(static_cast<float>(sumi), scale, sum);
        } else {
          sum += static_cast<float>(sumi) * scale;
          if constexpr (kHasMins<Interleaved>) {
            sum += static_cast<float>(suma) * (HalfToFloat(x[b].m[r]) * da);
          }
        }
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

void RepackQ4_1x8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ4_1x8>(w, rows, n, out);
}
void RepackQ5_0x8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ5_0x8>(w, rows, n, out);
}
void RepackQ5_1x8(const void* w, int64_t rows, int64_t n, void* out) {
  Repack<BlockQ5_1x8>(w, rows, n, out);
}

void DequantizeRowQ4_1x8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeRowInterleaved<BlockQ4_1x8>(w, row, n, out);
}
void DequantizeRowQ5_0x8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeRowInterleaved<BlockQ5_0x8>(w, row, n, out);
}
void DequantizeRowQ5_1x8(const void* w, int64_t row, int64_t n, float* out) {
  DequantizeRowInterleaved<BlockQ5_1x8>(w, row, n, out);
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

void DotsQ4_1x8Q8_0(const void* w, int64_t rows, const void* a, size_t a_stride,
                    const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                    int64_t out_stride) {
  DotsInterleaved<BlockQ4_1x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void DotsQ5_0x8Q8_0(const void* w, int64_t rows, const void* a, size_t a_stride,
                    const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                    int64_t out_stride) {
  DotsInterleaved<BlockQ5_0x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}
void DotsQ5_1x8Q8_0(const void* w, int64_t rows, const void* a, size_t a_stride,
                    const Q8_0BlockTerms* terms, int64_t tokens, int64_t n, float* out,
                    int64_t out_stride) {
  DotsInterleaved<BlockQ5_1x8>(w, rows, a, a_stride, terms, tokens, n, out, out_stride);
}

}  // namespace starling
