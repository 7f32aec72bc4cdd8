// `starling train pretrain` (next-token training on a text file) and `starling train sft`
// (supervised fine-tuning on conversations): data and model set-up over the shared loop.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/loop.h"

namespace starling {

// What every trainer takes: the model, its freezing, the loop's settings.
struct TrainerOptions {
  std::string model;      // -m: Hugging Face directory or GGUF file (frozen parts may be quantized)
  std::string config;     // --config: a fresh model from this config.json instead (seeded init)
  std::string tokenizer;  // --tokenizer: defaults to -m
  std::string data;       // --data
  int64_t ctx = 256;
  int64_t batch = 4;
  int64_t epochs = 0;  // when set (and steps is not), the steps that cover this many epochs
  int32_t unfreeze_layers = -1;
  uint64_t seed = 1;
  bool shuffle = true;
  std::string schedule = "constant";
  TrainLoopOptions loop;  // steps, accum, lr, adam, clip, out, log, resume, save_every, ...
};

// Shared by the trainers:
// Checks the options every trainer has; *tokenizer_source: --tokenizer or -m.
void CheckTrainerOptions(const TrainerOptions& o, std::string* tokenizer_source);
// The initial model's files from -m (HF directory or GGUF) or --config (seeded random weights),
// after CheckTrainerOptions.
ModelFiles OpenInitFiles(const TrainerOptions& o, std::string* tokenizer_source);
// --ctx within the model's positions (callers check it once the model is open).
void CheckContext(const TrainerOptions& o, const ModelConfig& c);
// The loop's settings that follow from the trainer's (steps from --epochs, the schedule), and
// the run's identity for resume (`run` plus the shared options).
TrainLoopOptions LoopOptions(const TrainerOptions& o, const TrainModel& m, int64_t examples,
                             int64_t examples_per_micro_batch, const std::string& tokenizer_source,
                             nlohmann::json run);
// Every id below the model's vocabulary, or an error naming `what` (the tokenizer's mismatch).
void CheckIds(const std::vector<int32_t>& ids, int32_t vocab, const std::string& what);

void RunPretrain(TrainerOptions o);

struct SftOptions {
  TrainerOptions common;
  std::string chat_template;                // --template
  std::string eval_data;                    // --eval-data
  std::string long_conversations = "skip";  // skip | truncate
  bool skip_bad_lines = false;
};

void RunSft(SftOptions o);

}  // namespace starling
