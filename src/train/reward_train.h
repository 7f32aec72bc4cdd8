// `starling train rm`: reward-model training on ranked answers (Starling-RM's K-wise loss, or
// pairs), over the shared loop.
#pragma once

#include <string>

#include "train/loss.h"
#include "train/pretrain.h"
#include "train/step.h"

namespace starling {

struct RewardTrainOptions {
  TrainerOptions common;  // -m is a reward model, or a language model to give a v_head
  std::string chat_template = "llama-2";
  std::string eval_data;
  RankingLossOptions loss;
  bool skip_bad_lines = false;
  bool prefix_sharing = true;  // false: every (prompt, answer) runs whole (to measure)
};

// A language model's files turned into a reward model's: the LM head dropped, a fresh
// score.weight [1, D] drawn from U(-1/sqrt(D), 1/sqrt(D)) (PyTorch's nn.Linear default, as
// Starling-RM's GPTRewardModel creates its v_head) with std::mt19937_64(seed).
ModelFiles WithFreshRewardHead(ModelFiles files, uint64_t seed);

// Lays `prompts` (each: its answers' whole token sequences, best first) out as a RankingBatch.
// With `share`, each prompt's sequences give their longest common token prefix (leaving every
// answer at least one token) as one sequence that the answers continue.
RankingBatch MakeRankingBatch(const std::vector<const std::vector<std::vector<int32_t>>*>& prompts,
                              bool share);

// Agreement of a reward model's scores with held-out rankings, summed over prompts.
struct RankingMetrics {
  double loss = 0;  // sum of the prompts' losses
  int64_t prompts = 0;
  double kendall_tau = 0;  // sum of per-prompt tau-b
  int64_t top1 = 0;        // prompts whose best answer scores strictly highest
  int64_t adjacent_pairs = 0, adjacent_correct = 0;  // consecutive ranks (Starling's metric)
  int64_t pairs = 0, pairs_correct = 0;              // every pair
  // Adds one prompt's rewards (best first).
  void Add(std::span<const float> rewards, double prompt_loss);
  nlohmann::json Json(const std::string& prefix) const;
};

void RunRewardTraining(RewardTrainOptions o);

}  // namespace starling
