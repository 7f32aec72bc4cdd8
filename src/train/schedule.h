// Learning-rate schedules with warmup, as Hugging Face Trainer's get_scheduler computes them.
#pragma once

#include <cstdint>
#include <string>

namespace starling {

enum class LrSchedule { kConstant, kLinear, kCosine };
LrSchedule LrScheduleFromName(const std::string& name);  // constant, linear, cosine

struct LrScheduleConfig {
  LrSchedule kind = LrSchedule::kConstant;
  double lr = 3e-4;     // the peak
  double min_lr = 0.0;  // where linear and cosine end
  int64_t warmup = 0;   // steps
  int64_t total = 1;    // optimizer steps in the run
};

// The learning rate of optimizer step `step` (from 0), HF's lr_lambda(step) applied between
// min_lr and lr: warmup lr * step / warmup for step < warmup; then constant: lr; linear:
// min_lr + (lr - min_lr) * max(0, (total - step) / (total - warmup)); cosine: min_lr +
// (lr - min_lr) * 0.5 * (1 + cos(pi * progress)), progress = (step - warmup) / (total - warmup).
// (HF's linear and cosine end at 0: min_lr 0 gives exactly its values.)
double LearningRate(const LrScheduleConfig& c, int64_t step);

}  // namespace starling
