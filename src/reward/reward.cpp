#include "reward/reward.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/load.h"

namespace starling {

LoadedRewardModel LoadRewardModelAndTokenizer(const RewardModelOptions& options) {
  LoadedRewardModel out;
  out.model = std::make_unique<Model>(LoadRewardModel(options.files));
  const std::string tokenizer_path =
      options.tokenizer.empty() ? options.files.directory : options.tokenizer;
  if (tokenizer_path.empty()) Fail("no tokenizer given for reward model ", out.model->source());
  out.tokenizer = std::make_unique<Tokenizer>(LoadTokenizer(tokenizer_path));
  if (out.tokenizer->vocab_size() > out.model->config().vocab_size) {
    Fail(tokenizer_path, ": the tokenizer has ", out.tokenizer->vocab_size(),
         " tokens, more than the reward model's vocab_size ", out.model->config().vocab_size);
  }
  return out;
}

RewardScorer::RewardScorer(const Model& model, const Tokenizer& tokenizer, int32_t context_length)
    : model_(&model), tokenizer_(&tokenizer), session_(model, context_length) {
  if (model.config().head != ModelHead::kReward) {
    Fail(model.source(), ": not a reward model (its head is the language-model head)");
  }
}

void RewardScorer::Run(std::span<const int32_t> ids) {
  if (ids.empty()) Fail("cannot score an empty token sequence");
  if (static_cast<int64_t>(ids.size()) > session_.context_length()) {
    Fail("sequence of ", ids.size(), " tokens is longer than the context (",
         session_.context_length(), "; raise it with -c)");
  }
  // Reuse the longest common prefix, but run at least the last token again: its output is
  // what the caller wants, and rewards_ past the prefix are recomputed.
  if (!reuse_prefix_) session_.Truncate(0);
  const auto common = static_cast<size_t>(session_.ReusePrefix(ids));
  rewards_.resize(common);
  const std::span<const int32_t> rest = ids.subspan(common);
  scratch_.resize(rest.size());
  session_.Forward(rest, scratch_, /*all_logits=*/true);
  rewards_.insert(rewards_.end(), scratch_.begin(), scratch_.end());
  stats_.sequences += 1;
  stats_.tokens += static_cast<int64_t>(ids.size());
  stats_.tokens_forwarded += static_cast<int64_t>(rest.size());
}

std::vector<float> RewardScorer::ScoreAllPositions(std::span<const int32_t> ids) {
  Run(ids);
  return rewards_;
}

float RewardScorer::Score(std::span<const int32_t> ids, RewardReadout readout,
                          int32_t card_max_length) {
  if (readout == RewardReadout::kLastToken) {
    Run(ids);
    return rewards_.back();
  }
  if (card_max_length < 1) Fail("the card's max_length must be positive");
  // The card: truncation from the left to max_length, right padding with pad = unk.
  const auto window_size = std::min<size_t>(ids.size(), static_cast<size_t>(card_max_length));
  const std::span<const int32_t> window = ids.last(window_size);
  const int32_t pad_id = tokenizer_->unk_id();
  // PAD_ID = tokenizer(pad_token).input_ids[0]: BOS when the tokenizer adds one.
  const int32_t search_id =
      tokenizer_->add_bos_token() && tokenizer_->bos_id() >= 0 ? tokenizer_->bos_id() : pad_id;
  // c_ind over the padded row: window, then pads up to max_length.
  int64_t c_ind = static_cast<int64_t>(window.size()) < card_max_length && search_id == pad_id
                      ? static_cast<int64_t>(window.size())
                      : card_max_length;
  for (size_t i = 0; i < window.size(); ++i) {
    if (window[i] == search_id) {
      c_ind = static_cast<int64_t>(i);
      break;
    }
  }
  const int64_t index = c_ind == 0 ? card_max_length - 1 : c_ind - 1;  // rewards[c_ind - 1]
  Run(window);
  if (index < static_cast<int64_t>(window.size())) return rewards_[static_cast<size_t>(index)];
  float out = 0.0f;
  session_.Probe(pad_id, index, std::span(&out, 1));
  return out;
}

}  // namespace starling
