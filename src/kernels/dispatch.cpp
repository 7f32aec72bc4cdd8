#include "kernels/dispatch.h"

#include "kernels/dot.h"

namespace starling::dispatch {
namespace {

bool Vector() {
  return ActiveSimdLevel() != SimdLevel::kScalar;
}

}  // namespace

void FloatToHalfRow(const float* x, int64_t n, uint16_t* out) {
  if (Vector()) return FloatToHalfRowAvx2(x, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalf(x[i]);
}

void ExpRow(const float* x, int64_t n, float* out) {
  if (Vector()) return ExpRowAvx2(x, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = ExpFast(x[i]);
}

void SiluMul(float* gate, const float* up, int64_t n) {
  (Vector() ? SiluMulAvx2 : starling::SiluMul)(gate, up, n);
}

void SiluMulBackward(const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                     float* dup) {
  (Vector() ? SiluMulBackwardAvx2 : starling::SiluMulBackward)(gate, up, dy, n, dgate, dup);
}

void AdamWRow(const AdamWScalars& a, const float* g, int64_t n, float* p, float* m, float* v) {
  (Vector() ? AdamWRowAvx2 : starling::AdamWRow)(a, g, n, p, m, v);
}

template <DType kCache>
void AttentionGroup(const float* q, int64_t q_stride, int64_t group,
                    const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
                    int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last, float* scores,
                    float* out, int64_t out_stride, float* lse) {
  (Vector() ? AttentionGroupAvx2<kCache>
            : starling::AttentionGroup<kCache>)(q, q_stride, group, keys, values, kv_stride,
                                                head_dim, first, last, scores, out, out_stride,
                                                lse);
}
template void AttentionGroup<DType::kF32>(const float*, int64_t, int64_t,
                                          const CacheElement<DType::kF32>*,
                                          const CacheElement<DType::kF32>*, int64_t, int64_t,
                                          int64_t, int64_t, float*, float*, int64_t, float*);
template void AttentionGroup<DType::kF16>(const float*, int64_t, int64_t,
                                          const CacheElement<DType::kF16>*,
                                          const CacheElement<DType::kF16>*, int64_t, int64_t,
                                          int64_t, int64_t, float*, float*, int64_t, float*);

void AttentionGroupBackward(const float* q, const float* keys, const float* values,
                            int64_t kv_stride, int64_t group, int64_t head_dim, int64_t first,
                            int64_t last, const float* out, const float* lse, const float* dout,
                            float* scores, float* dq, float* dkeys, float* dvalues) {
  (Vector() ? AttentionGroupBackwardAvx2 : starling::AttentionGroupBackward)(
      q, keys, values, kv_stride, group, head_dim, first, last, out, lse, dout, scores, dq, dkeys,
      dvalues);
}

}  // namespace starling::dispatch
