// The training loop every trainer shares: micro-batches from a TrainObjective, gradient
// accumulation, clipping, AdamW under a learning-rate schedule, evaluation, logging and a
// progress line, and checkpoints that a killed run resumes from bit for bit.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "train/optimizer.h"
#include "train/parameters.h"
#include "train/schedule.h"
#include "train/step.h"

namespace starling {

// What the loop trains: micro-batches of the data and the loss over them. A data position
// counts the examples consumed since the start of the run (over epochs); the micro-batch at a
// position is a pure function of it, so a checkpoint only needs the position.
class TrainObjective {
 public:
  virtual ~TrainObjective() = default;
  struct Size {
    int64_t units = 0;   // what the step's loss is normalized by (trained tokens, prompts)
    int64_t tokens = 0;  // rows the forward runs (for tokens/s)
  };
  // Reads the micro-batch at *position into slot `slot` (0 .. accum - 1) and advances
  // *position past it.
  virtual Size Read(int64_t slot, int64_t* position) = 0;
  // Forward and backward of the slot's micro-batch with its loss divided by `units` (the
  // whole step's): adds the gradients and returns its share of the step's loss.
  virtual double Backward(TrainStep& step, int64_t slot, double units) = 0;
  virtual int64_t examples() const = 0;       // examples per epoch
  virtual const char* unit_name() const = 0;  // the log's key for the units
  // Held-out metrics, forward only, e.g. {"eval_loss": ...}; empty without eval data.
  virtual nlohmann::json Evaluate(TrainStep& step) = 0;
  // Extra keys for the step's log line: sums gathered by the step's Backward calls (then
  // reset), which the loop adds up over ranks, and the keys made from those totals.
  virtual std::vector<double> TakeStepSums() { return {}; }
  virtual nlohmann::json StepMetrics(std::span<const double> /*sums*/) const {
    return nlohmann::json::object();
  }
};

// Token micro-batches for the language-modelling loss (pretraining, SFT).
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The micro-batch starting at *position; advances *position past it.
  virtual TokenBatch Next(int64_t* position) = 0;
  // Examples per epoch (for the epoch shown and --epochs).
  virtual int64_t examples() const = 0;
};

// The language-modelling objective: a step's loss is sum(w * CE) over its micro-batches
// divided by the number of tokens with w != 0 in them all (pretraining: the mean over every
// target); evaluation: the same mean over `eval`.
class LanguageModelObjective final : public TrainObjective {
 public:
  LanguageModelObjective(BatchSource& source, std::vector<TokenBatch> eval)
      : source_(source), eval_(std::move(eval)) {}
  Size Read(int64_t slot, int64_t* position) override;
  double Backward(TrainStep& step, int64_t slot, double units) override;
  int64_t examples() const override { return source_.examples(); }
  const char* unit_name() const override { return "tokens"; }
  nlohmann::json Evaluate(TrainStep& step) override;

 private:
  BatchSource& source_;
  std::vector<TokenBatch> eval_;
  std::vector<TokenBatch> slots_;
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
  // Data parallelism (train/distributed.h): the gradient sum's fixed tree order, and how long
  // a rank waits for the others before it stops the run.
  bool deterministic_reduce = false;
  double rank_timeout = 900.0;
  // What defines the run (model, data, batch shape, seed...): stored in every checkpoint and
  // compared on resume, which refuses a different run and names the field.
  nlohmann::json run_config;
  // Extra keys for the log line of step 1 (fresh runs): e.g. the data's counts.
  nlohmann::json log_header;
};

// SIGINT/SIGTERM note a stop request while one lives (core/signals.h: one thread takes the
// signals; main() starts it), then the usual effect returns: trainers save and stop.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  int signal() const { return signal_.load(); }
  // Why the run stops, for the message: "signal 15", or (under MPI) another rank's request.
  std::string reason() const {
    return signal() != 0 ? "signal " + std::to_string(signal()) : "a stop request on a rank";
  }

 private:
  std::atomic<int> signal_{0};
};

// Runs the loop from step 0, or from the newest checkpoint of options.resume. A step's loss is
// the objective's over its micro-batches, normalized by their units. Under MPI (several
// ranks), every rank reads every micro-batch of a step (for the units) and runs the backward
// of its contiguous share of them; the gradients are summed over ranks (GradientSum) and every
// rank takes the same AdamW step; rank 0 alone evaluates, logs, prints and writes checkpoints. A
// non-finite loss or gradient stops the run before the update, leaving the last checkpoint as it
// was. SIGINT/SIGTERM end the step in progress, save a checkpoint and return.
void RunTrainLoop(TrainModel& model, TrainObjective& objective, const TrainLoopOptions& options);

// Mean masked loss, sum(w * CE) / count(w != 0), over `batches` (forward only).
double EvaluateLoss(TrainStep& step, const std::vector<TokenBatch>& batches);

// out/checkpoint-STEP: the model (SaveHuggingFace), AdamW's moments and trainer_state.json
// ({"format", "step", "position", "run"} plus `extra`'s keys), and whatever `write_files` writes
// into the directory it is given, all written into a temporary directory, synced, then renamed
// into place; checkpoints older than the last two are removed.
void SaveCheckpoint(const TrainModel& m, const TrainLoopOptions& o, int64_t step, int64_t position,
                    const nlohmann::json& extra = {},
                    const std::function<void(const std::string& dir)>& write_files = {});

// AdamW's moments of every parameter that has them, as a safetensors file ("m.NAME", "v.NAME"),
// and back (a missing file: none yet).
void WriteMoments(const TrainModel& m, const std::string& path);
void ReadMoments(TrainModel& m, const std::string& path);

// Loads checkpoint directory `dir` into `m` (parameters and moments by name) and returns its
// trainer state, after checking that its "run" agrees with `run_config` key by key.
nlohmann::json LoadCheckpoint(TrainModel& m, const std::string& dir,
                              const nlohmann::json& run_config);

// The newest complete checkpoint (checkpoint-STEP with a trainer_state.json) under `dir`, or
// `dir` itself when it is one; throws when there is none.
std::string FindCheckpoint(const std::string& dir);

}  // namespace starling
