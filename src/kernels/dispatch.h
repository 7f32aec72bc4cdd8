// The one entry per kernel that the model and training code call. Each runs the fastest version
// of its kernel that ActiveSimdLevel() (kernels/dot.h) allows: the AVX2 version at every vector
// level (these kernels are float work, which VNNI does not change), else the readable scalar
// twin. Each pair returns the same bits, except where kernels.h states the rounding difference
// (AttentionGroupBackward's 8-lane dots). The quantized matmuls choose their level inside
// quant/weight.cpp's MatMul; dense dots inside DotRow.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/kernels.h"

namespace starling::dispatch {

// out[n] = x[n] as IEEE binary16 bits, rounded to nearest even (quant.h's FloatToHalf).
void FloatToHalfRow(const float* x, int64_t n, uint16_t* out);
// out[n] = ExpFast(x[n]); out may alias x.
void ExpRow(const float* x, int64_t n, float* out);
// kernels.h's SiluMul, SiluMulBackward, AdamWRow, AttentionGroup, AttentionGroupBackward.
void SiluMul(float* gate, const float* up, int64_t n);
void SiluMulBackward(const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                     float* dup);
void AdamWRow(const AdamWScalars& a, const float* g, int64_t n, float* p, float* m, float* v);
template <DType kCache>
void AttentionGroup(const float* q, int64_t q_stride, int64_t group,
                    const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
                    int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last, float* scores,
                    float* out, int64_t out_stride, float* lse = nullptr);
void AttentionGroupBackward(const float* q, const float* keys, const float* values,
                            int64_t kv_stride, int64_t group, int64_t head_dim, int64_t first,
                            int64_t last, const float* out, const float* lse, const float* dout,
                            float* scores, float* dq, float* dkeys, float* dvalues);

}  // namespace starling::dispatch
