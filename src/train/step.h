// One training forward and backward over a batch of whole sequences: the data flow of a
// training step (docs/DESIGN.md). The optimizer step is the caller's (train/optimizer.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/blocks.h"
#include "train/loss.h"
#include "train/parameters.h"

namespace starling {

// Sequences laid end to end: N = sum(lengths) rows.
struct TokenBatch {
  std::vector<int64_t> lengths;  // [B]
  std::vector<int32_t> inputs;   // [N]
  std::vector<int32_t> targets;  // [N] next tokens
  std::vector<float> weights;    // [N] loss weights (0 masks)
  double normalizer = 1.0;       // loss = sum(w * CE) / normalizer
};

class TrainStep {
 public:
  explicit TrainStep(TrainModel& model, bool recompute = false) : model_(model) {
    record_.recompute = recompute;
  }

  // Forward and backward of the language-modelling loss: adds the gradients into the
  // parameters' grad buffers (the caller zeroes them per optimizer step) and returns the loss.
  // `backward` false: the loss only (evaluation), gradients untouched.
  double LanguageModelLoss(const TokenBatch& batch, bool backward = true,
                           std::span<float> token_losses = {});

  // Bytes of the activations the last step saved (plus the backward's working memory).
  uint64_t activation_bytes() const;

 private:
  TrainModel& model_;
  ForwardScratch forward_;
  ForwardRecord record_;
  BackwardScratch backward_;
  BlockActivations recomputed_;
  LossScratch loss_;
  std::vector<float> dhidden_, dx_;
};

}  // namespace starling
