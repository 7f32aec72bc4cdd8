// One training forward and backward over a batch of whole sequences: the data flow of a
// training step (docs/DESIGN.md). The optimizer step is the caller's (train/optimizer.h).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/blocks.h"
#include "train/loss.h"
#include "train/parameters.h"

namespace starling {

// Sequences laid end to end: N = sum(lengths) rows.
struct TokenBatch {
  std::vector<int64_t> lengths;   // [B]
  std::vector<int64_t> prefixes;  // [B] or empty: sequences continuing another
                                  // (SequenceKeyValues' prefixes; e.g. two answers' prompt)
  std::vector<int32_t> inputs;    // [N]
  std::vector<int32_t> targets;   // [N] next tokens
  std::vector<float> weights;     // [N] loss weights (0 masks)
  double normalizer = 1.0;        // loss = sum(w * CE) / normalizer
};

// Prompts with K ranked answers each (reward-model training). Each (prompt, answer) is one
// token sequence scored at its last row; the K sequences of a prompt share their common token
// prefix, laid once as a sequence of its own that the answers continue (SequenceKeyValues'
// prefixes), so its forward runs once and its gradient gathers all K answers'.
struct RankingBatch {
  std::vector<int64_t> lengths;     // [S] per prompt: its shared prefix (if any), its answers
  std::vector<int64_t> prefixes;    // [S] -1, or the index of the prompt's shared prefix
  std::vector<int32_t> inputs;      // [N]
  std::vector<int64_t> score_rows;  // [A] each answer's last row; a prompt's answers best first
  std::vector<int64_t> answers;     // [G] answers per prompt, in order
  double normalizer = 1.0;          // loss = sum of the prompts' losses / normalizer
};

struct RankingLossOptions {
  RankingLossKind kind = RankingLossKind::kKWise;
  double zero_sum_penalty = 0.0;
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

  // A loss of the targets' log-probabilities (DPO, policy gradients): the forward of the
  // language model over b, then loss_fn(logps, dlogps) with logps[N] the log-probability of
  // each row's target under the model (rows whose weight is 0 are not scored: 0), which
  // returns the loss and writes d loss / d logps into dlogps[N] (zeroed before the call); then
  // the backward of that loss (gradients added as LanguageModelLoss does). b.normalizer is not
  // used: the function normalizes.
  using LogProbLossFn =
      std::function<double(std::span<const float> logps, std::span<float> dlogps)>;
  double LogProbLoss(const TokenBatch& b, const LogProbLossFn& loss_fn, bool backward = true);

  // Policy tuning's step: as LogProbLoss, plus values[N], the value head over each scored row's
  // final hidden state (the value of the state whose next token is the row's target; the
  // model needs config().value_head), and d loss / d values from the function.
  using PolicyLossFn =
      std::function<double(std::span<const float> logps, std::span<const float> values,
                           std::span<float> dlogps, std::span<float> dvalues)>;
  double PolicyLoss(const TokenBatch& b, const PolicyLossFn& loss_fn, bool backward = true);

  // A value model's step (a model with a [1, D] head, as a reward model): values[N] = the head
  // over the final hidden state of every row whose weight is not 0 (0 elsewhere), then
  // loss_fn(values, dvalues) and, with `backward`, its gradient (added as LanguageModelLoss).
  using ValueLossFn =
      std::function<double(std::span<const float> values, std::span<float> dvalues)>;
  double ValueLoss(const TokenBatch& b, const ValueLossFn& loss_fn, bool backward = true);

  // Forward and backward of the ranking loss of a reward model (a [1, D] head): rewards are the
  // head over the final hidden state at score_rows, and each prompt's answers add
  // RankingLoss / normalizer. Gradients as LanguageModelLoss. The rewards go into
  // `rewards`[A] when not empty.
  double RankingLoss(const RankingBatch& batch, const RankingLossOptions& options,
                     bool backward = true, std::span<float> rewards = {});

  // What the last forward saved (e.g. a block's input for a reference that shares the blocks
  // below it).
  const ForwardRecord& record() const { return record_; }
  TrainModel& model() { return model_; }

  // Bytes of the activations the last step saved (plus the backward's working memory).
  uint64_t activation_bytes() const;

 private:
  TrainModel& model_;
  ForwardScratch forward_;
  ForwardRecord record_;
  BackwardScratch backward_;
  BlockActivations recomputed_;
  // Checks b's ids against the vocabulary and runs the training forward over it.
  SequenceKeyValues Forward(const TokenBatch& b);
  // The LM head's cross-entropy over the forward's hidden states with per-row `weights`:
  // d hidden into dhidden_, d head too when `head_grad`.
  double HeadLoss(const TokenBatch& b, std::span<const float> weights, double normalizer,
                  bool head_grad, std::span<float> token_losses);
  // DecoderBackward from dhidden_.
  void Backward(const TokenBatch& b, SequenceKeyValues& kv);

  LossScratch loss_;
  std::vector<float> dhidden_, dx_, logps_, dlogps_, coefficients_, values_, dvalues_;
  std::vector<int64_t> scored_;
};

}  // namespace starling
