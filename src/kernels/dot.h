// Dot products of one weight row (F32, F16 or BF16) with float32 activations: the inner loop
// of every matmul. Each has a scalar twin (index-order float32 accumulation) and an AVX2+FMA
// version (8 lanes x 4 accumulators); DotRow picks the fastest the CPU runs.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace starling {

float DotRowScalar(DType dtype, const void* row, const float* x, int64_t n);
float DotRowAvx2(DType dtype, const void* row, const float* x, int64_t n);  // needs AVX2+FMA+F16C

bool CpuHasAvx2();  // AVX2, FMA and F16C

// Dispatches once (at first use) on the CPU's features; STARLING_SIMD=scalar forces the
// scalar twins, for comparison.
float DotRow(DType dtype, const void* row, const float* x, int64_t n);
const char* DotRowImplementation();  // "avx2" or "scalar"

}  // namespace starling
