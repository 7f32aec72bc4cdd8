// What the interleaved layouts (quant_interleaved.cpp: Q4_0/Q8_0, quant_interleaved_k.cpp:
// Q4_K/Q6_K; layouts in quant.h) share: groups of eight rows, and how a group's tile of outputs
// is stored. Internal to the quant library.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace starling::interleaved {

constexpr int kGroupRows = 8;

inline int64_t GroupCount(int64_t rows) {
  return (rows + kGroupRows - 1) / kGroupRows;
}

// Rows of group g that exist: 8, fewer for a last group padded with zero rows.
inline int64_t ValidRows(int64_t g, int64_t rows) {
  return std::min<int64_t>(kGroupRows, rows - g * kGroupRows);
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
