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
// float -> IEEE binary16 bits, rounding to nearest even; overflow gives +-inf, NaN gives a quiet
// NaN (0x7E00 with the sign), as ggml's GGML_FP32_TO_FP16.
uint16_t FloatToHalf(float value);
float BFloat16ToFloat(uint16_t bits);

// out[cols] = row `row` of `w`, converted to float32.
void ReadRow(const DenseMatrix& w, int64_t row, float* out);

// out[n] = x[n] / sqrt(mean(x^2) + eps) * weight[n]. `out` may alias `x`. Returns the scale
// rstd = 1 / sqrt(mean(x^2) + eps), which training saves for the backward.
float RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);
// The backward of RmsNorm at input x[n] (its saved rstd): dx[n] += d out / d x . dy[n], and
// dweight[n] += dy * x * rstd unless dweight is null (a frozen norm).
void RmsNormBackward(const float* x, const float* weight, float rstd, const float* dy, int64_t n,
                     float* dx, float* dweight);

// e^x in float32 from a range reduction and a degree-6 polynomial (kernels.cpp says how),
// within 1 ulp of e^x (0.951 measured), so at most one float from the correctly rounded
// value, which it returns for about 98% of inputs (kernels_test sweeps it). Subnormal results
// are computed, not flushed: within 2^-149 (the smallest subnormal) for x in [-103.97,
// -87.34]; 0 below (-inf included), +inf above 88.7228 (+inf included), NaN for NaN. The
// readable twin of the AVX2 lanes in ExpRowAvx2 (kernels/dot.h): they perform the same float
// operations, so they return the same bits (NaNs: both NaN, payloads aside).
float ExpFast(float x);

// ExpFast's constants, shared with its AVX2 lanes so that both compute with the same values.
namespace exp_fast {
// Inputs are clamped to [kMinInput, kMaxInput] first (NaN passes through): e^-104 < 2^-150
// rounds to 0 and e^89 > FLT_MAX overflows to +inf, so the clamp changes no result, and on
// this range k = round(x log2 e) lies in [-150, 128], which the two-factor scaling reaches.
inline constexpr float kMinInput = -104.0f;
inline constexpr float kMaxInput = 89.0f;
inline constexpr float kLog2E = 0x1.715476p+0f;  // log2(e), rounded to float
// 1.5 * 2^23: fma(x, log2 e, kRoundingShift) lands in [2^23, 2^24), where floats are the
// integers, so its one rounding is round-to-nearest-even of x log2 e, and its low mantissa
// bits hold that integer plus 2^22.
inline constexpr float kRoundingShift = 0x1.8p+23f;
// ln 2 = kLn2Hi + kLn2Lo (to 2^-54): x - k kLn2Hi is exact in one fma for |x| <= 104 (both
// are multiples of 2^-25 and the difference is below 1/2), kLn2Lo carries the rest.
inline constexpr float kLn2Hi = 0x1.62e430p-1f;
inline constexpr float kLn2Lo = -0x1.05c610p-29f;
// e^r ~ 1 + r + r^2 (kC2 + kC3 r + kC4 r^2 + kC5 r^3 + kC6 r^4) on |r| <= ln2 / 2: the
// quartic interpolates (e^r - 1 - r) / r^2 at the 5 Chebyshev nodes a cos((2i+1) pi / 10),
// a = ln2 / 2 (a near-minimax fit, solved in exact rational arithmetic from the series, then
// rounded to float; kC2 comes out as 1/2 because the middle node is 0). Relative error of
// the polynomial with these float coefficients: below 0.17 * 2^-24; near 1/n! (Taylor) but
// 16x more accurate than Taylor to the same degree.
inline constexpr float kC2 = 0.5f;
inline constexpr float kC3 = 0x1.5554dep-3f;
inline constexpr float kC4 = 0x1.55551ap-5f;
inline constexpr float kC5 = 0x1.120b62p-7f;
inline constexpr float kC6 = 0x1.6d10fcp-10f;
}  // namespace exp_fast

// In-place softmax over x[n], max-subtracted. -inf entries get probability 0. Exponentials
// by ExpFast, summed in index order. SoftmaxAvx2 (needs AVX2+FMA): the same exponentials, the
// same bits for n < 8; longer rows sum in 8 lanes, so their outputs differ from these by the
// rounding of the sum (a few ulp relative).
void Softmax(float* x, int64_t n);
void SoftmaxAvx2(float* x, int64_t n);

// gate[n] = silu(gate[n]) * up[n] = gate / (1 + ExpFast(-gate)) * up. SiluMulAvx2 (needs
// AVX2+FMA) returns the same bits for every element.
void SiluMul(float* gate, const float* up, int64_t n);
void SiluMulAvx2(float* gate, const float* up, int64_t n);
// The backward of SiluMul at the saved pre-activations gate[n] and up[n]: dgate[n] and dup[n]
// (written, not accumulated) from dy[n].
void SiluMulBackward(const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                     float* dup);
// The same with AVX2 lanes (needs AVX2+FMA): the same bits for every element.
void SiluMulBackwardAvx2(const float* gate, const float* up, const float* dy, int64_t n,
                         float* dgate, float* dup);

// One AdamW update of n elements (torch.optim.AdamW's single-tensor arithmetic, float32):
//   p *= decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g;
//   p -= step_size * (m / (sqrt(v) / bias2_sqrt + eps))
// with decay = 1 - lr wd, step_size = lr / (1 - b1^t), bias2_sqrt = sqrt(1 - b2^t).
// AdamWRowAvx2 (needs AVX2) performs the same operations without fusing: the same bits.
struct AdamWScalars {
  float decay, beta1, beta2, eps, step_size, bias2_sqrt;
};
void AdamWRow(const AdamWScalars& a, const float* g, int64_t n, float* p, float* m, float* v);
void AdamWRowAvx2(const AdamWScalars& a, const float* g, int64_t n, float* p, float* m, float* v);

// Rotary position embedding of one token's heads, in place: vec[heads, head_dim]. Only the
// first rope_dim dimensions of each head rotate. `inv_freq[rope_dim / 2]` holds
// theta^(-2i / rope_dim). `interleaved`: pairs (2i, 2i+1) (GGUF); else (i, i + rope_dim/2)
// (Hugging Face's rotate_half).
void Rope(float* vec, int64_t heads, int64_t head_dim, int64_t rope_dim, int64_t position,
          std::span<const float> inv_freq, bool interleaved);
// The backward of Rope, in place on the gradient grad[heads, head_dim]: the inverse rotation.
void RopeBackward(float* grad, int64_t heads, int64_t head_dim, int64_t rope_dim, int64_t position,
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
// scalar order) agrees to rounding. Instantiated for kF32 and kF16. `lse`: null, or where the
// log-sum-exp of the scaled scores goes (max + log(sum of exponentials)), which training saves
// so that the backward recomputes the probabilities instead of storing them.
template <DType kCache>
void AttentionHead(const float* q, const CacheElement<kCache>* keys,
                   const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim,
                   int64_t first, int64_t last, float* scores, float* out, float* lse = nullptr);
template <DType kCache>
void AttentionHeadAvx2(const float* q, const CacheElement<kCache>* keys,
                       const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim,
                       int64_t first, int64_t last, float* scores, float* out,
                       float* lse = nullptr);

// The `group` query heads that share one key/value head (grouped-query attention), each as
// AttentionHead: head h reads q + h * q_stride [Dh] and writes out + h * out_stride [Dh];
// scores: scratch [group * (last - first + 1)]. The scalar twin loops AttentionHead over the
// heads. The AVX2 kernel gives every head AttentionHeadAvx2's bits (the same operations in
// the same order per head), but reads each chunk of keys and values from L2 once for the
// whole group. Instantiated for kF32 and kF16. `lse`: null or [group] (see AttentionHead).
template <DType kCache>
void AttentionGroup(const float* q, int64_t q_stride, int64_t group,
                    const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
                    int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last, float* scores,
                    float* out, int64_t out_stride, float* lse = nullptr);
template <DType kCache>
void AttentionGroupAvx2(const float* q, int64_t q_stride, int64_t group,
                        const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
                        int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last,
                        float* scores, float* out, int64_t out_stride, float* lse = nullptr);

// The backward of AttentionGroup (float32 keys and values) for one query row: the `group`
// query heads q[group, Dh] (contiguous) that share the key/value head at keys/values (row j at
// + j * kv_stride), positions [first, last], with the forward's outputs out[group, Dh] and
// log-sum-exps lse[group], and the gradient dout[group, Dh]. Accumulates dq[group, Dh] and
// dkeys/dvalues (same layout as keys/values) in a fixed order: heads in order, then positions
// in order. Probabilities are recomputed as exp(s_j - lse). scores: scratch [last - first + 1].
void AttentionGroupBackward(const float* q, const float* keys, const float* values,
                            int64_t kv_stride, int64_t group, int64_t head_dim, int64_t first,
                            int64_t last, const float* out, const float* lse, const float* dout,
                            float* scores, float* dq, float* dkeys, float* dvalues);
// The same with AVX2 lanes over the head dimension (needs AVX2+FMA; head_dim % 8 != 0 falls
// back to the twin): the same exponentials, dots summed in 8 lanes: agrees to rounding.
void AttentionGroupBackwardAvx2(const float* q, const float* keys, const float* values,
                                int64_t kv_stride, int64_t group, int64_t head_dim, int64_t first,
                                int64_t last, const float* out, const float* lse, const float* dout,
                                float* scores, float* dq, float* dkeys, float* dvalues);

}  // namespace starling
