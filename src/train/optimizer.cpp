#include "train/optimizer.h"

#include <cmath>

#include "core/thread_pool.h"

namespace starling {

double GradNorm(const std::vector<Parameter>& params) {
  double sum = 0.0;
  for (const Parameter& p : params) {
    for (const float g : p.grad) sum += static_cast<double>(g) * g;
  }
  return std::sqrt(sum);
}

void ClipGrads(std::vector<Parameter>& params, double total_norm, double max_norm) {
  const double coef = max_norm / (total_norm + 1e-6);
  if (coef >= 1.0) return;
  const auto c = static_cast<float>(coef);
  for (Parameter& p : params) {
    for (float& g : p.grad) g *= c;
  }
}

bool GradsFinite(const std::vector<Parameter>& params) {
  for (const Parameter& p : params) {
    for (const float g : p.grad) {
      if (!std::isfinite(g)) return false;
    }
  }
  return true;
}

void AdamWStep(std::vector<Parameter>& params, int64_t step, double lr, const AdamWConfig& c) {
  const double bias1 = 1.0 - std::pow(static_cast<double>(c.beta1), static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(static_cast<double>(c.beta2), static_cast<double>(step));
  const auto step_size = static_cast<float>(lr / bias1);
  const auto bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float b1 = c.beta1, b2 = c.beta2, eps = c.eps;
  for (Parameter& p : params) {
    if (p.m.empty()) {
      p.m.assign(p.value.size(), 0.0f);
      p.v.assign(p.value.size(), 0.0f);
    }
    const float decay =
        p.spec.is_norm() ? 1.0f : static_cast<float>(1.0 - lr * static_cast<double>(c.weight_decay));
    float* pv = p.value.data();
    float* pm = p.m.data();
    float* pvv = p.v.data();
    const float* pg = p.grad.data();
    ThreadPool::Global().ParallelFor(
        static_cast<int64_t>(p.value.size()), 4096, [&](int64_t begin, int64_t end, int) {
          // Distinct buffers: restrict lets the compiler vectorise the loop.
          float* __restrict value = pv;
          float* __restrict m = pm;
          float* __restrict v = pvv;
          const float* __restrict g = pg;
          for (int64_t i = begin; i < end; ++i) {
            value[i] *= decay;
            m[i] = b1 * m[i] + (1.0f - b1) * g[i];
            v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
            const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
            value[i] -= step_size * (m[i] / denom);
          }
        });
  }
}

}  // namespace starling
