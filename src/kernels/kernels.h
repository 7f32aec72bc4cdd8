// Model-agnostic kernels over float32 activations. These are the readable reference
// implementations (the "scalar twins"); faster versions must match them in tests.
// Shapes use the vocabulary of model/config.h (T tokens, D hidden, Dh head dim, ...).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "core/dtype.h"

namespace starling {

// A row-major dense matrix [rows, cols] stored as F32, F16 or BF16, read in place
// (memory-mapped): row r starts at data + r * cols * DTypeSize(dtype). Quantized weights
// and the matmul over any weight format are in quant/weight.h.
struct DenseMatrix {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);

// out[cols] = row `row` of `w`, converted to float32.
void ReadRow(const DenseMatrix& w, int64_t row, float* out);

// out[n] = x[n] / sqrt(mean(x^2) + eps) * weight[n]. `out` may alias `x`.
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);

// In-place softmax over x[n], max-subtracted. -inf entries get probability 0.
void Softmax(float* x, int64_t n);

// gate[n] = silu(gate[n]) * up[n]
void SiluMul(float* gate, const float* up, int64_t n);

// Rotary position embedding of one token's heads, in place: vec[heads, head_dim]. Only the
// first rope_dim dimensions of each head rotate. `inv_freq[rope_dim / 2]` holds
// theta^(-2i / rope_dim). `interleaved`: pairs (2i, 2i+1) (GGUF); else (i, i + rope_dim/2)
// (Hugging Face's rotate_half).
void Rope(float* vec, int64_t heads, int64_t head_dim, int64_t rope_dim, int64_t position,
          std::span<const float> inv_freq, bool interleaved);

// The C++ type of one KV cache element: float for F32, uint16_t holding IEEE binary16 bits
// for F16 (the only cache types).
template <DType kCache>
using CacheElement = std::conditional_t<kCache == DType::kF32, float, uint16_t>;

// A cache element as float32: F16 widens exactly; F32 is itself.
template <DType kCache>
inline float CacheToFloat(CacheElement<kCache> x) {
  if constexpr (kCache == DType::kF16) {
    return HalfToFloat(x);
  } else {
    return x;
  }
}

// One query head of causal attention over the cached positions [first, last] (inclusive):
//   out[Dh] = sum_j softmax_j(q . k_j / sqrt(Dh)) v_j
// q[Dh]; key j at keys + j * kv_stride, value j at values + j * kv_stride (the caller points
// keys and values at its key/value head: query head h reads head h / (H / KVH)), stored as
// kCache (F32 or F16; F16 elements are widened to float32 as they are read, so the arithmetic
// is the same float32 for both); scores: scratch [last - first + 1]. The AVX2 twin
// (kernels/dot.cpp: its dots keep 8 lanes, its sum over positions runs per dimension in the
// scalar order) agrees to rounding. Instantiated for kF32 and kF16.
template <DType kCache>
void AttentionHead(const float* q, const CacheElement<kCache>* keys,
                   const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim,
                   int64_t first, int64_t last, float* scores, float* out);
template <DType kCache>
void AttentionHeadAvx2(const float* q, const CacheElement<kCache>* keys,
                       const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim,
                       int64_t first, int64_t last, float* scores, float* out);

}  // namespace starling
