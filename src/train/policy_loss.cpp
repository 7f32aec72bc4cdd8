#include "train/policy_loss.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace starling {

void GeneralizedAdvantages(std::span<const float> rewards, std::span<const float> values,
                           double gamma, double lambda, std::span<float> advantages,
                           std::span<float> returns) {
  const size_t n = rewards.size();
  if (values.size() != n || advantages.size() != n || returns.size() != n) {
    Fail("GAE: ", n, " rewards but ", values.size(), " values");
  }
  double next_advantage = 0.0;
  for (size_t i = n; i-- > 0;) {
    const double next_value = i + 1 < n ? values[i + 1] : 0.0;
    const double delta = rewards[i] + gamma * next_value - values[i];
    next_advantage = delta + gamma * lambda * next_advantage;
    advantages[i] = static_cast<float>(next_advantage);
    returns[i] = static_cast<float>(next_advantage + values[i]);
  }
}

void Whiten(std::span<float> x) {
  const auto n = static_cast<double>(x.size());
  if (x.size() < 2) Fail("whitening needs at least 2 values, not ", x.size());
  double mean = 0;
  for (const float v : x) mean += v;
  mean /= n;
  double var = 0;
  for (const float v : x) var += (v - mean) * (v - mean);
  var /= n - 1;  // unbiased, as torch.var
  const double scale = 1.0 / std::sqrt(var + 1e-8);
  for (float& v : x) v = static_cast<float>((v - mean) * scale);
}

void PenalizedRewards(std::span<const float> old_logps, std::span<const float> ref_logps,
                      double kl_coef, double score, std::span<float> rewards) {
  const size_t n = old_logps.size();
  if (n == 0 || ref_logps.size() != n || rewards.size() != n) {
    Fail("rewards of a response of ", n, " tokens with ", ref_logps.size(), " reference log-probs");
  }
  for (size_t i = 0; i < n; ++i) {
    rewards[i] = static_cast<float>(-kl_coef * (double{old_logps[i]} - ref_logps[i]));
  }
  rewards[n - 1] = static_cast<float>(rewards[n - 1] + score);
}

void KlController::Update(double kl, int64_t n_steps) {
  if (target <= 0) return;
  const double error = std::clamp(kl / target - 1.0, -0.2, 0.2);
  value *= 1.0 + error * static_cast<double>(n_steps) / horizon;
}

PolicyLossTerms PolicyLoss(const PolicyLossConfig& c, const PolicyTokens& t,
                           std::span<float> dlogps, std::span<float> dvalues) {
  const size_t m = t.logps.size();
  for (const auto* s :
       {&t.values, &t.old_logps, &t.init_logps, &t.old_values, &t.advantages, &t.returns}) {
    if (s->size() != m) Fail("policy loss: ", m, " tokens but a span of ", s->size());
  }
  if (dlogps.size() != m || dvalues.size() != m) Fail("policy loss: gradient spans of ", m);
  if (m == 0) Fail("policy loss over no tokens");
  const double inv = 1.0 / static_cast<double>(m);
  PolicyLossTerms out;
  int64_t clipped = 0, value_clipped = 0;
  for (size_t i = 0; i < m; ++i) {
    const double logp = t.logps[i], old = t.old_logps[i], a = t.advantages[i];
    // Value.
    const double v = t.values[i], r = t.returns[i];
    double value_term = (v - r) * (v - r), dv = 2 * (v - r);
    if (c.cliprange_value > 0) {
      const double lo = t.old_values[i] - c.cliprange_value;
      const double hi = t.old_values[i] + c.cliprange_value;
      const double vc = std::clamp(v, lo, hi);
      const double clipped_term = (vc - r) * (vc - r);
      if (clipped_term > value_term) {
        value_term = clipped_term;
        dv = v > lo && v < hi ? 2 * (vc - r) : 0.0;  // flat outside the clip range
        ++value_clipped;
      }
    }
    out.value_loss += 0.5 * value_term * inv;
    dvalues[i] = static_cast<float>(c.vf_coef * 0.5 * dv * inv);
    // Policy.
    const double log_ratio = logp - old;
    const double ratio = std::exp(log_ratio);
    out.approx_kl += ((ratio - 1) - log_ratio) * inv;
    double term = 0, dlogp = 0;
    switch (c.algorithm) {
      case PolicyAlgorithm::kPpo: {
        const double unclipped = -a * ratio;
        const double clipped_ratio = std::clamp(ratio, 1 - c.cliprange, 1 + c.cliprange);
        const double clipped_term = -a * clipped_ratio;
        if (clipped_term > unclipped) {
          term = clipped_term;  // flat in logp (the ratio is clamped)
          ++clipped;
        } else {
          term = unclipped;
          dlogp = -a * ratio;
        }
        break;
      }
      case PolicyAlgorithm::kApaPaper: {
        const double e = logp - c.adv_coeff * a - t.init_logps[i];
        term = e * e;
        dlogp = 2 * e;
        break;
      }
      case PolicyAlgorithm::kApaStarling: {
        const double e = logp - a - old;
        term = e * e;
        dlogp = 2 * e;
        break;
      }
    }
    out.policy_loss += term * inv;
    dlogps[i] = static_cast<float>(dlogp * inv);
  }
  out.loss = out.policy_loss + c.vf_coef * out.value_loss;
  out.clip_fraction = static_cast<double>(clipped) * inv;
  out.value_clip_fraction = static_cast<double>(value_clipped) * inv;
  return out;
}

}  // namespace starling
