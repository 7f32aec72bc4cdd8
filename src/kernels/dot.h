// Dot products of one weight row (F32, F16 or BF16) with float32 activations: the inner loop
// of every matmul. Each has a scalar twin (index-order float32 accumulation) and an AVX2+FMA
// version (8 lanes x 4 accumulators); DotRow picks the fastest the CPU runs.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace starling {

float DotRowScalar(DType dtype, const void* row, const float* x, int64_t n);
float DotRowAvx2(DType dtype, const void* row, const float* x, int64_t n);  // needs AVX2+FMA+F16C
// out[t * out_stride] = DotRowAvx2(dtype, row, x + t * x_stride, n) for t < tokens, bit for
// bit: the row is loaded and converted once per tile of tokens (prompt processing).
void DotRowsAvx2(DType dtype, const void* row, const float* x, size_t x_stride, int64_t tokens,
                 int64_t n, float* out, int64_t out_stride);

// out[n] = x[n] as IEEE binary16 bits, rounded to nearest even (F16C; needs AVX2+FMA+F16C):
// the bits of quant/quant.h's scalar FloatToHalf for every input except NaNs with a payload
// (F16C keeps the payload's top bits, FloatToHalf gives the default quiet NaN; both are NaN).
void FloatToHalfRowAvx2(const float* x, int64_t n, uint16_t* out);

// out[n] = ExpFast(x[n]) (kernels/kernels.h), bit for bit, 8 lanes at a time (needs
// AVX2+FMA). `out` may alias `x`.
void ExpRowAvx2(const float* x, int64_t n, float* out);

bool CpuHasAvx2();        // AVX2, FMA and F16C
bool CpuHasAvx512Vnni();  // AVX-512 F, BW, VL and VNNI (with AVX2, FMA and F16C)

// The instruction sets the kernels use, decided once (at first use) from the CPU's features
// and STARLING_SIMD: "scalar" forces the scalar twins (for comparison); "avx512" enables the
// AVX-512 VNNI quantized kernels where the CPU has them (opt-in until verified on such
// hardware); otherwise AVX2 where the CPU has it.
enum class SimdLevel { kScalar, kAvx2, kAvx512 };
SimdLevel ActiveSimdLevel();

float DotRow(DType dtype, const void* row, const float* x, int64_t n);
// The active level's name: "avx512", "avx2" or "scalar" (dense dots use AVX2 on both vector
// levels; the quantized matmuls use AVX-512 VNNI where they have it).
const char* DotRowImplementation();

}  // namespace starling
