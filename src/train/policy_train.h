// `starling train apa|ppo`: policy tuning against a reward model in one process, as trlx runs
// it (the Starling fork's loop): per iteration, sample responses to prompts with the batched
// engine (Session::ForwardBatch over the policy's current weights), score them with a reward
// model (in process or over HTTP), compute the rollout policy's log-probs and values and the
// reference's log-probs with the training forward, then make --ppo-epochs passes over the
// rollouts in minibatches, each an AdamW step on the APA or PPO loss (policy_loss.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "generate/generate.h"
#include "reward/ranking_data.h"  // ParsePromptLine
#include "train/loss.h"
#include "train/policy_loss.h"
#include "train/pretrain.h"
#include "train/step.h"

namespace starling {

struct PolicyOptions {
  TrainerOptions common;  // -m, --out, --log, --resume, --lr, --batch (rollouts per micro-batch),
                          // --accum, --unfreeze-layers, --seed, --ctx (prompt + response)
  PolicyAlgorithm algorithm = PolicyAlgorithm::kPpo;
  std::string prompts;        // JSON Lines
  std::string chat_template;  // the policy's; default: the model's own if known, else openchat
  // The reward: a reward model directory (in process) or a /v1/rewards server.
  std::string rm, rm_url, rm_api_key;
  std::string rm_template = "llama-2";  // how the reward model reads a conversation
  std::string rm_tokenizer;             // default: the reward model's
  int32_t rm_retries = 3;               // attempts after the first, on errors or garbage
  double rm_timeout = 60;               // seconds per request
  int64_t iterations = 10;
  int64_t rollouts = 64;   // responses generated per iteration
  int64_t ppo_epochs = 2;  // passes over an iteration's rollouts
  int64_t gen_batch = 16;  // sequences decoded together
  int32_t max_new_tokens = 128;
  float temperature = 1.0f, top_p = 1.0f;
  int32_t top_k = 0;
  std::vector<std::string> stop;  // default: the template's turn prefixes (Starling's stops)
  double gamma = 1.0, lam = 0.95;
  int whiten = -1;      // -1: the algorithm's default (PPO and APA paper: yes; Starling: no)
  double kl_coef = -1;  // -1: the algorithm's default (0.01; APA paper: 0, no KL in the reward)
  double target_kl = 0, kl_horizon = 10000;
  PolicyLossConfig loss;  // its cliprange_value -1: the algorithm's default (APA paper: 0)
  std::string reward_scale = "none";  // none | running (divide by the running std, as trlx)
  double reward_clip = 0;             // 0: none; else clip scores to [-c, c]
  double max_kl = 10;                 // stop when the mean per-token KL exceeds it
  bool separate_value_model = false;  // a value model of its own instead of a value head
  // The first N iterations train the value only (OpenRLHF's --freezing_actor_steps): a critic
  // that explains the rewards before the policy follows its advantages. With a separate value
  // model the policy is not touched at all (no optimizer step); with a value head the shared
  // trunk still gets the value loss's gradient.
  int64_t value_warmup = 0;
  int64_t sample_every = 1;  // log a few responses every N iterations (0: never)
  int32_t samples = 2;
};

// A prompt of the prompts file, rendered with the policy's template and the generation prompt.
struct PolicyPrompt {
  std::vector<ChatMessage> messages;
  std::vector<int32_t> ids;  // BOS first
  int64_t line = 0;
};

// One sampled response and what the update needs of it, per response token t in [0, T).
struct Rollout {
  int64_t prompt = 0;             // index into the prompts
  std::vector<int32_t> context;   // [P] the prompt's ids
  std::vector<int32_t> response;  // [T >= 1] the sampled ids (a stop token or string included)
  std::string text;               // the response as the reward model reads it
  FinishReason finish = FinishReason::kLength;
  double raw_score = 0, score = 0;  // the reward model's; after scaling and clipping
  std::vector<float> engine_logps;  // [T] log-probs at sampling time (temperature 1)
  std::vector<float> entropy;       // [T] of the policy's distribution at each token
  std::vector<float> old_logps, ref_logps, old_values;  // [T] training forward, at rollout time
  std::vector<float> rewards;                           // [T] KL-penalised, score at the last
};

// The rollouts as one TokenBatch: per rollout the sequence context ++ response[:-1] with
// targets shifted by one, weight 1 on the T response targets only.
TokenBatch RolloutBatch(std::span<const Rollout* const> rollouts);

struct PolicyUpdateConfig {
  PolicyLossConfig loss;
  double gamma = 1.0, lam = 0.95;
  bool whiten = true;          // advantages whitened over the minibatch (as trlx does in its loss)
  bool freeze_policy = false;  // --value-warmup: the policy term's gradient is zero
};

struct PolicyMinibatchResult {
  PolicyLossTerms terms;    // means over the minibatch's response tokens
  int64_t tokens = 0;       // M
  bool value_only = false;  // Starling's rule (value loss > 1) or --value-warmup: the value only
  std::vector<float> advantages, returns;  // [M] rollout by rollout
  std::vector<float> logps, values;        // [M] the current policy's
};

// The loss of one minibatch, as trlx's loss(): advantages and returns by GAE from the rollouts'
// rewards and old values (whitened over the minibatch when configured), the policy's log-probs
// and values from a training forward, then PolicyLoss. Its gradient, times `scale` (the
// minibatch's share of the optimizer step), is added to the parameters when `backward`. With
// APA (Starling) a minibatch whose value loss exceeds 1 trains the value head only (the fork's
// rule): the policy term is dropped from the loss and its gradient. With `value_step` (a
// separate value model: a [1, D] head, TrainStep::ValueLoss), the values and the value loss's
// gradient are that model's, and the policy's forward gives the log-probs only.
PolicyMinibatchResult PolicyMinibatchLoss(TrainStep& step, std::span<const Rollout* const> rollouts,
                                          const PolicyUpdateConfig& config, double scale,
                                          bool backward = true, TrainStep* value_step = nullptr);

// The reference policy: the initial weights of the trained tensors (copied once) over the
// policy's frozen tensors (shared, not copied). Its log-probs continue the policy's forward
// from the input of the first trained block (trlx's "hydra"): the frozen blocks run once.
class ReferencePolicy {
 public:
  explicit ReferencePolicy(TrainModel& policy);
  const Model& model() const { return *model_; }
  uint64_t copied_bytes() const { return copied_bytes_; }
  uint64_t shared_bytes() const { return shared_bytes_; }
  // Log-probs [N] of b's targets (0 where b.weights is 0) under the reference; `step` must have
  // just run the policy's forward over the same batch.
  void LogProbs(TrainStep& step, const TokenBatch& b, std::span<float> logps);

 private:
  TrainModel& policy_;
  std::vector<std::vector<float>> copies_;
  std::unique_ptr<Model> model_;
  const float* head_ = nullptr;  // [V, D] float32
  uint64_t copied_bytes_ = 0, shared_bytes_ = 0;
  ForwardScratch forward_;
  std::vector<float> hidden_, dhidden_;  // [N, D]
  LossScratch loss_;
};

// Fills old_logps, old_values and ref_logps of each rollout (forward only, `batch` rollouts at
// a time); the values from `value_step`'s model when given.
void ScoreRollouts(TrainStep& step, ReferencePolicy& reference, std::span<Rollout> rollouts,
                   int64_t batch, TrainStep* value_step = nullptr);

// Samples one response per prompt in `prompts` (ids rendered with the generation prompt) with
// the model's current weights: `batch` sessions decoded together (Session::ForwardBatch), each
// with its own sampler seeded seeds[i]; fills prompt/context/response/text/finish and the
// engine's log-probs and entropies.
std::vector<Rollout> GenerateRollouts(const Model& model, const Tokenizer& tokenizer,
                                      std::span<const PolicyPrompt* const> prompts,
                                      std::span<const int64_t> prompt_indices,
                                      std::span<const uint64_t> seeds,
                                      const GenerationOptions& options, int64_t batch);

void RunPolicyTraining(PolicyOptions o);

}  // namespace starling
