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
bool CpuHasAvxVnni();     // AVX-VNNI (VEX-encoded vpdpbusd), with AVX2, FMA and F16C
bool CpuHasAvx512Vnni();  // AVX-512 F, BW, VL and VNNI (with AVX2, FMA and F16C)

// The instruction sets the kernels use, decided once (at first use): the best level the CPU
// has, unless STARLING_SIMD names a lower one for comparison ("scalar", "avx2", "avxvnni",
// "avx512"; a level the CPU lacks falls back to the best it has, with a warning on stderr).
// Every level above scalar runs the AVX2 float kernels; the two VNNI levels differ from AVX2
// in the quantized matmuls' integer steps (vpdpbusd: VEX-encoded 256-bit, or EVEX with 512-bit
// block sums; the same bits at every level).
enum class SimdLevel { kScalar, kAvx2, kAvxVnni, kAvx512 };
SimdLevel ActiveSimdLevel();
// The best level this CPU has (what ActiveSimdLevel is without STARLING_SIMD).
SimdLevel BestSimdLevel();
bool CpuHasSimdLevel(SimdLevel level);
const char* SimdLevelName(SimdLevel level);  // "scalar", "avx2", "avxvnni", "avx512"

float DotRow(DType dtype, const void* row, const float* x, int64_t n);
// The active level's name (SimdLevelName).
const char* DotRowImplementation();

}  // namespace starling
