// Scoring conversations with a reward model (Starling-RM-7B-alpha and Hugging Face
// *ForSequenceClassification models): the model's [1, D] head over the final hidden state.
//
// Read-outs (where the reward is read):
//   kLastToken: at the last token of the conversation (with the llama-2 template, the closing
//     </s>). The default: it depends only on the conversation.
//   kCard: exactly what Starling-RM's model card computes. Its get_reward() tokenizes with
//     Llama-2-chat's tokenizer (BOS added, truncation from the left to max_length = 2048,
//     right padding with pad = unk), and reads rewards[c_ind - 1] where c_ind is the first
//     position holding PAD_ID = tokenizer("<unk>").input_ids[0]. That call adds BOS first, so
//     PAD_ID is BOS's id, not unk's; the card's sample text starts with "<s>" after the added
//     BOS, so c_ind = 0 and the reward is read at index -1: the last padded position
//     (max_length - 1), a pad token at RoPE position 2047 that attends (through the attention
//     mask) to the real tokens only. When the conversation fills the window there is no pad and
//     index -1 is its last token; when the left truncation leaves a later "<s>" first, c_ind is
//     that position. Session::Probe computes the padded position without materializing padding.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "model/model.h"
#include "model/reward_load.h"
#include "reward/ranking_data.h"  // RewardConversationIds
#include "tokenizer/tokenizer.h"

namespace starling {

enum class RewardReadout { kLastToken, kCard };

struct RewardModelOptions {
  RewardModelFiles files = {};  // directory, config, checkpoint
  std::string tokenizer = {};   // tokenizer.model, HF directory or GGUF; default: files.directory
};

struct LoadedRewardModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

LoadedRewardModel LoadRewardModelAndTokenizer(const RewardModelOptions& options);

struct RewardStats {
  int64_t sequences = 0;
  int64_t tokens = 0;            // tokens scored, all told
  int64_t tokens_forwarded = 0;  // of which actually run (the rest came from the cache)
};

// Scores token sequences with one KV cache. Consecutive sequences that share a prefix (K
// responses to one prompt) reuse it: only the tokens after the common prefix are run. Results
// do not depend on the order or the reuse (the forward pass gives every position the same bits
// whether it runs in one batch or several).
class RewardScorer {
 public:
  // `context_length`: the longest sequence to score (and the card read-out's window must fit).
  RewardScorer(const Model& model, const Tokenizer& tokenizer, int32_t context_length);

  // The reward of `ids` with the given read-out (card_max_length: the card's max_length).
  float Score(std::span<const int32_t> ids, RewardReadout readout = RewardReadout::kLastToken,
              int32_t card_max_length = 2048);
  // The head's output at every position of `ids` [T] (the card's `rewards` row).
  std::vector<float> ScoreAllPositions(std::span<const int32_t> ids);

  const RewardStats& stats() const { return stats_; }
  // With false, every sequence is run from its first token (to measure what reuse saves).
  void set_reuse_prefix(bool reuse) { reuse_prefix_ = reuse; }

 private:
  // Makes the session hold exactly `ids` with rewards_ [T] filled, reusing the cached prefix.
  void Run(std::span<const int32_t> ids);

  const Model* model_;
  const Tokenizer* tokenizer_;
  Session session_;
  std::vector<float> rewards_;  // [session_.length()] the head's output per position
  std::vector<float> scratch_;
  RewardStats stats_;
  bool reuse_prefix_ = true;
};

}  // namespace starling
