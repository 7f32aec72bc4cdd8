// A weight matrix in any stored format, and the matmul over it: dense rows (F32/F16/BF16)
// use the kernels' dot products; quantized rows (GGUF block formats) are multiplied with
// activations quantized once per token (Q8_0 for Q8_0/Q4_0 weights, Q8_K for K-quants),
// with integer dot products, as ggml does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/memory.h"
#include "quant/quant.h"

namespace starling {

// Bytes of one row of `cols` elements (format.h); throws starling::Error when cols does not
// divide into blocks.
inline size_t WeightRowBytes(WeightFormat format, int64_t cols) {
  return FormatRowBytes(format, cols);
}

// How a matrix's rows are arranged in memory.
enum class WeightLayout : uint8_t {
  kRows,         // row after row, as files store them
  kInterleaved8  // Q4_0, Q8_0, Q4_K, Q6_K: groups of eight rows interleaved block by block
                 // (BlockQ4_0x8, BlockQ8_0x8, BlockQ4_Kx8, BlockQ6_Kx8; the last group padded
                 // to eight rows), made by LoadForMatMul()
};

// A [rows, cols] matrix.
struct WeightMatrix {
  WeightFormat format = WeightFormat::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  WeightLayout layout = WeightLayout::kRows;
  // Bytes of one row as stored; row() is for the kRows layout only.
  size_t row_bytes() const { return WeightRowBytes(format, cols); }
  const void* row(int64_t r) const {
    return static_cast<const char*>(data) + static_cast<size_t>(r) * row_bytes();
  }
};

// Quantized matrices are copied out of their files at load (LoadForMatMul): onto huge pages
// (streaming gigabytes through 4 KiB pages costs ~10% of the read bandwidth here), and into the
// interleaved layout their AVX2 and scalar kernels read: Q4_K and Q6_K always, Q4_0 and Q8_0
// except at the opt-in AVX-512 level (whose VNNI kernels read rows). Dense F32/F16/BF16
// matrices stay memory-mapped (a float32 reward model may not fit in memory twice).
bool LoadsForMatMul(const WeightMatrix& w);
// w (row-major, as stored) copied into `buffer`, which the result points into. One pass over
// the matrix, over the thread pool. MatMul's results over the copy stay within rounding of
// those over w (bit-identical except Q4_0 and Q8_0, see DotsQ4_0x8Q8_0).
WeightMatrix LoadForMatMul(const WeightMatrix& w, HugePageBuffer& buffer);

// out[cols] = row r as float32 (dequantized).
void ReadRow(const WeightMatrix& w, int64_t r, float* out);

// out[T, rows] = x[T, cols] @ w^T. Rows are split over the global thread pool; every output
// is computed by one thread in a fixed order, so results do not depend on the thread count.
void MatMul(const WeightMatrix& w, const float* x, int64_t tokens, float* out);

// The readable reference: dequantize each row to float32 and accumulate in index order.
// (Quantized formats differ from MatMul by the activation quantization, by design.)
void MatMulReference(const WeightMatrix& w, const float* x, int64_t tokens, float* out);

}  // namespace starling
