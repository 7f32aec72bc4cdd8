// AdamW with torch.optim.AdamW's semantics, and clip_grad_norm_'s.
#pragma once

#include <cstdint>
#include <vector>

#include "train/parameters.h"

namespace starling {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  // Decoupled weight decay p -= lr * wd * p, on matrices and embeddings, not on norm weights.
  float weight_decay = 0.0f;
};

// The L2 norm of all gradients together (sums of squares in double, parameters in order).
double GradNorm(const std::vector<Parameter>& params);

// torch.nn.utils.clip_grad_norm_: when total_norm > max_norm, every gradient is multiplied by
// max_norm / (total_norm + 1e-6).
void ClipGrads(std::vector<Parameter>& params, double total_norm, double max_norm);

// One AdamW step (`step` counts from 1) at learning rate lr, per element as PyTorch's
// single-tensor AdamW: p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Moments start at zero.
void AdamWStep(std::vector<Parameter>& params, int64_t step, double lr, const AdamWConfig& c);

// True when every gradient element is finite.
bool GradsFinite(const std::vector<Parameter>& params);

}  // namespace starling
