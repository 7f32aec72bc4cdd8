// `starling train pretrain`: next-token training on a text file.
#pragma once

#include <cstdint>
#include <string>

#include "train/optimizer.h"

namespace starling {

struct PretrainOptions {
  std::string model;      // -m: Hugging Face directory or GGUF file (F32/F16/BF16; frozen parts may be quantized)
  std::string config;     // --config: a fresh model from this config.json instead (seeded init)
  std::string tokenizer;  // --tokenizer: defaults to -m
  std::string data;       // --data: UTF-8 text
  std::string out;        // --out: the trained model's directory
  std::string log;        // --log: JSON Lines, one per step
  int64_t ctx = 256;
  int64_t batch = 4;
  int64_t steps = 100;
  double lr = 3e-4;
  AdamWConfig adam;
  double grad_clip = 0.0;  // 0: none
  int32_t unfreeze_layers = -1;
  uint64_t seed = 1;
  bool shuffle = true;
  bool recompute = false;
  bool quiet = false;  // no progress line
};

void RunPretrain(const PretrainOptions& o);

}  // namespace starling
