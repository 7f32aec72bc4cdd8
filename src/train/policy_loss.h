// The per-token pieces of policy tuning (issue 15): generalized advantage estimation, whitening,
// the KL-penalised token rewards and the KL controllers, and the losses of PPO (clipped
// surrogate, as trlx and TRL define it) and of APA (Advantage-Induced Policy Alignment, Zhu et
// al. 2023) in the paper's and the Starling trlx fork's variants. Pure functions over one
// minibatch's response tokens, each returning its gradient; the rollout loop that feeds them is
// not built yet.
#pragma once

#include <cstdint>
#include <span>

namespace starling {

// GAE over one response of T tokens (Schulman et al. 2016, as trlx computes it):
//   delta_t = r_t + gamma V_{t+1} - V_t  (V_T = 0),  A_t = delta_t + gamma lambda A_{t+1},
//   returns_t = A_t + V_t.
void GeneralizedAdvantages(std::span<const float> rewards, std::span<const float> values,
                           double gamma, double lambda, std::span<float> advantages,
                           std::span<float> returns);

// x = (x - mean) / sqrt(var + 1e-8) with torch.var's unbiased variance (trlx's whiten).
void Whiten(std::span<float> x);

// Per-token rewards of one response: -kl_coef (log pi_old - log pi_ref) at every token, plus
// the reward model's score at the last.
void PenalizedRewards(std::span<const float> old_logps, std::span<const float> ref_logps,
                      double kl_coef, double score, std::span<float> rewards);

// Ziegler et al.'s adaptive KL coefficient (trlx's AdaptiveKLController): after a batch of
// n_steps with mean KL `kl`, value *= 1 + clip(kl / target - 1, -0.2, 0.2) n_steps / horizon.
// A target of 0 keeps the value fixed.
struct KlController {
  double value = 0.01;
  double target = 0;  // 0: fixed
  double horizon = 10000;
  void Update(double kl, int64_t n_steps);
};

enum class PolicyAlgorithm { kPpo, kApaPaper, kApaStarling };

struct PolicyLossConfig {
  PolicyAlgorithm algorithm = PolicyAlgorithm::kPpo;
  double cliprange = 0.2;        // PPO's ratio clip
  double cliprange_value = 0.2;  // value clip around the rollout's values (0: unclipped)
  double vf_coef = 1.0;          // the value loss's weight
  double adv_coeff = 10.0;       // APA (paper): 1/lambda
};

// One minibatch's M response tokens, flattened: the current policy's log-probs and values, and
// the rollout's (old) log-probs, the initial policy's, the rollout's values, the advantages and
// the returns.
struct PolicyTokens {
  std::span<const float> logps, values;
  std::span<const float> old_logps, init_logps, old_values, advantages, returns;
};

struct PolicyLossTerms {
  double loss = 0, policy_loss = 0, value_loss = 0;
  double clip_fraction = 0;        // PPO: tokens whose clipped term was taken
  double value_clip_fraction = 0;  // tokens whose clipped value term was taken
  double approx_kl = 0;            // mean of (ratio - 1) - log ratio against the rollout
};

// With m = the number of tokens (every mean is over them):
//   value loss: 0.5 mean max((V - R)^2, (clip(V, V_old +- cliprange_value) - R)^2), or
//     0.5 mean (V - R)^2 with cliprange_value 0;
//   PPO: mean max(-A ratio, -A clip(ratio, 1 +- cliprange)), ratio = e^(logp - logp_old);
//   APA (paper): mean (logp - adv_coeff A - logp_init)^2;
//   APA (Starling): mean (logp - A - logp_old)^2;
//   loss = policy + vf_coef value.
// Writes d loss / d logps into dlogps[M] and d loss / d values into dvalues[M].
PolicyLossTerms PolicyLoss(const PolicyLossConfig& c, const PolicyTokens& t,
                           std::span<float> dlogps, std::span<float> dvalues);

}  // namespace starling
