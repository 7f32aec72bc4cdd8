// `starling train pretrain` (next-token training on a text file) and `starling train sft`
// (supervised fine-tuning on conversations): data and model set-up over the shared loop.
#pragma once

#include <cstdint>
#include <string>

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
