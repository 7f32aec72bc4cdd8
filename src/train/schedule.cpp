#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace starling {

LrSchedule LrScheduleFromName(const std::string& name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "cosine") return LrSchedule::kCosine;
  Fail("unknown --schedule '", name, "' (constant, linear or cosine)");
}

double LearningRate(const LrScheduleConfig& c, int64_t step) {
  if (step < c.warmup) {
    return c.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, c.warmup));
  }
  const double span = static_cast<double>(std::max<int64_t>(1, c.total - c.warmup));
  const double progress = static_cast<double>(step - c.warmup) / span;
  switch (c.kind) {
    case LrSchedule::kConstant: return c.lr;
    case LrSchedule::kLinear:  // HF: max(0, (total - step) / max(1, total - warmup))
      return c.min_lr +
             (c.lr - c.min_lr) * std::max(0.0, static_cast<double>(c.total - step) / span);
    case LrSchedule::kCosine:
      return c.min_lr +
             (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * std::min(1.0, progress)));
  }
  return c.lr;
}

}  // namespace starling
