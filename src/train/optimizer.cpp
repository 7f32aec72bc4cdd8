#include "train/optimizer.h"

#include <cmath>

#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/kernels.h"

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
  AdamWScalars a{1.0f,
                 c.beta1,
                 c.beta2,
                 c.eps,
                 static_cast<float>(lr / bias1),
                 static_cast<float>(std::sqrt(bias2))};
  const auto row = dispatch::AdamWRow;
  for (Parameter& p : params) {
    if (p.m.empty()) {
      p.m.assign(p.value.size(), 0.0f);
      p.v.assign(p.value.size(), 0.0f);
    }
    // Decoupled weight decay on matrices and embeddings, not on norm weights.
    a.decay = p.spec.is_norm() ? 1.0f
                               : static_cast<float>(1.0 - lr * static_cast<double>(c.weight_decay));
    ThreadPool::Global().ParallelFor(
        static_cast<int64_t>(p.value.size()), 8192, [&](int64_t begin, int64_t end, int) {
          row(a, &p.grad[begin], end - begin, &p.value[begin], &p.m[begin], &p.v[begin]);
        });
  }
}

}  // namespace starling
