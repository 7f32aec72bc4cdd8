#include "train/reward_train.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "core/error.h"
#include "model/reward_load.h"
#include "reward/nectar.h"
#include "reward/ranking_data.h"
#include "tokenizer/load.h"
#include "train/data.h"
#include "train/distributed.h"

namespace starling {
namespace {

// Everything a converted model's tensors point into.
struct ConvertedStorage {
  std::shared_ptr<const void> original;
  std::vector<float> head;  // [1, D]
};

// Prompts with ranked answers. Without shuffling, the micro-batch at position p is records
// (p + j) mod N, j < B; with shuffling, a seeded permutation per epoch (EpochPermutation).
class RankingObjective final : public TrainObjective {
 public:
  RankingObjective(std::vector<RankingExample> train, std::vector<RankingExample> eval,
                   int64_t batch, bool shuffle, uint64_t seed, const RewardTrainOptions& o)
      : train_(std::move(train)),
        eval_(std::move(eval)),
        batch_(batch),
        order_(static_cast<int64_t>(train_.size()), shuffle, seed),
        loss_(o.loss),
        share_(o.prefix_sharing) {}

  Size Read(int64_t slot, int64_t* position) override {
    std::vector<const std::vector<std::vector<int32_t>>*> prompts;
    for (int64_t j = 0; j < batch_; ++j) prompts.push_back(&Example(*position + j).sequences);
    *position += batch_;
    if (static_cast<int64_t>(slots_.size()) <= slot) slots_.resize(static_cast<size_t>(slot + 1));
    slots_[slot] = MakeRankingBatch(prompts, share_);
    return {batch_, static_cast<int64_t>(slots_[slot].inputs.size())};
  }

  double Backward(TrainStep& step, int64_t slot, double units) override {
    slots_[slot].normalizer = units;
    return step.RankingLoss(slots_[slot], loss_);
  }

  int64_t examples() const override { return static_cast<int64_t>(train_.size()); }
  const char* unit_name() const override { return "prompts"; }

  nlohmann::json Evaluate(TrainStep& step) override {
    if (eval_.empty()) return nlohmann::json::object();
    RankingMetrics metrics;
    for (size_t begin = 0; begin < eval_.size(); begin += static_cast<size_t>(batch_)) {
      std::vector<const std::vector<std::vector<int32_t>>*> prompts;
      for (size_t i = begin; i < std::min(eval_.size(), begin + batch_); ++i) {
        prompts.push_back(&eval_[i].sequences);
      }
      RankingBatch b = MakeRankingBatch(prompts, share_);
      std::vector<float> rewards(b.score_rows.size());
      step.RankingLoss(b, loss_, /*backward=*/false, rewards);
      int64_t first = 0;
      for (const int64_t k : b.answers) {
        const std::span<const float> r(rewards.data() + first, static_cast<size_t>(k));
        std::vector<float> unused(static_cast<size_t>(k));
        metrics.Add(r, RankingLoss(loss_.kind, r, loss_.zero_sum_penalty, 1.0, unused));
        first += k;
      }
    }
    return metrics.Json("eval_");
  }

 private:
  const RankingExample& Example(int64_t position) { return train_[order_(position)]; }

  std::vector<RankingExample> train_, eval_;
  int64_t batch_;
  EpochOrder order_;
  RankingLossOptions loss_;
  bool share_;
  std::vector<RankingBatch> slots_;
};

}  // namespace

ModelFiles WithFreshRewardHead(ModelFiles files, uint64_t seed) {
  ModelConfig& c = files.config;
  if (c.head == ModelHead::kReward) return files;
  c.head = ModelHead::kReward;
  c.tie_word_embeddings = false;  // the LM head, tied or not, is gone
  auto storage = std::make_shared<ConvertedStorage>();
  storage->original = files.storage;
  const int64_t d = c.hidden_size;
  storage->head.resize(static_cast<size_t>(d));
  std::mt19937_64 rng(seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  std::uniform_real_distribution<double> uniform(-bound, bound);
  for (float& w : storage->head) w = static_cast<float>(uniform(rng));
  std::erase_if(files.tensors, [](const TensorRef& t) { return t.name == "lm_head.weight"; });
  TensorRef head;
  head.name = "score.weight";
  head.file = files.source + " (fresh v_head, seed " + std::to_string(seed) + ")";
  head.shape = {1, d};
  head.data = storage->head.data();
  head.size_bytes = storage->head.size() * sizeof(float);
  files.tensors.push_back(std::move(head));
  files.storage = storage;
  return files;
}

RankingBatch MakeRankingBatch(const std::vector<const std::vector<std::vector<int32_t>>*>& prompts,
                              bool share) {
  RankingBatch b;
  for (const auto* answers : prompts) {
    const std::vector<std::vector<int32_t>>& seqs = *answers;
    size_t common = 0;
    if (share) {
      size_t shortest = seqs.front().size();
      for (const auto& s : seqs) shortest = std::min(shortest, s.size());
      // Every answer keeps at least its last token (where it is scored).
      while (common + 1 < shortest && std::all_of(seqs.begin(), seqs.end(), [&](const auto& s) {
               return s[common] == seqs.front()[common];
             })) {
        ++common;
      }
    }
    int64_t prefix = -1;
    if (common > 0) {
      prefix = static_cast<int64_t>(b.lengths.size());
      b.lengths.push_back(static_cast<int64_t>(common));
      b.prefixes.push_back(-1);
      b.inputs.insert(b.inputs.end(), seqs.front().begin(), seqs.front().begin() + common);
    }
    for (const auto& s : seqs) {
      b.lengths.push_back(static_cast<int64_t>(s.size() - common));
      b.prefixes.push_back(prefix);
      b.inputs.insert(b.inputs.end(), s.begin() + common, s.end());
      b.score_rows.push_back(static_cast<int64_t>(b.inputs.size()) - 1);
    }
    b.answers.push_back(static_cast<int64_t>(seqs.size()));
  }
  return b;
}

void RankingMetrics::Add(std::span<const float> rewards, double prompt_loss) {
  std::vector<double> ranks, scores;
  for (size_t i = 0; i < rewards.size(); ++i) {
    ranks.push_back(static_cast<double>(i + 1));
    scores.push_back(rewards[i]);
  }
  const RankAgreement a = CompareRanking(ranks, scores);
  loss += prompt_loss;
  ++prompts;
  kendall_tau += a.kendall_tau;
  top1 += a.top1_correct;
  adjacent_pairs += a.adjacent_pairs;
  adjacent_correct += a.adjacent_correct;
  for (size_t i = 0; i < rewards.size(); ++i) {
    for (size_t j = i + 1; j < rewards.size(); ++j) {
      ++pairs;
      pairs_correct += rewards[i] > rewards[j];
    }
  }
}

nlohmann::json RankingMetrics::Json(const std::string& prefix) const {
  const auto ratio = [](double a, int64_t b) { return b > 0 ? a / static_cast<double>(b) : 0.0; };
  return {
      {prefix + "loss", ratio(loss, prompts)},
      {prefix + "adjacent_accuracy", ratio(static_cast<double>(adjacent_correct), adjacent_pairs)},
      {prefix + "pair_accuracy", ratio(static_cast<double>(pairs_correct), pairs)},
      {prefix + "kendall_tau", ratio(kendall_tau, prompts)},
      {prefix + "top1_accuracy", ratio(static_cast<double>(top1), prompts)}};
}

void RunRewardTraining(RewardTrainOptions r) {
  TrainerOptions& o = r.common;
  std::string tokenizer_source;
  ModelFiles files;
  std::string init;
  const bool default_ctx = o.ctx == 0;  // Starling's max_length, within the model's positions
  if (default_ctx) o.ctx = 2048;
  if (!o.model.empty() && o.config.empty() && IsRewardCheckpoint(o.model)) {
    CheckTrainerOptions(o, &tokenizer_source);
    files = OpenRewardModelFiles({.directory = o.model});
    init = "reward model " + o.model;
  } else {
    files = WithFreshRewardHead(OpenInitFiles(o, &tokenizer_source), o.seed);
    init = (o.model.empty() ? "config " + o.config : "language model " + o.model) +
           " with a fresh v_head (seed " + std::to_string(o.seed) + ")";
  }
  const int32_t positions = files.config.max_position_embeddings;
  if (default_ctx && positions > 0) o.ctx = std::min<int64_t>(o.ctx, positions);
  CheckContext(o, files.config);
  TrainModel m(std::move(files), o.unfreeze_layers);
  const Tokenizer tokenizer = LoadTokenizer(tokenizer_source);
  const ChatTemplate& chat_template = ChatTemplate::ByName(r.chat_template);
  RankingDataOptions data_options;
  data_options.ctx = o.ctx;
  data_options.add_bos = tokenizer.add_bos_token();
  data_options.skip_bad_lines = r.skip_bad_lines;
  RankingDataStats stats;
  std::vector<RankingExample> train =
      LoadRankingData(o.data, tokenizer, chat_template, data_options, &stats);
  const int32_t vocab = m.config().vocab_size;
  for (const RankingExample& e : train) {
    for (const auto& ids : e.sequences) CheckIds(ids, vocab, o.data + ":" + std::to_string(e.line));
  }
  std::vector<RankingExample> eval;
  RankingDataStats eval_stats;
  if (!r.eval_data.empty()) {
    eval = LoadRankingData(r.eval_data, tokenizer, chat_template, data_options, &eval_stats);
    for (const RankingExample& e : eval) {
      for (const auto& ids : e.sequences) {
        CheckIds(ids, vocab, r.eval_data + ":" + std::to_string(e.line));
      }
    }
  }
  // What sharing each prompt's common prefix saves, over the whole data set.
  int64_t whole = 0, shared = 0;
  for (const RankingExample& e : train) {
    const RankingBatch b = MakeRankingBatch({&e.sequences}, true);
    shared += static_cast<int64_t>(b.inputs.size());
    for (const auto& s : e.sequences) whole += static_cast<int64_t>(s.size());
  }
  if (Ranks::root())
    std::fprintf(stderr,
                 "init: %s\ndata: %s: %lld prompts, %lld answers; %lld bad lines skipped, %lld "
                 "sequences truncated from the left to --ctx %lld; shared prompts run %.1f%% of "
                 "the tokens%s\n",
                 init.c_str(), o.data.c_str(), static_cast<long long>(stats.records),
                 static_cast<long long>(stats.answers), static_cast<long long>(stats.bad_lines),
                 static_cast<long long>(stats.truncated), static_cast<long long>(o.ctx),
                 100.0 * static_cast<double>(shared) / static_cast<double>(whole),
                 r.prefix_sharing ? "" : " (sharing off: every sequence runs whole)");
  const char* loss_name = r.loss.kind == RankingLossKind::kKWise ? "kwise" : "pairwise";
  TrainLoopOptions loop =
      LoopOptions(o, m, static_cast<int64_t>(train.size()), o.batch, tokenizer_source,
                  {{"trainer", "rm"},
                   {"loss", loss_name},
                   {"zero_sum_penalty", r.loss.zero_sum_penalty},
                   {"template", r.chat_template},
                   {"eval_data", r.eval_data},
                   {"prefix_sharing", r.prefix_sharing}});
  loop.log_header = {{"data_prompts", stats.records},
                     {"data_answers", stats.answers},
                     {"skipped_bad_lines", stats.bad_lines},
                     {"truncated", stats.truncated},
                     {"tokens_whole", whole},
                     {"tokens_shared", shared},
                     {"init", init}};
  RankingObjective objective(std::move(train), std::move(eval), o.batch, o.shuffle, o.seed, r);
  RunTrainLoop(m, objective, loop);
}

}  // namespace starling
