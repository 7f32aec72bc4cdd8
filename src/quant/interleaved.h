// What the interleaved layouts (quant_interleaved.cpp: the 32-value blocks,
// quant_interleaved_k.cpp: the K-quants; layouts in quant.h) share: groups of eight rows, and how a
// group's tile of outputs is stored. Internal to the quant library.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "quant/quant.h"

namespace starling::interleaved {

// The row-major block type an interleaved block comes from, and its format.
template <typename Block_, WeightFormat kType_>
struct SourceOf {
  using Block = Block_;
  static constexpr WeightFormat kType = kType_;
};
template <typename Interleaved>
struct Source;
template <>
struct Source<BlockQ4_0x8> : SourceOf<BlockQ4_0, WeightFormat::kQ4_0> {};
template <>
struct Source<BlockQ8_0x8> : SourceOf<BlockQ8_0, WeightFormat::kQ8_0> {};
template <>
struct Source<BlockQ4_1x8> : SourceOf<BlockQ4_1, WeightFormat::kQ4_1> {};
template <>
struct Source<BlockQ5_0x8> : SourceOf<BlockQ5_0, WeightFormat::kQ5_0> {};
template <>
struct Source<BlockQ5_1x8> : SourceOf<BlockQ5_1, WeightFormat::kQ5_1> {};
template <>
struct Source<BlockQ2_Kx8> : SourceOf<BlockQ2_K, WeightFormat::kQ2_K> {};
template <>
struct Source<BlockQ3_Kx8> : SourceOf<BlockQ3_K, WeightFormat::kQ3_K> {};
template <>
struct Source<BlockQ4_Kx8> : SourceOf<BlockQ4_K, WeightFormat::kQ4_K> {};
template <>
struct Source<BlockQ5_Kx8> : SourceOf<BlockQ5_K, WeightFormat::kQ5_K> {};
template <>
struct Source<BlockQ6_Kx8> : SourceOf<BlockQ6_K, WeightFormat::kQ6_K> {};

// What the 32-value layouts other than Q4_0 and Q8_0 add: mins (Q4_1, Q5_1), fifth bits (Q5_0,
// Q5_1).
template <typename Interleaved>
constexpr bool kHasMins =
    std::is_same_v<Interleaved, BlockQ4_1x8> || std::is_same_v<Interleaved, BlockQ5_1x8>;
template <typename Interleaved>
constexpr bool kHasFifthBits =
    std::is_same_v<Interleaved, BlockQ5_0x8> || std::is_same_v<Interleaved, BlockQ5_1x8>;

constexpr int kGroupRows = 8;

inline int64_t GroupCount(int64_t rows) {
  return (rows + kGroupRows - 1) / kGroupRows;
}

// Rows of group g that exist: 8, fewer for a last group padded with zero rows.
inline int64_t ValidRows(int64_t g, int64_t rows) {
  return std::min<int64_t>(kGroupRows, rows - g * kGroupRows);
}

// Generation streams every matrix from memory once, group after group. On Zen 3 the hardware
// prefetchers alone keep too few lines in flight for one core to read more than ~12 GB/s here;
// asking for the lines ~2 KiB ahead of the kernel gave 14-16 GB/s (Q4_0 and Q8_0, one thread,
// a 28672 x 4096 matrix; 0.3-1 KiB ahead gained less, 4-8 KiB no more).
constexpr size_t kPrefetchBytes = 2048;

// Prefetches the lines of the block `ahead` bytes (rounded up to whole blocks) after x. Past
// the end of the matrix is harmless: prefetches do not fault (the address is computed as an
// integer, never as a pointer past the array).
template <typename Block>
__attribute__((target("avx2"))) inline void PrefetchLines(const Block* x, size_t ahead) {
  const size_t blocks_ahead = (ahead + sizeof(Block) - 1) / sizeof(Block);
  const uintptr_t first = reinterpret_cast<uintptr_t>(x) + blocks_ahead * sizeof(Block);
  for (uintptr_t line = first & ~uintptr_t{63}; line < first + sizeof(Block); line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
  }
}

// out[i * out_stride + r] = lane r of acc[i], for i < tokens and r < valid: one group's outputs
// (lane r belongs to the group's row r); the padding rows' lanes are dropped.
__attribute__((target("avx2"))) inline void StoreGroupTile(const __m256* acc, int64_t tokens,
                                                           int64_t valid, float* out,
                                                           int64_t out_stride) {
  for (int64_t i = 0; i < tokens; ++i) {
    float* dst = out + i * out_stride;
    if (valid == kGroupRows) {
      _mm256_storeu_ps(dst, acc[i]);
    } else {
      alignas(32) float lanes[kGroupRows];
      _mm256_store_ps(lanes, acc[i]);
      std::copy(lanes, lanes + valid, dst);
    }
  }
}

}  // namespace starling::interleaved
