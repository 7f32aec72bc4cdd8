#include "train/policy_train.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/file.h"
#include "core/signals.h"
#include "model/blocks.h"
#include "reward/nectar.h"
#include "reward/ranking_data.h"
#include "reward/reward.h"
#include "reward/reward_source.h"
#include "tokenizer/load.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/reward_train.h"

namespace starling {

// ---- Prompts ---------------------------------------------------------------------------------

namespace {

struct PromptStats {
  int64_t lines = 0, kept = 0, too_long = 0;
};

std::vector<PolicyPrompt> LoadPrompts(const std::string& path, const Tokenizer& tokenizer,
                                      const ChatTemplate& chat_template, int64_t max_prompt,
                                      int32_t vocab, PromptStats* stats) {
  std::istringstream in(ReadFile(path));
  std::vector<PolicyPrompt> out;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++stats->lines;
    const std::string where = Concat(path, ":", number);
    PolicyPrompt p;
    p.line = number;
    p.messages = ParsePromptLine(line, where);
    try {
      p.ids = chat_template.Render(tokenizer, p.messages, /*add_generation_prompt=*/true).ids;
    } catch (const Error& e) {
      Fail(where, ": ", e.what());
    }
    CheckIds(p.ids, vocab, where);
    if (static_cast<int64_t>(p.ids.size()) > max_prompt) {
      ++stats->too_long;
      continue;
    }
    out.push_back(std::move(p));
  }
  stats->kept = static_cast<int64_t>(out.size());
  if (stats->lines == 0) Fail(path, ": no prompt in the file");
  if (out.empty()) {
    Fail(path, ": every prompt is longer than --ctx - --max-new-tokens (", max_prompt, " tokens)");
  }
  return out;
}

// trlx's RunningMoments: mean and (population) variance over every score seen so far.
struct RunningMoments {
  double mean = 0, var = 1, count = 1e-24;
  // Updates with a batch and returns the running standard deviation.
  double Update(std::span<const double> xs) {
    const auto n = static_cast<double>(xs.size());
    double m = 0, v = 0;
    for (const double x : xs) m += x;
    m /= n;
    for (const double x : xs) v += (x - m) * (x - m);
    v /= n;
    const double delta = m - mean, total = count + n;
    const double m2 = var * count + v * n + delta * delta * count * n / total;
    mean += delta * n / total;
    var = m2 / total;
    count = total;
    return std::sqrt(var * count / std::max(count - 1, 1.0));
  }
};

uint64_t Mix(uint64_t a, uint64_t b) {  // splitmix64 of a combination
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

nlohmann::json RolloutsJson(const std::vector<Rollout>& rs) {
  nlohmann::json out = nlohmann::json::array();
  for (const Rollout& r : rs) {
    out.push_back({{"prompt", r.prompt},
                   {"context", r.context},
                   {"response", r.response},
                   {"text", r.text},
                   {"finish", FinishReasonName(r.finish)},
                   {"raw_score", r.raw_score},
                   {"score", r.score},
                   {"engine_logps", r.engine_logps},
                   {"entropy", r.entropy},
                   {"old_logps", r.old_logps},
                   {"ref_logps", r.ref_logps},
                   {"old_values", r.old_values},
                   {"rewards", r.rewards}});
  }
  return out;
}

std::vector<Rollout> RolloutsFromJson(const nlohmann::json& j) {
  std::vector<Rollout> out;
  for (const auto& x : j) {
    Rollout r;
    r.prompt = x.at("prompt").get<int64_t>();
    r.context = x.at("context").get<std::vector<int32_t>>();
    r.response = x.at("response").get<std::vector<int32_t>>();
    r.text = x.at("text").get<std::string>();
    const std::string finish = x.at("finish").get<std::string>();
    r.finish = finish == "stop" ? FinishReason::kStop : FinishReason::kLength;
    r.raw_score = x.at("raw_score").get<double>();
    r.score = x.at("score").get<double>();
    for (auto [key, v] :
         {std::pair<const char*, std::vector<float>*>{"engine_logps", &r.engine_logps},
          {"entropy", &r.entropy},
          {"old_logps", &r.old_logps},
          {"ref_logps", &r.ref_logps},
          {"old_values", &r.old_values},
          {"rewards", &r.rewards}}) {
      *v = x.at(key).get<std::vector<float>>();
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

// ---- Batches and the minibatch loss ------------------------------------------------------------

TokenBatch RolloutBatch(std::span<const Rollout* const> rollouts) {
  TokenBatch b;
  for (const Rollout* r : rollouts) {
    const auto p = static_cast<int64_t>(r->context.size());
    const auto t = static_cast<int64_t>(r->response.size());
    if (p < 1 || t < 1) Fail("a rollout needs a prompt and a response");
    b.lengths.push_back(p + t - 1);
    for (int64_t i = 0; i < p + t - 1; ++i) {
      b.inputs.push_back(i < p ? r->context[i] : r->response[i - p]);
      b.targets.push_back(i + 1 < p ? r->context[i + 1] : r->response[i + 1 - p]);
      b.weights.push_back(i + 1 < p ? 0.0f : 1.0f);
    }
  }
  return b;
}

namespace {

// The rows of the rollouts' response tokens in RolloutBatch's layout, rollout by rollout.
std::vector<int64_t> ResponseRows(std::span<const Rollout* const> rollouts) {
  std::vector<int64_t> rows;
  int64_t first = 0;
  for (const Rollout* r : rollouts) {
    const auto p = static_cast<int64_t>(r->context.size());
    const auto t = static_cast<int64_t>(r->response.size());
    for (int64_t i = 0; i < t; ++i) rows.push_back(first + p - 1 + i);
    first += p + t - 1;
  }
  return rows;
}

// Flattens a per-rollout field over the minibatch.
std::vector<float> Flat(std::span<const Rollout* const> rollouts,
                        std::vector<float> Rollout::*field) {
  std::vector<float> out;
  for (const Rollout* r : rollouts) {
    const std::vector<float>& v = r->*field;
    if (v.size() != r->response.size()) Fail("a rollout's per-token field has the wrong length");
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace

PolicyMinibatchResult PolicyMinibatchLoss(TrainStep& step, std::span<const Rollout* const> rollouts,
                                          const PolicyUpdateConfig& config, double scale,
                                          bool backward, TrainStep* value_step) {
  PolicyMinibatchResult out;
  // Advantages and returns per rollout, from its rewards and the rollout's values.
  for (const Rollout* r : rollouts) {
    const size_t t = r->response.size();
    std::vector<float> a(t), ret(t);
    GeneralizedAdvantages(r->rewards, r->old_values, config.gamma, config.lam, a, ret);
    out.advantages.insert(out.advantages.end(), a.begin(), a.end());
    out.returns.insert(out.returns.end(), ret.begin(), ret.end());
  }
  // (A minibatch of one one-token response has nothing to whiten against: left as it is.)
  if (config.whiten && out.advantages.size() >= 2) Whiten(out.advantages);
  const std::vector<float> old_logps = Flat(rollouts, &Rollout::old_logps);
  const std::vector<float> ref_logps = Flat(rollouts, &Rollout::ref_logps);
  const std::vector<float> old_values = Flat(rollouts, &Rollout::old_values);
  const std::vector<int64_t> rows = ResponseRows(rollouts);
  const size_t m = rows.size();
  out.tokens = static_cast<int64_t>(m);
  const TokenBatch b = RolloutBatch(rollouts);
  // The loss over the gathered tokens; d loss / d logps and d values, times `scale`, scattered
  // back to the rows.
  auto loss_of = [&](std::span<float> dlogps, std::span<float> dvalues) {
    std::vector<float> dl(m), dv(m);
    const PolicyTokens t{out.logps,  out.values,     old_logps,  ref_logps,
                         old_values, out.advantages, out.returns};
    out.terms = PolicyLoss(config.loss, t, dl, dv);
    if (config.freeze_policy ||
        (config.loss.algorithm == PolicyAlgorithm::kApaStarling && out.terms.value_loss > 1.0)) {
      out.value_only = true;
      std::fill(dl.begin(), dl.end(), 0.0f);
      out.terms.loss = config.loss.vf_coef * out.terms.value_loss;
    }
    for (size_t i = 0; i < m; ++i) {
      if (!dlogps.empty()) dlogps[rows[i]] = static_cast<float>(dl[i] * scale);
      if (!dvalues.empty()) dvalues[rows[i]] = static_cast<float>(dv[i] * scale);
    }
  };
  out.logps.resize(m);
  out.values.resize(m);
  if (value_step != nullptr) {
    // The value model first: its values, and the value loss's gradient (the policy term does
    // not depend on the values; it is computed with the rollout's log-probs as placeholders).
    value_step->ValueLoss(
        b,
        [&](std::span<const float> values, std::span<float> dvalues) {
          for (size_t i = 0; i < m; ++i) {
            out.values[i] = values[rows[i]];
            out.logps[i] = old_logps[i];
          }
          loss_of({}, dvalues);
          return config.loss.vf_coef * out.terms.value_loss * scale;
        },
        backward);
  }
  step.PolicyLoss(
      b,
      [&](std::span<const float> logps, std::span<const float> values, std::span<float> dlogps,
          std::span<float> dvalues) {
        for (size_t i = 0; i < m; ++i) {
          out.logps[i] = logps[rows[i]];
          if (value_step == nullptr) out.values[i] = values[rows[i]];
        }
        loss_of(dlogps, value_step == nullptr ? dvalues : std::span<float>());
        return out.terms.loss * scale;
      },
      backward);
  return out;
}

// ---- The reference policy
// ------------------------------------------------------------------------

ReferencePolicy::ReferencePolicy(TrainModel& policy) : policy_(policy) {
  std::vector<TensorRef> own;
  copies_.reserve(policy.parameters().size());
  for (const Parameter& p : policy.parameters()) {
    copies_.push_back(p.value);
    TensorRef t;
    t.name = p.spec.name;
    t.file = policy.model().source() + " (reference copy)";
    t.format = WeightFormat::kF32;
    t.shape = p.spec.shape;
    t.data = copies_.back().data();
    t.size_bytes = p.value.size() * sizeof(float);
    copied_bytes_ += t.size_bytes;
    own.push_back(std::move(t));
  }
  for (const TensorRef& t : policy.model().tensors()) shared_bytes_ += t.size_bytes;
  shared_bytes_ -= copied_bytes_;
  model_ = std::make_unique<Model>(
      policy.model().WithReplacedTensors(own, policy.model().source() + " (reference)", nullptr));
  // The head as float32 rows: the reference's copy when the head is trained, else the policy's
  // (frozen, the same).
  const ModelConfig& c = policy.config();
  const std::string head_name =
      c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  for (size_t i = 0; i < own.size(); ++i) {
    if (own[i].name == head_name) head_ = copies_[i].data();
  }
  if (head_ == nullptr) head_ = policy.head_weights();
}

void ReferencePolicy::LogProbs(TrainStep& step, const TokenBatch& b, std::span<float> logps) {
  const Model& m = *model_;
  const ModelConfig& c = m.config();
  const auto n = static_cast<int64_t>(b.inputs.size());
  const int64_t d = c.hidden_size;
  if (static_cast<int64_t>(logps.size()) != n) Fail("reference log-probs: room for ", logps.size());
  SequenceKeyValues kv(c, b.lengths, b.prefixes);
  const int32_t first = policy_.lowest_trainable_layer();
  const ForwardRecord& r = step.record();
  forward_.Ensure(c, n, kv.max_span());
  const auto dn = static_cast<size_t>(n * d);
  if (first == 0) {
    EmbedRows(m, b.inputs, forward_.x.data());
  } else {  // continue from the policy's input of its first trained block (or final norm)
    const std::vector<float>& x =
        first < c.num_layers ? r.blocks[static_cast<size_t>(first)].x_attn : r.x_final;
    if (x.size() != dn) Fail("reference log-probs: the step's last forward was another batch");
    std::copy(x.begin(), x.end(), forward_.x.begin());
  }
  RunBlocks(m, first, n, kv.positions(), kv, forward_, nullptr);
  hidden_.resize(dn);
  FinalNorm(m, forward_.x.data(), n, hidden_.data(), nullptr);
  std::vector<float> weights(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) weights[i] = b.weights[i] != 0.0f ? 1.0f : 0.0f;
  dhidden_.resize(dn);
  LmHeadCrossEntropy(head_, c.vocab_size, hidden_.data(), n, d, b.targets, weights, 1.0,
                     dhidden_.data(), nullptr, loss_, logps);
  for (float& x : logps) x = -x;
}

void ScoreRollouts(TrainStep& step, ReferencePolicy& reference, std::span<Rollout> rollouts,
                   int64_t batch, TrainStep* value_step) {
  for (size_t s = 0; s < rollouts.size(); s += static_cast<size_t>(batch)) {
    std::vector<Rollout*> chunk;
    for (size_t i = s; i < std::min(rollouts.size(), s + static_cast<size_t>(batch)); ++i) {
      chunk.push_back(&rollouts[i]);
    }
    const std::span<const Rollout* const> view(chunk.data(), chunk.size());
    const TokenBatch b = RolloutBatch(view);
    const std::vector<int64_t> rows = ResponseRows(view);
    std::vector<float> logps, values, ref(b.inputs.size());
    step.PolicyLoss(
        b,
        [&](std::span<const float> l, std::span<const float> v, std::span<float>,
            std::span<float>) {
          logps.assign(l.begin(), l.end());
          values.assign(v.begin(), v.end());
          return 0.0;
        },
        /*backward=*/false);
    reference.LogProbs(step, b, ref);
    if (value_step != nullptr) {
      value_step->ValueLoss(
          b,
          [&](std::span<const float> v, std::span<float>) {
            values.assign(v.begin(), v.end());
            return 0.0;
          },
          /*backward=*/false);
    }
    size_t k = 0;
    for (Rollout* r : chunk) {
      const size_t t = r->response.size();
      r->old_logps.resize(t);
      r->old_values.resize(t);
      r->ref_logps.resize(t);
      for (size_t i = 0; i < t; ++i, ++k) {
        r->old_logps[i] = logps[rows[k]];
        r->old_values[i] = values[rows[k]];
        r->ref_logps[i] = ref[rows[k]];
      }
    }
  }
}

// ---- Rollouts --------------------------------------------------------------------------------

std::vector<Rollout> GenerateRollouts(const Model& model, const Tokenizer& tokenizer,
                                      std::span<const PolicyPrompt* const> prompts,
                                      std::span<const int64_t> prompt_indices,
                                      std::span<const uint64_t> seeds,
                                      const GenerationOptions& options, int64_t batch) {
  std::vector<Rollout> out(prompts.size());
  std::vector<std::vector<int32_t>> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    out[i].prompt = prompt_indices[i];
    out[i].context = prompts[i]->ids;
    ids.push_back(prompts[i]->ids);
  }
  // The policy's distribution (temperature 1) at each sampled token: its log-prob and entropy.
  const auto record = [&](size_t i, std::span<const float> logits, int32_t token) {
    const float top = *std::max_element(logits.begin(), logits.end());
    double z = 0, zl = 0;
    for (const float l : logits) {
      const double e = std::exp(static_cast<double>(l) - top);
      z += e;
      zl += e * (static_cast<double>(l) - top);
    }
    const double lse = top + std::log(z);
    out[i].engine_logps.push_back(static_cast<float>(logits[static_cast<size_t>(token)] - lse));
    out[i].entropy.push_back(static_cast<float>(std::log(z) - zl / z));
  };
  std::vector<GenerationResult> results =
      GenerateBatch(model, tokenizer, ids, seeds, options, batch, record);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].response = std::move(results[i].tokens);
    out[i].text = std::move(results[i].text);
    out[i].finish = results[i].finish;
  }
  return out;
}

// ---- The loop
// ------------------------------------------------------------------------------------

namespace {

const char* AlgorithmName(PolicyAlgorithm a) {
  switch (a) {
    case PolicyAlgorithm::kPpo: return "ppo";
    case PolicyAlgorithm::kApaPaper: return "apa-paper";
    case PolicyAlgorithm::kApaStarling: return "apa-starling";
  }
  return "?";
}

double Std(std::span<const double> x) {
  if (x.size() < 2) return 0.0;
  double m = 0, v = 0;
  for (const double a : x) m += a;
  m /= static_cast<double>(x.size());
  for (const double a : x) v += (a - m) * (a - m);
  return std::sqrt(v / static_cast<double>(x.size() - 1));
}

}  // namespace

void RunPolicyTraining(PolicyOptions p) {
  TrainerOptions& o = p.common;
  const bool starling = p.algorithm == PolicyAlgorithm::kApaStarling;
  const bool paper = p.algorithm == PolicyAlgorithm::kApaPaper;
  if (p.prompts.empty()) Fail("--prompts FILE.jsonl is required");
  if (p.rm.empty() == p.rm_url.empty()) Fail("give exactly one of --rm DIR and --rm-url URL");
  if (p.iterations < 1) Fail("--iterations must be at least 1, not ", p.iterations);
  if (p.rollouts < 1) Fail("--rollouts must be at least 1, not ", p.rollouts);
  if (p.ppo_epochs < 1) Fail("--ppo-epochs must be at least 1, not ", p.ppo_epochs);
  if (o.batch < 1 || o.loop.accum < 1) Fail("--batch and --accum must be at least 1");
  if (p.rollouts % (o.batch * o.loop.accum) != 0) {
    Fail("--rollouts (", p.rollouts, ") must be a multiple of --batch x --accum (",
         o.batch * o.loop.accum, "): every optimizer step takes whole minibatches");
  }
  if (p.max_new_tokens < 1) Fail("--max-new-tokens must be at least 1");
  if (p.gen_batch < 1) Fail("--gen-batch must be at least 1");
  if (!(p.gamma >= 0 && p.gamma <= 1) || !(p.lam >= 0 && p.lam <= 1)) {
    Fail("--gamma and --lam must lie in [0, 1]");
  }
  if (p.reward_scale != "none" && p.reward_scale != "running") {
    Fail("--reward-scale must be none or running, not ", p.reward_scale);
  }
  if (p.reward_clip < 0) Fail("--reward-clip must be >= 0");
  if (p.top_k != 0 || p.top_p != 1.0f || p.temperature != 1.0f) {
    if (Ranks::root())
      std::fprintf(stderr,
                   "warning: sampling with temperature %g, top-k %d, top-p %g: the responses are "
                   "not drawn from the distribution the loss scores (temperature 1, unfiltered), "
                   "which biases the KL estimate (it can go negative)\n",
                   p.temperature, p.top_k, p.top_p);
  }
  const bool whiten = p.whiten >= 0 ? p.whiten != 0 : !starling;
  // microsoft/RLHF-APA's value loss is unclipped (its clipping is commented out).
  if (p.loss.cliprange_value < 0) p.loss.cliprange_value = paper ? 0.0 : 0.2;
  const double kl_coef = p.kl_coef >= 0 ? p.kl_coef : (paper ? 0.0 : 0.01);
  if (paper && kl_coef != 0.0) {
    if (Ranks::root())
      std::fprintf(stderr,
                   "note: APA (paper) puts no KL term in the reward; --kl-coef %g adds one\n",
                   kl_coef);
  }

  std::string tokenizer_source;
  if (o.loop.steps > 0 || o.epochs > 0) Fail("policy tuning counts --iterations, not --steps");
  o.loop.steps = 1;  // CheckTrainerOptions wants a count; the real one follows
  o.data = p.prompts;
  const bool auto_ctx = o.ctx <= 0;  // the model's positions, at most 2048
  if (auto_ctx) o.ctx = 1;
  ModelFiles files = OpenInitFiles(o, &tokenizer_source);
  if (files.config.head != ModelHead::kLanguageModel) {
    Fail(files.source, ": policy tuning trains a language model");
  }
  if (auto_ctx) o.ctx = std::min<int64_t>(files.config.max_position_embeddings, 2048);
  CheckContext(o, files.config);
  TrainModel m(p.separate_value_model ? std::move(files) : WithValueHead(std::move(files)),
               o.unfreeze_layers);
  // A value model of its own: the policy's initial weights with a [1, D] head (zeros: values
  // start at 0), the same blocks trained.
  std::unique_ptr<TrainModel> value_model;
  if (p.separate_value_model) {
    std::string unused;
    value_model = std::make_unique<TrainModel>(
        WithFreshRewardHead(OpenInitFiles(o, &unused), o.seed), o.unfreeze_layers);
    for (Parameter& q : value_model->parameters()) {
      if (q.spec.role == TensorRole::kScore) std::fill(q.value.begin(), q.value.end(), 0.0f);
    }
  }
  const Tokenizer tokenizer = LoadTokenizer(tokenizer_source);
  // Without --template, the model's own if starling knows it, else OpenChat's (Starling-LM's).
  const ChatTemplate* own = ChatTemplate::OfModel(tokenizer_source);
  const ChatTemplate& chat_template = !p.chat_template.empty()
                                          ? ChatTemplate::ByName(p.chat_template)
                                      : own != nullptr ? *own
                                                       : ChatTemplate::ByName("openchat");
  const int64_t max_prompt = o.ctx - p.max_new_tokens;
  if (max_prompt < 1) Fail("--ctx ", o.ctx, " leaves no room for a prompt before --max-new-tokens");
  PromptStats prompt_stats;
  const std::vector<PolicyPrompt> prompts = LoadPrompts(
      p.prompts, tokenizer, chat_template, max_prompt, m.config().vocab_size, &prompt_stats);
  const std::unique_ptr<RewardSource> reward = OpenRewardSource(
      {p.rm, p.rm_url, p.rm_api_key, p.rm_template, p.rm_tokenizer, p.rm_retries, p.rm_timeout});
  ReferencePolicy reference(m);

  GenerationOptions gen;
  gen.max_new_tokens = p.max_new_tokens;
  gen.sampling.temperature = p.temperature;
  gen.sampling.top_k = p.top_k;
  gen.sampling.top_p = p.top_p;
  gen.sampling.min_p = 0.0f;
  gen.sampling.repeat_penalty = 1.0f;
  {
    std::vector<int32_t> stops = m.config().eos_token_ids;
    if (tokenizer.eos_id() >= 0) stops.push_back(tokenizer.eos_id());
    if (const auto id = tokenizer.FindAddedToken(chat_template.end_of_turn())) stops.push_back(*id);
    std::sort(stops.begin(), stops.end());
    stops.erase(std::unique(stops.begin(), stops.end()), stops.end());
    gen.stop_token_ids = stops;
  }
  if (p.stop.empty() && chat_template.name().rfind("openchat", 0) == 0) {
    p.stop = {"GPT4 Correct User:", "GPT4 Correct Assistant:"};  // Starling's
  }
  gen.stop_strings = p.stop;

  PolicyUpdateConfig update;
  update.loss = p.loss;
  update.loss.algorithm = p.algorithm;
  update.gamma = p.gamma;
  update.lam = p.lam;
  update.whiten = whiten;
  KlController kl_ctl{kl_coef, p.target_kl, p.kl_horizon};
  RunningMoments moments;

  const int64_t micro = o.batch;
  const int64_t steps_per_epoch = p.rollouts / (micro * o.loop.accum);
  const int64_t steps_per_iteration = steps_per_epoch * p.ppo_epochs;
  const int64_t total_steps = steps_per_iteration * p.iterations;

  TrainLoopOptions loop = o.loop;
  loop.steps = total_steps;
  loop.lr.kind = LrScheduleFromName(o.schedule);
  loop.lr.total = total_steps;
  loop.tokenizer_source = tokenizer_source;
  loop.run_config = {{"trainer", AlgorithmName(p.algorithm)},
                     {"model", o.model.empty() ? "config:" + o.config : o.model},
                     {"prompts", p.prompts},
                     {"rm", p.rm.empty() ? p.rm_url : p.rm},
                     {"ctx", o.ctx},
                     {"batch", o.batch},
                     {"accum", o.loop.accum},
                     {"rollouts", p.rollouts},
                     {"iterations", p.iterations},
                     {"ppo_epochs", p.ppo_epochs},
                     {"max_new_tokens", p.max_new_tokens},
                     {"seed", o.seed},
                     {"unfreeze_layers", o.unfreeze_layers},
                     {"template", std::string(chat_template.name())},
                     {"separate_value_model", p.separate_value_model},
                     {"value_warmup", p.value_warmup}};

  int64_t first_iteration = 0, step = 0, resume_step_in_iteration = 0;
  std::vector<Rollout> rollouts;
  if (!o.loop.resume.empty()) {
    const std::string dir = FindCheckpoint(o.loop.resume);
    const nlohmann::json state = LoadCheckpoint(m, dir, loop.run_config);
    if (value_model) {
      LoadParameters(*value_model, dir + "/value_model/model.safetensors");
      ReadMoments(*value_model, dir + "/value_model/optimizer.safetensors");
    }
    step = state.at("step").get<int64_t>();
    first_iteration = step / steps_per_iteration;
    resume_step_in_iteration = step % steps_per_iteration;
    kl_ctl.value = state.at("kl_coef").get<double>();
    moments.mean = state.at("reward_mean").get<double>();
    moments.var = state.at("reward_var").get<double>();
    moments.count = state.at("reward_count").get<double>();
    if (resume_step_in_iteration > 0) {
      rollouts = RolloutsFromJson(nlohmann::json::parse(ReadFile(dir + "/rollouts.json")));
    }
    if (Ranks::root())
      std::fprintf(stderr, "resuming from %s (step %lld, iteration %lld)\n", dir.c_str(),
                   static_cast<long long>(step), static_cast<long long>(first_iteration + 1));
  }
  Ranks::set_timeout(loop.rank_timeout);
  const bool root = Ranks::root();  // logs, prints and checkpoints
  std::ofstream log;
  if (!loop.log.empty() && root) {
    log.open(loop.log, o.loop.resume.empty() ? std::ios::trunc : std::ios::app);
    if (!log) Fail(loop.log, ": cannot open the log for writing");
  }
  if (Ranks::root())
    std::fprintf(stderr,
                 "%s: %s, %.2fM trainable + %.2fM frozen parameters (blocks %d..%d trained, value "
                 "head: linear on the final hidden state); %lld prompts (%lld longer than %lld "
                 "tokens skipped); %lld iterations x %lld rollouts x %lld epochs = %lld steps\n",
                 AlgorithmName(p.algorithm), m.model().source().c_str(),
                 static_cast<double>(m.parameter_count()) / 1e6,
                 static_cast<double>(m.frozen_count()) / 1e6, m.lowest_trainable_layer(),
                 m.config().num_layers - 1, static_cast<long long>(prompt_stats.kept),
                 static_cast<long long>(prompt_stats.too_long), static_cast<long long>(max_prompt),
                 static_cast<long long>(p.iterations), static_cast<long long>(p.rollouts),
                 static_cast<long long>(p.ppo_epochs), static_cast<long long>(total_steps));
  const auto mib = [](uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
  if (Ranks::root())
    std::fprintf(stderr,
                 "reference policy: %.1f MiB of its own (the trained tensors' initial values), "
                 "%.1f MiB shared with the policy (the frozen blocks: not copied, run once)\n",
                 mib(reference.copied_bytes()), mib(reference.shared_bytes()));

  TrainStep train_step(m, loop.recompute);
  std::unique_ptr<TrainStep> value_step;
  if (value_model) {
    value_step = std::make_unique<TrainStep>(*value_model, loop.recompute);
    if (Ranks::root())
      std::fprintf(stderr, "value model: %.2fM trainable parameters (a [1, D] head, zeros)\n",
                   static_cast<double>(value_model->parameter_count()) / 1e6);
  }
  StopSignals signals;
  GradientSum policy_sum(m, loop.deterministic_reduce);
  std::unique_ptr<GradientSum> value_sum;
  if (value_model) {
    value_sum = std::make_unique<GradientSum>(*value_model, loop.deterministic_reduce);
  }
  const auto start = std::chrono::steady_clock::now();
  EpochOrder order(static_cast<int64_t>(prompts.size()), o.shuffle, o.seed);
  auto save = [&](int64_t at_step) {
    const nlohmann::json extra = {{"kl_coef", kl_ctl.value},
                                  {"reward_mean", moments.mean},
                                  {"reward_var", moments.var},
                                  {"reward_count", moments.count}};
    const bool mid = at_step % steps_per_iteration != 0;
    SaveCheckpoint(
        m, loop, at_step, at_step / steps_per_iteration, extra, [&](const std::string& dir) {
          if (value_model) {
            SaveHuggingFace(*value_model, dir + "/value_model", loop.tokenizer_source);
            WriteMoments(*value_model, dir + "/value_model/optimizer.safetensors");
          }
          if (!mid) return;
          const std::string text = RolloutsJson(rollouts).dump() + "\n";
          WriteFileAtomically(dir + "/rollouts.json", [&](const ByteSink& sink) { sink(text); });
        });
  };
  bool first_log = o.loop.resume.empty();
  for (int64_t it = first_iteration; it < p.iterations; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    nlohmann::json iteration_line = {{"iteration", it + 1}};
    if (resume_step_in_iteration == 0) {
      // Rollouts: prompts in epoch order, one seed per (run seed, iteration, rollout). Under
      // MPI each rank samples, scores and measures its contiguous share, then every rank
      // gathers all of them in order: the same rollouts as one process's.
      std::vector<const PolicyPrompt*> chosen;
      std::vector<int64_t> indices;
      std::vector<uint64_t> seeds;
      const auto [first_rollout, end_rollout] = Ranks::Share(p.rollouts);
      for (int64_t k = first_rollout; k < end_rollout; ++k) {
        const int64_t index = order(it * p.rollouts + k);
        chosen.push_back(&prompts[static_cast<size_t>(index)]);
        indices.push_back(index);
        seeds.push_back(Mix(Mix(o.seed, static_cast<uint64_t>(it)), static_cast<uint64_t>(k)));
      }
      rollouts = GenerateRollouts(m.model(), tokenizer, chosen, indices, seeds, gen, p.gen_batch);
      const double generate_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      // Rewards.
      std::vector<std::vector<ChatMessage>> conversations;
      for (const Rollout& r : rollouts) {
        std::vector<ChatMessage> c = prompts[static_cast<size_t>(r.prompt)].messages;
        c.push_back({"assistant", r.text});
        conversations.push_back(std::move(c));
      }
      const auto t1 = std::chrono::steady_clock::now();
      const std::vector<double> own_raw = reward->Score(conversations);
      const double reward_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      for (size_t i = 0; i < rollouts.size(); ++i) rollouts[i].raw_score = own_raw[i];
      // Log-probs and values of the rollout policy and the reference (training forward).
      ScoreRollouts(train_step, reference, rollouts, micro, value_step.get());
      if (Ranks::size() > 1) {
        std::string packed;  // MessagePack: float64 numbers, every bit kept
        nlohmann::json::to_msgpack(RolloutsJson(rollouts), packed);
        std::vector<Rollout> all;
        for (const std::string& part : Ranks::Gather(packed, "the rollouts")) {
          for (Rollout& r : RolloutsFromJson(nlohmann::json::from_msgpack(part))) {
            all.push_back(std::move(r));
          }
        }
        rollouts = std::move(all);
      }
      std::vector<double> raw;
      for (const Rollout& r : rollouts) raw.push_back(r.raw_score);
      std::vector<double> scores = raw;
      if (p.reward_scale == "running") {
        const double sd = moments.Update(raw);
        for (double& s : scores) s /= sd > 0 ? sd : 1.0;
      }
      if (p.reward_clip > 0) {
        for (double& s : scores) s = std::clamp(s, -p.reward_clip, p.reward_clip);
      }
      for (size_t i = 0; i < rollouts.size(); ++i) rollouts[i].score = scores[i];
      double kl_sum = 0, entropy = 0, engine_gap = 0;
      int64_t tokens = 0;
      for (Rollout& r : rollouts) {
        r.rewards.resize(r.response.size());
        PenalizedRewards(r.old_logps, r.ref_logps, kl_ctl.value, r.score, r.rewards);
        double kl = 0;
        for (size_t t = 0; t < r.response.size(); ++t) {
          kl += r.old_logps[t] - r.ref_logps[t];
          entropy += r.entropy[t];
          engine_gap = std::max(engine_gap, std::fabs(double{r.old_logps[t]} - r.engine_logps[t]));
        }
        kl_sum += kl;
        tokens += static_cast<int64_t>(r.response.size());
      }
      const auto n = static_cast<double>(rollouts.size());
      double reward_mean = 0;
      for (const double s : raw) reward_mean += s;
      reward_mean /= n;
      const double kl_token = kl_sum / static_cast<double>(tokens);
      iteration_line.update({{"reward_mean", reward_mean},
                             {"reward_std", Std(raw)},
                             {"score_mean",
                              [&] {
                                double s = 0;
                                for (const double x : scores) s += x;
                                return s / n;
                              }()},
                             {"kl", kl_token},
                             {"kl_response", kl_sum / n},
                             {"kl_coef", kl_ctl.value},
                             {"entropy", entropy / static_cast<double>(tokens)},
                             {"response_length", static_cast<double>(tokens) / n},
                             {"engine_logp_max_gap", engine_gap},
                             {"generate_seconds", generate_seconds},
                             {"reward_seconds", reward_seconds}});
      if (!std::isfinite(kl_token) || !std::isfinite(reward_mean)) {
        Fail("iteration ", it + 1, ": the KL (", kl_token, ") or the mean reward (", reward_mean,
             ") is not finite; stopping (the last checkpoint in ", loop.out, " is intact)");
      }
      if (kl_token > p.max_kl) {
        Fail("iteration ", it + 1, ": the KL to the reference is ", kl_token,
             " nats per token, above --max-kl ", p.max_kl, "; stopping (the last checkpoint in ",
             loop.out, " is intact); try a lower --lr or a higher --kl-coef");
      }
      if (p.sample_every > 0 && it % p.sample_every == 0) {
        nlohmann::json samples = nlohmann::json::array();
        for (int32_t k = 0; k < p.samples && k < static_cast<int32_t>(rollouts.size()); ++k) {
          const Rollout& r = rollouts[static_cast<size_t>(k)];
          samples.push_back(
              {{"prompt", prompts[static_cast<size_t>(r.prompt)].messages.back().content},
               {"response", r.text},
               {"reward", r.raw_score}});
        }
        iteration_line["samples"] = samples;
      }
    } else {
      iteration_line["resumed_at_step"] = step;
    }

    // The update: --ppo-epochs passes over the rollouts in minibatches.
    update.freeze_policy = it < p.value_warmup;
    double value_loss = 0, clip_fraction = 0, approx_kl = 0, adv_mean = 0, adv_sq = 0;
    double ret_sum = 0, ret_sq = 0, err_sq = 0;
    int64_t measured = 0, value_only = 0;
    const int64_t first_local = resume_step_in_iteration;
    resume_step_in_iteration = 0;
    for (int64_t local = first_local; local < steps_per_iteration; ++local) {
      const int64_t epoch = local / steps_per_epoch;
      const int64_t within = local % steps_per_epoch;
      // This epoch's order of the rollouts: a permutation seeded by (seed, iteration, epoch).
      std::vector<int64_t> perm(rollouts.size());
      for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
      if (o.shuffle) {
        std::mt19937_64 rng(
            Mix(Mix(o.seed ^ 0x5eedull, static_cast<uint64_t>(it)), static_cast<uint64_t>(epoch)));
        for (size_t i = perm.size(); i > 1; --i) {
          std::swap(perm[i - 1], perm[static_cast<size_t>(rng() % i)]);
        }
      }
      std::vector<std::vector<const Rollout*>> micros(static_cast<size_t>(o.loop.accum));
      int64_t step_tokens = 0;
      for (int64_t a = 0; a < o.loop.accum; ++a) {
        for (int64_t j = 0; j < micro; ++j) {
          const int64_t k = (within * o.loop.accum + a) * micro + j;
          const Rollout* r = &rollouts[static_cast<size_t>(perm[static_cast<size_t>(k)])];
          micros[static_cast<size_t>(a)].push_back(r);
          step_tokens += static_cast<int64_t>(r->response.size());
        }
      }
      const auto ts = std::chrono::steady_clock::now();
      // This rank's share of the micro-batches (all of them in one process); the gradients
      // and the step's statistics summed over ranks.
      policy_sum.BeginStep(o.loop.accum, step + 1);
      if (value_sum) value_sum->BeginStep(o.loop.accum, step + 1);
      double loss = 0, policy_loss = 0, step_value_loss = 0, step_clip = 0, step_kl = 0;
      double any_value_only = 0, step_value_only = 0, step_measured = 0;
      double step_adv = 0, step_adv_sq = 0, step_ret = 0, step_ret_sq = 0, step_err_sq = 0;
      for (int64_t a = policy_sum.first_slot(), e = a + policy_sum.own_slots(); a < e; ++a) {
        const auto& mb = micros[static_cast<size_t>(a)];
        policy_sum.BeginSlot(a + 1 == e);
        if (value_sum) value_sum->BeginSlot(a + 1 == e);
        int64_t mt = 0;
        for (const Rollout* r : mb) mt += static_cast<int64_t>(r->response.size());
        const double scale = static_cast<double>(mt) / static_cast<double>(step_tokens);
        const PolicyMinibatchResult res =
            PolicyMinibatchLoss(train_step, std::span<const Rollout* const>(mb.data(), mb.size()),
                                update, scale, /*backward=*/true, value_step.get());
        loss += res.terms.loss * scale;
        policy_loss += res.terms.policy_loss * scale;
        step_value_loss += res.terms.value_loss * scale;
        step_clip += res.terms.clip_fraction * scale;
        step_kl += res.terms.approx_kl * scale;
        any_value_only = std::max(any_value_only, res.value_only ? 1.0 : 0.0);
        step_value_only += res.value_only;
        for (size_t i = 0; i < res.advantages.size(); ++i) {
          step_adv += res.advantages[i];
          step_adv_sq += double{res.advantages[i]} * res.advantages[i];
          step_ret += res.returns[i];
          step_ret_sq += double{res.returns[i]} * res.returns[i];
          step_err_sq +=
              (double{res.returns[i]} - res.values[i]) * (double{res.returns[i]} - res.values[i]);
        }
        step_measured += static_cast<double>(res.tokens);
        policy_sum.EndSlot();
        if (value_sum) value_sum->EndSlot();
      }
      policy_sum.Finish();
      if (value_sum) value_sum->Finish();
      std::vector<double> sums = {loss,
                                  policy_loss,
                                  step_value_loss,
                                  step_clip,
                                  step_kl,
                                  any_value_only,
                                  step_value_only,
                                  step_adv,
                                  step_adv_sq,
                                  step_ret,
                                  step_ret_sq,
                                  step_err_sq,
                                  step_measured,
                                  signals.signal() != 0 ? 1.0 : 0.0};
      Ranks::SumDoubles(sums, "the step's statistics");
      loss = sums[0], policy_loss = sums[1], step_value_loss = sums[2], step_clip = sums[3];
      step_kl = sums[4];
      const bool step_any_value_only = sums[5] > 0;
      value_only += static_cast<int64_t>(sums[6]);
      adv_mean += sums[7], adv_sq += sums[8], ret_sum += sums[9], ret_sq += sums[10];
      err_sq += sums[11];
      measured += static_cast<int64_t>(sums[12]);
      const bool stop = sums[13] != 0;
      double norm = GradNorm(m.parameters());
      if (value_model) norm = std::hypot(norm, GradNorm(value_model->parameters()));
      if (!std::isfinite(loss) || !std::isfinite(norm)) {
        Fail("step ", step + 1, ": the loss is ", loss, " and the gradient norm ", norm,
             "; stopping before the update (the last checkpoint in ", loop.out,
             " is intact); try a lower --lr or --grad-clip");
      }
      const double lr = LearningRate(loop.lr, step);
      for (TrainModel* t : {&m, value_model.get()}) {
        if (t == nullptr || (t == &m && value_model && update.freeze_policy)) continue;
        if (loop.grad_clip > 0) ClipGrads(t->parameters(), norm, loop.grad_clip);  // jointly
        AdamWStep(t->parameters(), step + 1, lr, loop.adam);
      }
      ++step;
      value_loss += step_value_loss;
      clip_fraction += step_clip;
      approx_kl += step_kl;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      if (log) {
        nlohmann::json line = {{"step", step},
                               {"loss", loss},
                               {"policy_loss", policy_loss},
                               {"value_loss", step_value_loss},
                               {"approx_kl", step_kl},
                               {"lr", lr},
                               {"grad_norm", norm},
                               {"tokens", step_tokens},
                               {"iteration", it + 1},
                               {"ppo_epoch", epoch + 1},
                               {"seconds", seconds}};
        if (p.algorithm == PolicyAlgorithm::kPpo) line["clip_fraction"] = step_clip;
        if (step_any_value_only) line["value_only"] = true;
        if (Ranks::size() > 1) {
          line["allreduce_seconds"] =
              policy_sum.wait_seconds() + (value_sum ? value_sum->wait_seconds() : 0.0);
        }
        if (first_log) {
          line["prompts"] = prompt_stats.kept;
          line["prompts_skipped_too_long"] = prompt_stats.too_long;
          line["reference_own_bytes"] = reference.copied_bytes();
          line["reference_shared_bytes"] = reference.shared_bytes();
          first_log = false;
        }
        log << line.dump() << "\n" << std::flush;
      }
      if (root && step < total_steps && loop.save_every > 0 && step % loop.save_every == 0) {
        save(step);
      }
      if (stop) {
        if (!root) return;
        save(step);
        std::fprintf(stderr, "\n%s: saved %s/checkpoint-%lld; resume with --resume %s\n",
                     signals.reason().c_str(), loop.out.c_str(), static_cast<long long>(step),
                     loop.out.c_str());
        return;
      }
    }
    const auto steps_done = static_cast<double>(steps_per_iteration - first_local);
    if (measured > 0) {
      const double mt = static_cast<double>(measured);
      const double ret_var = ret_sq / mt - (ret_sum / mt) * (ret_sum / mt);
      iteration_line.update(
          {{"value_loss", value_loss / steps_done},
           {"approx_kl", approx_kl / steps_done},
           {"advantage_mean", adv_mean / mt},
           {"advantage_std",
            std::sqrt(std::max(0.0, adv_sq / mt - (adv_mean / mt) * (adv_mean / mt)))},
           {"explained_variance", ret_var > 0 ? 1.0 - (err_sq / mt) / ret_var : 0.0},
           {"value_only_minibatches", value_only}});
      if (p.algorithm == PolicyAlgorithm::kPpo) {
        iteration_line["clip_fraction"] = clip_fraction / steps_done;
      }
    }
    if (iteration_line.contains("kl_response")) {
      kl_ctl.Update(iteration_line["kl_response"].get<double>(), p.rollouts);
    }
    iteration_line["seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (log) log << iteration_line.dump() << "\n" << std::flush;
    if (!loop.quiet && root) {
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double eta = elapsed / static_cast<double>(it + 1 - first_iteration) *
                         static_cast<double>(p.iterations - it - 1);
      std::fprintf(
          stderr,
          "iteration %lld/%lld  reward %.4f  kl %.4f  entropy %.3f  length %.1f  "
          "value loss %.4f  %.1f s  ETA %.0f s\n",
          static_cast<long long>(it + 1), static_cast<long long>(p.iterations),
          iteration_line.value("reward_mean", NAN), iteration_line.value("kl", NAN),
          iteration_line.value("entropy", NAN), iteration_line.value("response_length", NAN),
          iteration_line.value("value_loss", NAN), iteration_line["seconds"].get<double>(), eta);
    }
  }
  if (!root) return;
  save(step);
  SaveHuggingFace(m, loop.out, loop.tokenizer_source);
  if (value_model) SaveHuggingFace(*value_model, loop.out + "/value_model", loop.tokenizer_source);
  std::fprintf(stderr, "wrote %s (and %s/checkpoint-%lld)\n", loop.out.c_str(), loop.out.c_str(),
               static_cast<long long>(step));
}

}  // namespace starling
