// `starling train dpo`: Direct Preference Optimization (Rafailov et al. 2023) on preference
// pairs or Nectar rankings, against the initial model as the reference, over the shared loop.
#pragma once

#include <string>
#include <vector>

#include "chat/chat_data.h"
#include "train/pretrain.h"
#include "train/step.h"

namespace starling {

struct DpoOptions {
  TrainerOptions common;
  std::string chat_template = "openchat";  // the policy's
  std::string eval_data;
  double beta = 0.1;
  std::string pairs = "best";  // from a ranking: best (rank 1 vs each other) | all
  bool skip_bad_lines = false;
};

// One preference pair rendered by the policy's template: whole conversations (prompt + answer)
// whose weights mark only the final answer's tokens (its content and end-of-turn).
struct DpoPair {
  ChatExample chosen, rejected;
  int64_t line = 0;
  double reference_chosen = 0, reference_rejected = 0;  // summed log-probs, initial model
};

// The pairs of one ranking (answers best first): "best": (0, j) for j >= 1; "all": (i, j) for
// i < j, in that order.
std::vector<std::pair<size_t, size_t>> PreferencePairs(size_t answers, const std::string& rule);

// B pairs as a TokenBatch: per pair, the rows both conversations share before either answer
// starts (laid once), then the chosen and the rejected rows continuing them.
// rows[2p], rows[2p + 1]: the [begin, end) rows of pair p's chosen and rejected sequences.
TokenBatch MakePairBatch(const std::vector<const DpoPair*>& pairs,
                         std::vector<std::pair<int64_t, int64_t>>* rows);

void RunDpo(DpoOptions o);

}  // namespace starling
