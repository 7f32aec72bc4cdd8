#include "train/dpo_train.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "reward/ranking_data.h"
#include "tokenizer/load.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/loss.h"

namespace starling {
namespace {

struct PairStats {
  int64_t records = 0, pairs = 0, bad_lines = 0, too_long = 0;
};

// Keeps only the last run of weighted targets: the final answer (the prompt's earlier assistant
// turns are context, not the response).
void KeepFinalAnswer(ChatExample* e) {
  auto i = static_cast<int64_t>(e->weights.size());
  while (i > 0 && e->weights[i - 1] != 0.0f) --i;
  std::fill(e->weights.begin(), e->weights.begin() + i, 0.0f);
  std::fill(e->weights.begin() + i, e->weights.end(), 1.0f);
}

std::vector<DpoPair> LoadPairs(const std::string& path, const Tokenizer& tokenizer,
                               const ChatTemplate& chat_template, const DpoOptions& o,
                               PairStats* stats) {
  std::istringstream in(ReadFile(path));
  std::vector<DpoPair> out;
  PairStats s;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = Concat(path, ":", number);
    std::vector<DpoPair> from_line;
    try {
      const RankingRecord r = ParseRankingRecord(line, where);
      std::vector<ChatExample> rendered;
      for (const std::string& answer : r.answers) {
        std::vector<ChatMessage> messages = r.prompt;
        messages.push_back({"assistant", answer});
        rendered.push_back(RenderChatExample(tokenizer, chat_template, messages, 1.0));
        KeepFinalAnswer(&rendered.back());
      }
      for (const auto& [better, worse] : PreferencePairs(r.answers.size(), o.pairs)) {
        DpoPair p;
        p.chosen = rendered[better];
        p.rejected = rendered[worse];
        p.line = number;
        from_line.push_back(std::move(p));
      }
    } catch (const std::exception& err) {
      if (!o.skip_bad_lines) {
        const std::string what = err.what();
        Fail(what.rfind(where, 0) == 0 ? what : where + ": " + what,
             " (--skip-bad-lines skips such lines)");
      }
      ++s.bad_lines;
      continue;
    }
    ++s.records;
    for (DpoPair& p : from_line) {
      const int64_t limit = o.common.ctx + 1;
      if (static_cast<int64_t>(p.chosen.ids.size()) > limit ||
          static_cast<int64_t>(p.rejected.ids.size()) > limit) {
        ++s.too_long;
        continue;
      }
      out.push_back(std::move(p));
    }
  }
  s.pairs = static_cast<int64_t>(out.size());
  if (out.empty()) Fail(path, ": no preference pair to train on");
  *stats = s;
  return out;
}

// Summed log-probs of each sequence's scored rows.
double RowSum(std::span<const float> logps, const TokenBatch& b, std::pair<int64_t, int64_t> rows) {
  double sum = 0;
  for (int64_t i = rows.first; i < rows.second; ++i) {
    if (b.weights[i] != 0.0f) sum += logps[i];
  }
  return sum;
}

struct DpoMetrics {
  double loss = 0, chosen = 0, rejected = 0;
  int64_t pairs = 0, correct = 0;
  void Add(double l, double chosen_reward, double rejected_reward) {
    loss += l, chosen += chosen_reward, rejected += rejected_reward;
    ++pairs;
    correct += chosen_reward > rejected_reward;
  }
  nlohmann::json Json(const std::string& prefix) const {
    const auto n = static_cast<double>(std::max<int64_t>(1, pairs));
    return {{prefix + "reward_accuracy", static_cast<double>(correct) / n},
            {prefix + "reward_margin", (chosen - rejected) / n},
            {prefix + "chosen_reward", chosen / n},
            {prefix + "rejected_reward", rejected / n}};
  }
};

class DpoObjective final : public TrainObjective {
 public:
  DpoObjective(std::vector<DpoPair> train, std::vector<DpoPair> eval, int64_t batch, bool shuffle,
               uint64_t seed, double beta)
      : train_(std::move(train)),
        eval_(std::move(eval)),
        batch_(batch),
        order_(static_cast<int64_t>(train_.size()), shuffle, seed),
        beta_(beta) {}

  Size Read(int64_t slot, int64_t* position) override {
    std::vector<const DpoPair*> pairs;
    for (int64_t j = 0; j < batch_; ++j) pairs.push_back(&train_[order_(*position + j)]);
    *position += batch_;
    if (static_cast<int64_t>(slots_.size()) <= slot) slots_.resize(static_cast<size_t>(slot + 1));
    Slot& s = slots_[slot];
    s.pairs = pairs;
    s.batch = MakePairBatch(pairs, &s.rows);
    return {batch_, static_cast<int64_t>(s.batch.inputs.size())};
  }

  double Backward(TrainStep& step, int64_t slot, double units) override {
    Slot& s = slots_[slot];
    return Loss(step, s, units, &step_metrics_, true);
  }

  int64_t examples() const override { return static_cast<int64_t>(train_.size()); }
  const char* unit_name() const override { return "pairs"; }

  std::vector<double> TakeStepSums() override {
    const DpoMetrics m = step_metrics_;
    step_metrics_ = {};
    return {m.loss, m.chosen, m.rejected, static_cast<double>(m.pairs),
            static_cast<double>(m.correct)};
  }
  nlohmann::json StepMetrics(std::span<const double> sums) const override {
    DpoMetrics m;
    m.loss = sums[0], m.chosen = sums[1], m.rejected = sums[2];
    m.pairs = static_cast<int64_t>(sums[3]), m.correct = static_cast<int64_t>(sums[4]);
    return m.Json("");
  }

  nlohmann::json Evaluate(TrainStep& step) override {
    if (eval_.empty()) return nlohmann::json::object();
    DpoMetrics metrics;
    for (size_t begin = 0; begin < eval_.size(); begin += static_cast<size_t>(batch_)) {
      Slot s;
      for (size_t i = begin; i < std::min(eval_.size(), begin + batch_); ++i) {
        s.pairs.push_back(&eval_[i]);
      }
      s.batch = MakePairBatch(s.pairs, &s.rows);
      Loss(step, s, 1.0, &metrics, false);
    }
    nlohmann::json j = metrics.Json("eval_");
    j["eval_loss"] = metrics.loss / static_cast<double>(std::max<int64_t>(1, metrics.pairs));
    return j;
  }

 private:
  struct Slot {
    std::vector<const DpoPair*> pairs;
    TokenBatch batch;
    std::vector<std::pair<int64_t, int64_t>> rows;
  };

  // The slot's DPO loss summed over its pairs and divided by `units`, its gradient when
  // `backward`; each pair's loss and implicit rewards go into `metrics`.
  double Loss(TrainStep& step, const Slot& s, double units, DpoMetrics* metrics, bool backward) {
    return step.LogProbLoss(
        s.batch,
        [&](std::span<const float> logps, std::span<float> dlogps) {
          double total = 0;
          for (size_t p = 0; p < s.pairs.size(); ++p) {
            const DpoPair& pair = *s.pairs[p];
            const auto chosen = s.rows[2 * p], rejected = s.rows[2 * p + 1];
            const double pw = RowSum(logps, s.batch, chosen);
            const double pl = RowSum(logps, s.batch, rejected);
            double dpw = 0, dpl = 0;
            const double loss =
                DpoLoss(beta_, pw, pair.reference_chosen, pl, pair.reference_rejected, &dpw, &dpl);
            metrics->Add(loss, beta_ * (pw - pair.reference_chosen),
                         beta_ * (pl - pair.reference_rejected));
            total += loss;
            for (int64_t i = chosen.first; i < chosen.second; ++i) {
              if (s.batch.weights[i] != 0.0f) dlogps[i] = static_cast<float>(dpw / units);
            }
            for (int64_t i = rejected.first; i < rejected.second; ++i) {
              if (s.batch.weights[i] != 0.0f) dlogps[i] = static_cast<float>(dpl / units);
            }
          }
          return total / units;
        },
        backward);
  }

  std::vector<DpoPair> train_, eval_;
  int64_t batch_;
  EpochOrder order_;
  double beta_;
  std::vector<Slot> slots_;
  DpoMetrics step_metrics_;
};

// The initial model's summed response log-probs of every pair (the reference: computed once,
// before any update or a resumed checkpoint's weights are loaded).
void ComputeReference(TrainModel& m, std::vector<DpoPair>& pairs, int64_t batch) {
  TrainStep step(m);
  for (size_t begin = 0; begin < pairs.size(); begin += static_cast<size_t>(batch)) {
    std::vector<const DpoPair*> group;
    for (size_t i = begin; i < std::min(pairs.size(), begin + batch); ++i)
      group.push_back(&pairs[i]);
    std::vector<std::pair<int64_t, int64_t>> rows;
    const TokenBatch b = MakePairBatch(group, &rows);
    step.LogProbLoss(
        b,
        [&](std::span<const float> logps, std::span<float>) {
          for (size_t p = 0; p < group.size(); ++p) {
            pairs[begin + p].reference_chosen = RowSum(logps, b, rows[2 * p]);
            pairs[begin + p].reference_rejected = RowSum(logps, b, rows[2 * p + 1]);
          }
          return 0.0;
        },
        /*backward=*/false);
  }
}

}  // namespace

std::vector<std::pair<size_t, size_t>> PreferencePairs(size_t answers, const std::string& rule) {
  std::vector<std::pair<size_t, size_t>> out;
  if (rule == "best") {
    for (size_t j = 1; j < answers; ++j) out.emplace_back(0, j);
  } else if (rule == "all") {
    for (size_t i = 0; i < answers; ++i) {
      for (size_t j = i + 1; j < answers; ++j) out.emplace_back(i, j);
    }
  } else {
    Fail("--pairs must be best or all, not '", rule, "'");
  }
  return out;
}

TokenBatch MakePairBatch(const std::vector<const DpoPair*>& pairs,
                         std::vector<std::pair<int64_t, int64_t>>* rows) {
  TokenBatch b;
  rows->clear();
  auto append = [&](const ChatExample& e, size_t from, int64_t prefix) {
    const auto begin = static_cast<int64_t>(b.inputs.size());
    b.lengths.push_back(static_cast<int64_t>(e.ids.size() - 1 - from));
    b.prefixes.push_back(prefix);
    b.inputs.insert(b.inputs.end(), e.ids.begin() + from, e.ids.end() - 1);
    b.targets.insert(b.targets.end(), e.ids.begin() + from + 1, e.ids.end());
    b.weights.insert(b.weights.end(), e.weights.begin() + from, e.weights.end());
    rows->emplace_back(begin, static_cast<int64_t>(b.inputs.size()));
  };
  for (const DpoPair* p : pairs) {
    const std::vector<int32_t>&w = p->chosen.ids, &l = p->rejected.ids;
    // Row r (input ids[r], target ids[r + 1]) is the same in both while ids[0..r+1] are; share
    // such rows up to the first scored one, leaving each sequence at least one row.
    size_t common = 0;
    while (common < w.size() && common < l.size() && w[common] == l[common]) ++common;
    size_t shared = common > 0 ? common - 1 : 0;
    shared = std::min({shared, w.size() - 2, l.size() - 2});
    for (size_t r = 0; r < shared; ++r) {
      if (p->chosen.weights[r] != 0.0f || p->rejected.weights[r] != 0.0f) {
        shared = r;
        break;
      }
    }
    int64_t prefix = -1;
    if (shared > 0) {
      prefix = static_cast<int64_t>(b.lengths.size());
      b.lengths.push_back(static_cast<int64_t>(shared));
      b.prefixes.push_back(-1);
      b.inputs.insert(b.inputs.end(), w.begin(), w.begin() + shared);
      b.targets.insert(b.targets.end(), w.begin() + 1, w.begin() + shared + 1);
      b.weights.insert(b.weights.end(), shared, 0.0f);
    }
    append(p->chosen, shared, prefix);
    append(p->rejected, shared, prefix);
  }
  return b;
}

void RunDpo(DpoOptions d) {
  TrainerOptions& o = d.common;
  if (!(d.beta > 0)) Fail("--beta must be positive, not ", d.beta);
  std::string tokenizer_source;
  ModelFiles files = OpenInitFiles(o, &tokenizer_source);
  if (files.config.head != ModelHead::kLanguageModel)
    Fail(files.source, ": DPO trains a language model");
  CheckContext(o, files.config);
  TrainModel m(std::move(files), o.unfreeze_layers);
  const Tokenizer tokenizer = LoadTokenizer(tokenizer_source);
  if (d.chat_template.empty())
    Fail("--template is required (openchat, openchat-code, llama-2, raw)");
  const ChatTemplate& chat_template = ChatTemplate::ByName(d.chat_template);
  PairStats stats;
  std::vector<DpoPair> train = LoadPairs(o.data, tokenizer, chat_template, d, &stats);
  std::vector<DpoPair> eval;
  PairStats eval_stats;
  if (!d.eval_data.empty()) {
    eval = LoadPairs(d.eval_data, tokenizer, chat_template, d, &eval_stats);
  }
  for (const auto* set : {&train, &eval}) {
    for (const DpoPair& p : *set) {
      CheckIds(p.chosen.ids, m.config().vocab_size, "line " + std::to_string(p.line));
      CheckIds(p.rejected.ids, m.config().vocab_size, "line " + std::to_string(p.line));
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  ComputeReference(m, train, o.batch);
  ComputeReference(m, eval, o.batch);
  if (Ranks::root())
    std::fprintf(stderr,
                 "data: %s: %lld records -> %lld pairs (--pairs %s); skipped: %lld bad lines, %lld "
                 "pairs longer than --ctx + 1; reference log-probs in %.1f s\n",
                 o.data.c_str(), static_cast<long long>(stats.records),
                 static_cast<long long>(stats.pairs), d.pairs.c_str(),
                 static_cast<long long>(stats.bad_lines), static_cast<long long>(stats.too_long),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  TrainLoopOptions loop =
      LoopOptions(o, m, static_cast<int64_t>(train.size()), o.batch, tokenizer_source,
                  {{"trainer", "dpo"},
                   {"beta", d.beta},
                   {"pairs", d.pairs},
                   {"template", d.chat_template},
                   {"eval_data", d.eval_data}});
  loop.log_header = {{"data_records", stats.records},
                     {"data_pairs", stats.pairs},
                     {"skipped_bad_lines", stats.bad_lines},
                     {"skipped_too_long", stats.too_long}};
  DpoObjective objective(std::move(train), std::move(eval), o.batch, o.shuffle, o.seed, d.beta);
  RunTrainLoop(m, objective, loop);
}

}  // namespace starling
