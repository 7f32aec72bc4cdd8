// The training loop every trainer shares: micro-batches from a BatchSource, gradient
// accumulation, clipping, AdamW under a learning-rate schedule, evaluation, logging and a
// progress line, and checkpoints that a killed run resumes from bit for bit.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/optimizer.h"
#include "train/parameters.h"
#include "train/schedule.h"
#include "train/step.h"

namespace starling {

// Where a run's micro-batches come from. A data position counts the examples consumed since
// the start of the run (over epochs); the batch at a position is a pure function of it, so a
// checkpoint only needs the position.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The micro-batch starting at *position; advances *position past it.
  virtual TokenBatch Next(int64_t* position) = 0;
  // Examples per epoch (for the epoch shown and --epochs).
  virtual int64_t examples() const = 0;
};

struct TrainLoopOptions {
  std::string out;               // the run's directory: final model + checkpoint-STEP/
  std::string log;               // JSON Lines, one object per step (appended on resume)
  std::string resume;            // a run directory or a checkpoint directory; empty: fresh
  std::string tokenizer_source;  // copied into every saved model
  int64_t steps = 1;             // optimizer steps
  int64_t accum = 1;             // micro-batches per optimizer step
  LrScheduleConfig lr;
  AdamWConfig adam;
  double grad_clip = 0.0;  // 0: none
  int64_t save_every = 0;  // 0: only at the end
  int64_t eval_every = 0;  // 0: only at the end (when there is eval data)
  bool recompute = false;
  bool quiet = false;
  // What defines the run (model, data, batch shape, seed...): stored in every checkpoint and
  // compared on resume, which refuses a different run and names the field.
  nlohmann::json run_config;
  // Extra keys for the log line of step 1 (fresh runs): e.g. the data's counts.
  nlohmann::json log_header;
};

// Runs the loop from step 0, or from the newest checkpoint of options.resume. The loss of a
// step is sum(w * CE) over its micro-batches divided by the number of tokens with w != 0 in
// them all (pretraining: the mean over every target). A non-finite loss or gradient stops the
// run before the update, leaving the last checkpoint as it was. SIGINT/SIGTERM end the step in
// progress, save a checkpoint and return.
void RunTrainLoop(TrainModel& model, BatchSource& source, const std::vector<TokenBatch>& eval,
                  const TrainLoopOptions& options);

// Mean masked loss, sum(w * CE) / count(w != 0), over `batches` (forward only).
double EvaluateLoss(TrainStep& step, const std::vector<TokenBatch>& batches);

// The newest complete checkpoint (checkpoint-STEP with a trainer_state.json) under `dir`, or
// `dir` itself when it is one; throws when there is none.
std::string FindCheckpoint(const std::string& dir);

}  // namespace starling
