// The scalar row functions of every format, which the table in format.cpp points at (internal
// to the quant library; everything else reaches them through Traits(), QuantizeRow() and
// DequantizeRow()). Each takes a row length already checked against the block size.
#pragma once

#include <cmath>
#include <cstdint>

namespace starling::rows {

// Dense formats (format.cpp).
void EncodeF32(const float* x, int64_t n, void* out);
void DecodeF32(const void* in, int64_t n, float* out);
void EncodeF16(const float* x, int64_t n, void* out);
void DecodeF16(const void* in, int64_t n, float* out);
void EncodeBF16(const float* x, int64_t n, void* out);
void DecodeBF16(const void* in, int64_t n, float* out);

// quant.cpp
void QuantizeQ8_0(const float* x, int64_t n, void* out);
void DequantizeQ8_0(const void* in, int64_t n, float* out);
void QuantizeQ4_0(const float* x, int64_t n, void* out);
void DequantizeQ4_0(const void* in, int64_t n, float* out);
void QuantizeQ4_K(const float* x, int64_t n, void* out);
void DequantizeQ4_K(const void* in, int64_t n, float* out);
void QuantizeQ6_K(const float* x, int64_t n, void* out);
void DequantizeQ6_K(const void* in, int64_t n, float* out);
void QuantizeQ8_K(const float* x, int64_t n, void* out);
void DequantizeQ8_K(const void* in, int64_t n, float* out);

// quant_more.cpp
void QuantizeQ4_1(const float* x, int64_t n, void* out);
void DequantizeQ4_1(const void* in, int64_t n, float* out);
void QuantizeQ5_0(const float* x, int64_t n, void* out);
void DequantizeQ5_0(const void* in, int64_t n, float* out);
void QuantizeQ5_1(const float* x, int64_t n, void* out);
void DequantizeQ5_1(const void* in, int64_t n, float* out);
void QuantizeQ2_K(const float* x, int64_t n, void* out);
void DequantizeQ2_K(const void* in, int64_t n, float* out);
void QuantizeQ3_K(const float* x, int64_t n, void* out);
void DequantizeQ3_K(const void* in, int64_t n, float* out);
void QuantizeQ5_K(const float* x, int64_t n, void* out);
void DequantizeQ5_K(const void* in, int64_t n, float* out);

// quant.cpp: ggml's make_qkx2_quants (Q2_K, Q4_K, Q5_K): fits x[i] ~ scale * L[i] - the_min
// with L in [0, nmax] by weighted least squares (squared or, with use_mad, absolute errors)
// over nstep + 1 candidate scales. Returns the scale; *the_min >= 0.
float MakeQkx2Quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                     float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                     bool use_mad);
// The super-block fit Q4_K and Q5_K share (ggml's quantize_row_q4_K_ref / q5_K_ref): 8
// sub-blocks of 32 fitted by MakeQkx2Quants (L in [0, nmax], candidate offsets from rmin in
// steps of 0.1, nstep steps), their scales and mins packed in 6 bits into scales[12] with the
// fp16 maxima d and dmin, then L[256] requantized against the stored scales.
void FitKQuantSuperBlock(const float* x, int nmax, float rmin, int nstep, uint8_t* scales,
                         uint16_t* d, uint16_t* dmin, uint8_t* L);
// The element of largest magnitude, with its sign (the first of equals): ggml's `max` of the
// symmetric quantizers, which maps to the most negative quant.
float LargestMagnitude(const float* x, int n);
// The float steps of quant.h's contract for a scale-and-min K-quant super-block (Q2_K, Q4_K,
// Q5_K), after its exact integer sums: sum = fma(d_w * d_a, sumi, sum), then
// sum = fma(-(dmin_w * d_a), summ, sum). Explicit fmas: the same single roundings wherever this
// is compiled, so each scalar twin and its SIMD kernel share one definition of the bits.
inline float AddScaleMinBlock(float sum, float d_w, float dmin_w, float d_a, int32_t sumi,
                              int32_t summ) {
  sum = std::fma(d_w * d_a, static_cast<float>(sumi), sum);
  return std::fma(-(dmin_w * d_a), static_cast<float>(summ), sum);
}

// ggml's nearest_int: round to nearest, ties to even.
int NearestInt(float x);

}  // namespace starling::rows
