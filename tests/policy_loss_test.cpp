// The per-token pieces of policy tuning (src/train/policy_loss.h) against hand-worked values and
// central differences of their own double-precision losses.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "train/policy_loss.h"

namespace starling {
namespace {

TEST(Gae, MatchesHandWorkedValuesAndRewardToGo) {
  const std::vector<float> r = {0.5f, -1.0f, 2.0f}, v = {1.0f, 0.25f, -0.5f};
  std::vector<float> a(3), ret(3);
  GeneralizedAdvantages(r, v, 0.9, 0.8, a, ret);
  // delta = r_t + 0.9 V_{t+1} - V_t: [-0.275, -1.7, 2.5]; A_2 = 2.5, A_1 = -1.7 + 0.72 * 2.5,
  // A_0 = -0.275 + 0.72 A_1.
  EXPECT_NEAR(a[2], 2.5, 1e-6);
  EXPECT_NEAR(a[1], 0.1, 1e-6);
  EXPECT_NEAR(a[0], -0.275 + 0.72 * 0.1, 1e-6);
  EXPECT_NEAR(ret[0], a[0] + 1.0, 1e-6);
  // gamma = lambda = 1: returns are the rewards to go.
  GeneralizedAdvantages(r, v, 1.0, 1.0, a, ret);
  EXPECT_NEAR(ret[0], 1.5, 1e-6);
  EXPECT_NEAR(ret[1], 1.0, 1e-6);
  EXPECT_NEAR(ret[2], 2.0, 1e-6);
}

TEST(Whiten, GivesMeanZeroAndUnbiasedVarianceOne) {
  std::vector<float> x = {1, 2, 3, 4, 10};
  Whiten(x);
  double mean = 0, var = 0;
  for (const float v : x) mean += v;
  mean /= 5;
  for (const float v : x) var += (v - mean) * (v - mean);
  EXPECT_NEAR(mean, 0.0, 1e-6);
  EXPECT_NEAR(var / 4, 1.0, 1e-5);  // 1e-8 in the denominator: 1e-9 relative
  std::vector<float> one = {1};
  EXPECT_THROW(Whiten(one), Error);
}

TEST(KlPenalty, RewardsAndTheAdaptiveController) {
  const std::vector<float> old_lp = {-1.0f, -2.0f}, ref_lp = {-1.5f, -1.0f};
  std::vector<float> r(2);
  PenalizedRewards(old_lp, ref_lp, 0.1, 3.0, r);
  EXPECT_NEAR(r[0], -0.05, 1e-7);
  EXPECT_NEAR(r[1], 0.1 + 3.0, 1e-6);
  KlController fixed{0.05, 0, 10000};
  fixed.Update(100.0, 64);
  EXPECT_EQ(fixed.value, 0.05);
  KlController adaptive{0.05, 6.0, 10000};
  adaptive.Update(12.0, 64);  // error clipped to +0.2
  EXPECT_DOUBLE_EQ(adaptive.value, 0.05 * (1 + 0.2 * 64 / 10000.0));
  adaptive.Update(5.4, 100);  // error -0.1
  EXPECT_NEAR(adaptive.value, 0.05 * (1 + 0.2 * 64 / 10000.0) * (1 - 0.1 * 100 / 10000.0), 1e-15);
}

struct Tokens {
  std::vector<float> logps, values, old_logps, init_logps, old_values, advantages, returns;
  PolicyTokens View() const {
    return {logps, values, old_logps, init_logps, old_values, advantages, returns};
  }
};

Tokens RandomTokens(size_t m, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  Tokens t;
  for (size_t i = 0; i < m; ++i) {
    t.old_logps.push_back(-1.0f - std::abs(n(rng)));
    t.logps.push_back(t.old_logps.back() + 0.3f * n(rng));  // ratios on both sides of the clip
    t.init_logps.push_back(t.old_logps.back() + 0.2f * n(rng));
    t.old_values.push_back(n(rng));
    t.values.push_back(t.old_values.back() + 0.3f * n(rng));
    t.advantages.push_back(n(rng));
    t.returns.push_back(n(rng));
  }
  return t;
}

class PolicyLossTest : public ::testing::TestWithParam<PolicyAlgorithm> {};

TEST_P(PolicyLossTest, GradientsMatchCentralDifferences) {
  std::mt19937 rng(3);
  const size_t m = 64;
  Tokens t = RandomTokens(m, rng);
  PolicyLossConfig c;
  c.algorithm = GetParam();
  c.vf_coef = 0.7;
  std::vector<float> dlogps(m), dvalues(m), unused(m), unused2(m);
  const PolicyLossTerms terms = PolicyLoss(c, t.View(), dlogps, dvalues);
  EXPECT_NEAR(terms.loss, terms.policy_loss + 0.7 * terms.value_loss, 1e-12);
  if (c.algorithm == PolicyAlgorithm::kPpo) {
    EXPECT_GT(terms.clip_fraction, 0.05);  // the data crosses the clip on purpose
    EXPECT_LT(terms.clip_fraction, 0.95);
  }
  EXPECT_GT(terms.value_clip_fraction, 0.0);
  // Central differences over the float inputs actually perturbed (x +- h rounded to float, the
  // step measured): truncation ~h^2 for the exponential, none for the squares; the losses are
  // summed in double. 2e-5 absolute + 1e-5 relative on per-token gradients of up to ~0.6.
  // Kinks (a clip boundary within h) are skipped.
  const float h = 1e-3f;
  for (size_t i = 0; i < m; ++i) {
    for (int which = 0; which < 2; ++which) {
      std::vector<float>& x = which == 0 ? t.logps : t.values;
      const float keep = x[i];
      x[i] = keep + h;
      const double x_up = x[i];
      const PolicyLossTerms up = PolicyLoss(c, t.View(), unused, unused2);
      x[i] = keep - h;
      const double x_down = x[i];
      const PolicyLossTerms down = PolicyLoss(c, t.View(), unused, unused2);
      x[i] = keep;
      if (up.clip_fraction != down.clip_fraction ||
          up.value_clip_fraction != down.value_clip_fraction) {
        continue;
      }
      const double want = (up.loss - down.loss) / (x_up - x_down);
      EXPECT_NEAR(which == 0 ? dlogps[i] : dvalues[i], want, 2e-5 + 1e-5 * std::abs(want))
          << (which == 0 ? "dlogp" : "dvalue") << " " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, PolicyLossTest,
                         ::testing::Values(PolicyAlgorithm::kPpo, PolicyAlgorithm::kApaPaper,
                                           PolicyAlgorithm::kApaStarling));

TEST(PolicyLoss, HandWorkedTokens) {
  // One token: logp -1, old -1.5 (ratio e^0.5 = 1.6487 > 1.2), A = 2: PPO takes the clipped
  // -2 * 1.2 (the larger of -3.297 and -2.4), with no gradient.
  Tokens t{{-1.0f}, {0.5f}, {-1.5f}, {-1.2f}, {0.4f}, {2.0f}, {1.0f}};
  std::vector<float> dl(1), dv(1);
  PolicyLossConfig c;
  PolicyLossTerms r = PolicyLoss(c, t.View(), dl, dv);
  EXPECT_NEAR(r.policy_loss, -2.4, 1e-6);
  EXPECT_EQ(dl[0], 0.0f);
  EXPECT_EQ(r.clip_fraction, 1.0);
  // Value 0.5 within 0.4 +- 0.2: 0.5 (0.5 - 1)^2 = 0.125, d = 0.5 * 2 * (0.5 - 1) = -0.5.
  EXPECT_NEAR(r.value_loss, 0.125, 1e-7);
  EXPECT_NEAR(dv[0], -0.5, 1e-7);
  // APA (paper), adv_coeff 10: (-1 - 20 + 1.2)^2 = 392.04; APA (Starling): (-1 - 2 + 1.5)^2.
  c.algorithm = PolicyAlgorithm::kApaPaper;
  EXPECT_NEAR(PolicyLoss(c, t.View(), dl, dv).policy_loss, 19.8 * 19.8, 1e-4);
  EXPECT_NEAR(dl[0], 2 * -19.8, 1e-4);
  c.algorithm = PolicyAlgorithm::kApaStarling;
  EXPECT_NEAR(PolicyLoss(c, t.View(), dl, dv).policy_loss, 2.25, 1e-6);
  // approx KL against the rollout: (e^0.5 - 1) - 0.5.
  EXPECT_NEAR(r.approx_kl, std::exp(0.5) - 1.5, 1e-6);
}

}  // namespace
}  // namespace starling
