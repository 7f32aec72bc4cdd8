// The training core against independent references: each op's backward and the whole
// model's gradients against complex-step derivatives of naive forwards (tests/train_reference.h),
// the BLAS products against their scalar twins. The PyTorch fixtures are in
// train_fixture_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <complex>
#include <filesystem>
#include <functional>
#include <random>

#include "core/error.h"
#include "kernels/dot.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "model/blocks.h"
#include "tests/train_reference.h"
#include "train/checkpoint.h"
#include "train/dpo_train.h"
#include "train/optimizer.h"
#include "train/parameters.h"
#include "train/policy_loss.h"
#include "train/schedule.h"
#include "train/step.h"

namespace starling {
namespace {

using C = std::complex<double>;
constexpr double kStep = 1e-20;  // complex step: no cancellation, so any tiny step is exact

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

std::vector<C> Complex(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

// |got - want| <= abs + rel * scale for every element, printing the first failure.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double abs,
                 double rel, const std::string& what) {
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], abs + rel * scale) << what << " index " << i;
  }
}

// --- Ops -------------------------------------------------------------------------------------

TEST(Backward, RmsNormMatchesComplexStep) {
  std::mt19937 rng(1);
  const int64_t n = 37;
  const auto x = Random(n, rng), w = Random(n, rng), dy = Random(n, rng);
  std::vector<float> y(n), dx(n, 0.0f), dw(n, 0.0f);
  const float rstd = RmsNorm(x.data(), w.data(), n, 1e-5f, y.data());
  RmsNormBackward(x.data(), w.data(), rstd, dy.data(), n, dx.data(), dw.data());
  // loss = dy . norm(x) w
  auto loss = [&](std::vector<C> xc, std::vector<C> wc) {
    const auto out = reference::Norm(xc, wc, 1, n, 1e-5);
    C s(0);
    for (int64_t i = 0; i < n; ++i) s += C(dy[i]) * out[i];
    return s;
  };
  std::vector<double> want_dx(n), want_dw(n);
  for (int64_t i = 0; i < n; ++i) {
    auto xc = Complex(x);
    xc[i] += C(0, kStep);
    want_dx[i] = loss(xc, Complex(w)).imag() / kStep;
    auto wc = Complex(w);
    wc[i] += C(0, kStep);
    want_dw[i] = loss(Complex(x), wc).imag() / kStep;
  }
  // float32 arithmetic over 37 terms of size ~1: a few 1e-7 relative; 1e-5 of the largest.
  ExpectClose(dx, want_dx, 1e-6, 1e-5, "dx");
  ExpectClose(dw, want_dw, 1e-6, 1e-5, "dw");
}

TEST(Backward, SiluMulMatchesComplexStep) {
  std::mt19937 rng(2);
  const int64_t n = 50;
  const auto g = Random(n, rng, 3.0f), u = Random(n, rng), dy = Random(n, rng);
  std::vector<float> dg(n), du(n);
  SiluMulBackward(g.data(), u.data(), dy.data(), n, dg.data(), du.data());
  std::vector<double> want_dg(n), want_du(n);
  for (int64_t i = 0; i < n; ++i) {
    const C gc(g[i], kStep);
    want_dg[i] = (C(dy[i]) * gc / (C(1) + std::exp(-gc)) * C(u[i])).imag() / kStep;
    const C uc(u[i], kStep);
    want_du[i] = (C(dy[i]) * C(g[i]) / (C(1) + std::exp(-C(g[i]))) * uc).imag() / kStep;
  }
  // Elementwise float32 with ExpFast (1 ulp): a few ulp of each value.
  ExpectClose(dg, want_dg, 1e-6, 1e-6, "dgate");
  ExpectClose(du, want_du, 1e-6, 1e-6, "dup");
}

TEST(Backward, SiluMulAvx2GivesItsTwinsBits) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(9);
  for (int64_t n : {1, 7, 8, 9, 100}) {
    auto g = Random(n, rng, 4.0f);
    g[0] = -95.0f;  // e^-g overflows to +inf: silu 0 and its slope 0 in both
    const auto u = Random(n, rng), dy = Random(n, rng);
    std::vector<float> dg(n), du(n), dg2(n), du2(n);
    SiluMulBackward(g.data(), u.data(), dy.data(), n, dg.data(), du.data());
    SiluMulBackwardAvx2(g.data(), u.data(), dy.data(), n, dg2.data(), du2.data());
    EXPECT_EQ(dg, dg2) << n;
    EXPECT_EQ(du, du2) << n;
  }
}

TEST(Optimizer, AdamWAvx2GivesItsTwinsBits) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(10);
  const AdamWScalars a{0.999f, 0.9f, 0.999f, 1e-8f, 0.0123f, 0.0316f};
  for (int64_t n : {1, 8, 13, 1000}) {
    const auto g = Random(n, rng);
    auto p = Random(n, rng), m = Random(n, rng, 0.1f), v = Random(n, rng, 0.1f);
    for (float& x : v) x = x * x;
    auto p2 = p, m2 = m, v2 = v;
    AdamWRow(a, g.data(), n, p.data(), m.data(), v.data());
    AdamWRowAvx2(a, g.data(), n, p2.data(), m2.data(), v2.data());
    EXPECT_EQ(p, p2) << n;
    EXPECT_EQ(m, m2) << n;
    EXPECT_EQ(v, v2) << n;
  }
}

TEST(Backward, RopeIsTheTransposeOfTheRotationInBothLayouts) {
  std::mt19937 rng(3);
  const int64_t heads = 3, hd = 8;
  std::vector<float> inv(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i)
    inv[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * static_cast<double>(i) / hd));
  for (bool interleaved : {false, true}) {
    for (int64_t pos : {0, 1, 17, 300}) {
      const auto x = Random(heads * hd, rng), dy = Random(heads * hd, rng);
      std::vector<float> dx = dy;
      RopeBackward(dx.data(), heads, hd, hd, pos, inv, interleaved);
      std::vector<double> want(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        auto xc = Complex(x);
        xc[i] += C(0, kStep);
        reference::Rope(xc, 1, heads, hd, {pos}, 10000.0, interleaved);
        C s(0);
        for (size_t j = 0; j < x.size(); ++j) s += C(dy[j]) * xc[j];
        want[i] = s.imag() / kStep;
      }
      ExpectClose(dx, want, 1e-6, 1e-6, interleaved ? "interleaved" : "halves");
    }
  }
}

// One query row's group of heads over keys [first, last] of a sequence, as in
// AttentionBlockBackward; gradients of loss = dout . out w.r.t. q, k, v.
TEST(Backward, AttentionGroupMatchesComplexStepForGqaGroupsAndWindows) {
  std::mt19937 rng(4);
  const int64_t hd = 8, positions = 9;
  for (int64_t group : {1, 2, 4}) {
    for (int64_t first : {0, 3}) {
      const int64_t last = positions - 1, kv_stride = 2 * hd;  // another head's columns between
      const auto q = Random(group * hd, rng), keys = Random(positions * kv_stride, rng),
                 values = Random(positions * kv_stride, rng), dout = Random(group * hd, rng);
      std::vector<float> out(group * hd), lse(group), scores(group * positions);
      AttentionGroup<DType::kF32>(q.data(), hd, group, keys.data(), values.data(), kv_stride, hd,
                                  first, last, scores.data(), out.data(), hd, lse.data());
      std::vector<float> dq(q.size(), 0.0f), dk(keys.size(), 0.0f), dv(values.size(), 0.0f);
      AttentionGroupBackward(q.data(), keys.data(), values.data(), kv_stride, group, hd, first,
                             last, out.data(), lse.data(), dout.data(), scores.data(), dq.data(),
                             dk.data(), dv.data());
      auto loss = [&](const std::vector<C>& qc, const std::vector<C>& kc,
                      const std::vector<C>& vc) {
        C total(0);
        for (int64_t h = 0; h < group; ++h) {
          std::vector<C> s;
          for (int64_t j = first; j <= last; ++j) {
            C dot(0);
            for (int64_t i = 0; i < hd; ++i) dot += qc[h * hd + i] * kc[j * kv_stride + i];
            s.push_back(std::exp(dot / std::sqrt(double(hd))));
          }
          C z(0);
          for (const C& e : s) z += e;
          for (int64_t j = first; j <= last; ++j)
            for (int64_t i = 0; i < hd; ++i)
              total += C(dout[h * hd + i]) * s[j - first] / z * vc[j * kv_stride + i];
        }
        return total;
      };
      auto grad = [&](int which, size_t n) {
        std::vector<double> g(n);
        for (size_t i = 0; i < n; ++i) {
          auto qc = Complex(q), kc = Complex(keys), vc = Complex(values);
          (which == 0 ? qc : which == 1 ? kc : vc)[i] += C(0, kStep);
          g[i] = loss(qc, kc, vc).imag() / kStep;
        }
        return g;
      };
      const std::string what = "group " + std::to_string(group) + " first " + std::to_string(first);
      // Softmax over <= 9 float32 scores and sums of <= 36 products: ~1e-6 relative.
      ExpectClose(dq, grad(0, q.size()), 1e-6, 2e-5, what + " dq");
      ExpectClose(dk, grad(1, keys.size()), 1e-6, 2e-5, what + " dk");
      ExpectClose(dv, grad(2, values.size()), 1e-6, 2e-5, what + " dv");
    }
  }
}

TEST(Backward, AttentionGroupAvx2MatchesItsScalarTwin) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(7);
  for (int64_t hd : {8, 12, 64}) {  // 12: the AVX2 entry falls back to the twin
    for (int64_t group : {1, 2, 4}) {
      const int64_t positions = 40, kv_stride = hd * 3, first = 5, last = positions - 1;
      const auto q = Random(group * hd, rng), keys = Random(positions * kv_stride, rng),
                 values = Random(positions * kv_stride, rng), dout = Random(group * hd, rng);
      std::vector<float> out(group * hd), lse(group), scores(group * positions);
      AttentionGroup<DType::kF32>(q.data(), hd, group, keys.data(), values.data(), kv_stride, hd,
                                  first, last, scores.data(), out.data(), hd, lse.data());
      std::vector<float> grads[2][3];
      for (int impl = 0; impl < 2; ++impl) {
        auto& [dq, dk, dv] = grads[impl];
        dq.assign(q.size(), 0.0f), dk.assign(keys.size(), 0.0f), dv.assign(values.size(), 0.0f);
        (impl == 0 ? AttentionGroupBackward : AttentionGroupBackwardAvx2)(
            q.data(), keys.data(), values.data(), kv_stride, group, hd, first, last, out.data(),
            lse.data(), dout.data(), scores.data(), dq.data(), dk.data(), dv.data());
      }
      // The same exponentials; dots of <= 64 terms summed in another order: ~1e-6 relative.
      for (int i = 0; i < 3; ++i) {
        for (size_t j = 0; j < grads[0][i].size(); ++j) {
          ASSERT_NEAR(grads[1][i][j], grads[0][i][j], 1e-5 + 1e-5 * std::abs(grads[0][i][j]))
              << "hd " << hd << " group " << group << " tensor " << i << " index " << j;
        }
      }
    }
  }
}

TEST(Backward, BlasProductsMatchTheirScalarTwins) {
  std::mt19937 rng(5);
  for (auto [n, in, out] : {std::tuple{1, 1, 1}, {5, 7, 3}, {70, 33, 130}, {129, 64, 65}}) {
    const auto x = Random(n * in, rng), w = Random(out * in, rng), dy = Random(n * out, rng);
    std::vector<float> y(n * out), y_ref(n * out);
    GemmForward(x.data(), w.data(), n, in, out, y.data());
    GemmForwardReference(x.data(), w.data(), n, in, out, y_ref.data());
    std::vector<float> dx(n * in, 1.0f), dx_ref(n * in, 1.0f), dw(out * in, 0.5f),
        dw_ref(out * in, 0.5f);
    LinearBackward(x.data(), w.data(), dy.data(), n, in, out, dx.data(), true, dw.data());
    LinearBackwardReference(x.data(), w.data(), dy.data(), n, in, out, dx_ref.data(), true,
                            dw_ref.data());
    // Sums of up to 130 products of N(0,1) values in another order (BLAS blocks and fmas):
    // differences ~ sqrt(K) * 2^-24 * |terms|; 1e-5 * K absolute leaves a wide margin.
    const auto tol = [](int64_t k) { return 1e-5 * static_cast<double>(k); };
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], y_ref[i], tol(in)) << i;
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i], dx_ref[i], tol(out)) << i;
    for (size_t i = 0; i < dw.size(); ++i) ASSERT_NEAR(dw[i], dw_ref[i], tol(n)) << i;
  }
}

// --- The whole model -------------------------------------------------------------------------

struct ModelCase {
  const char* name;
  int32_t kv_heads;
  int32_t window;
  bool tied;
  bool interleaved;
  bool masked;
  int32_t unfreeze;  // -1: all
};

void PrintTo(const ModelCase& mc, std::ostream* os) {
  *os << mc.name;
}

ModelConfig SmallConfig(const ModelCase& mc) {
  ModelConfig c;
  c.architecture = "MistralForCausalLM";
  c.vocab_size = 61, c.hidden_size = 16, c.intermediate_size = 24, c.num_layers = 2;
  c.num_heads = 4, c.num_kv_heads = mc.kv_heads, c.head_dim = 4, c.rope_dim = 4;
  c.sliding_window = mc.window, c.max_position_embeddings = 64;
  c.tie_word_embeddings = mc.tied;
  c.rope_layout = mc.interleaved ? RopeLayout::kInterleaved : RopeLayout::kHalves;
  c.eos_token_ids = {2};
  return c;
}

// The reference's weights: every tensor the model has, parameters and frozen ones alike.
reference::Weights<C> ReferenceWeights(const TrainModel& tm) {
  reference::Weights<C> weights;
  for (const TensorRef& t : tm.files().tensors) {
    const auto* p = static_cast<const float*>(t.data);
    weights[t.name] = std::vector<C>(p, p + t.size_bytes / sizeof(float));
  }
  for (const Parameter& p : tm.parameters()) weights[p.spec.name] = Complex(p.value);
  return weights;
}

// Six random elements of every parameter's gradient, and `embedding_element` of the
// embedding's (a row the batch uses: the others are exactly zero), against the complex-step
// derivative of the reference `loss` at `weights`.
void ExpectGradientsMatchComplexStep(const TrainModel& tm, const reference::Weights<C>& weights,
                                     const std::function<C(const reference::Weights<C>&)>& loss,
                                     size_t embedding_element, std::mt19937& rng,
                                     const std::string& what) {
  for (const Parameter& p : tm.parameters()) {
    std::vector<size_t> picks;
    for (int i = 0; i < 6; ++i) picks.push_back(rng() % p.value.size());
    if (p.spec.role == TensorRole::kEmbedding) picks.push_back(embedding_element);
    double scale = 0;
    for (float g : p.grad) scale = std::max(scale, double{std::abs(g)});
    for (size_t i : picks) {
      auto w = weights;
      w[p.spec.name][i] += C(0, kStep);
      const double want = loss(w).imag() / kStep;
      // float32 forward and backward through 2 blocks: errors of ~1e-6 of the tensor's
      // largest gradient; 1e-4 of it leaves a margin and still catches any wrong term.
      EXPECT_NEAR(p.grad[i], want, 1e-7 + 1e-4 * scale)
          << what << " " << p.spec.name << "[" << i << "]";
    }
  }
}

class ModelGradientTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelGradientTest, EveryTensorMatchesComplexStep) {
  const ModelCase mc = GetParam();
  const ModelConfig c = SmallConfig(mc);
  TrainModel tm(RandomModelFiles(c, 11), mc.unfreeze);
  std::mt19937 rng(6);
  TokenBatch b;
  b.lengths = {7, 5, 8};
  for (int64_t len : b.lengths) {
    for (int64_t i = 0; i < len; ++i) {
      b.inputs.push_back(static_cast<int32_t>(rng() % 61));
      b.targets.push_back(static_cast<int32_t>(rng() % 61));
      b.weights.push_back(mc.masked ? static_cast<float>(rng() % 3) * 0.75f : 1.0f);
    }
  }
  int64_t trained = 0;
  for (float w : b.weights) trained += w != 0.0f;
  b.normalizer = static_cast<double>(trained);
  TrainStep step(tm);
  const double loss = step.LanguageModelLoss(b);

  const reference::Weights<C> weights = ReferenceWeights(tm);
  auto reference_loss = [&](const reference::Weights<C>& w) {
    return reference::LanguageModelLoss(c, w, b.lengths, b.inputs, b.targets, b.weights,
                                        b.normalizer);
  };
  const double want_loss = reference_loss(weights).real();
  // A loss of ~4 from float32 sums over 16-61 terms: ~1e-6 relative.
  EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);
  ExpectGradientsMatchComplexStep(tm, weights, reference_loss,
                                  static_cast<size_t>(b.inputs[3] * 16 + 5), rng, mc.name);
  if (mc.unfreeze >= 0) {  // frozen blocks have no parameters at all
    for (const Parameter& p : tm.parameters()) {
      EXPECT_TRUE(p.spec.layer < 0 || p.spec.layer >= c.num_layers - mc.unfreeze) << p.spec.name;
      EXPECT_NE(p.spec.role, TensorRole::kEmbedding);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ModelGradientTest,
    ::testing::Values(ModelCase{"gqa2", 2, 0, false, false, false, -1},
                      ModelCase{"mha_tied_interleaved_masked", 4, 0, true, true, true, -1},
                      ModelCase{"gqa4_window3", 1, 3, false, false, false, -1},
                      ModelCase{"window_larger_than_t", 2, 64, false, false, true, -1},
                      ModelCase{"unfreeze_top_block", 2, 0, false, false, false, 1},
                      ModelCase{"head_only", 2, 0, false, false, false, 0}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

// --- Reward models: ranking losses with shared prompts ----------------------------------------

TEST(RankingLoss, TwoAnswersKWiseEqualsPairwiseEqualsLogistic) {
  const std::vector<float> r = {0.7f, -0.4f};
  std::vector<float> gk(2), gp(2);
  const double kwise = RankingLoss(RankingLossKind::kKWise, r, 0.0, 1.0, gk);
  const double pairwise = RankingLoss(RankingLossKind::kPairwise, r, 0.0, 1.0, gp);
  const double d = static_cast<double>(r[0]) - r[1];
  // -log sigmoid(d), in double: both agree to double rounding.
  EXPECT_NEAR(kwise, std::log1p(std::exp(-d)), 1e-12);
  EXPECT_NEAR(pairwise, std::log1p(std::exp(-d)), 1e-12);
  EXPECT_NEAR(gk[0], -1.0 / (1.0 + std::exp(d)), 1e-7);  // float32 output
  EXPECT_EQ(gk, gp);
  EXPECT_THROW(RankingLoss(RankingLossKind::kKWise, std::vector<float>{1.0f}, 0.0, 1.0, gk), Error);
}

struct RewardCase {
  const char* name;
  int32_t window;
  bool kwise;
  double zero_sum;
  int32_t unfreeze;
};

void PrintTo(const RewardCase& rc, std::ostream* os) {
  *os << rc.name;
}

class RewardGradientTest : public ::testing::TestWithParam<RewardCase> {};

// Two prompts: the first's three answers continue its shared 5-token prefix; the second has no
// shared prefix (its two answers are sequences of their own). The reference runs each whole
// (prompt, answer) sequence alone, so it checks the prefix sharing as well as the loss.
TEST_P(RewardGradientTest, EveryTensorMatchesComplexStepOfUnsharedSequences) {
  const RewardCase rc = GetParam();
  ModelConfig c = SmallConfig({"", 2, rc.window, false, false, false, -1});
  c.head = ModelHead::kReward;
  TrainModel tm(RandomModelFiles(c, 21), rc.unfreeze);
  std::mt19937 rng(9);
  auto tokens = [&](int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(static_cast<int32_t>(rng() % 61));
    return t;
  };
  const std::vector<int32_t> prompt = tokens(5);
  const std::vector<std::vector<int32_t>> answers = {tokens(2), tokens(4), tokens(1), tokens(4),
                                                     tokens(6)};
  RankingBatch b;
  b.lengths = {5, 2, 4, 1, 4, 6};
  b.prefixes = {-1, 0, 0, 0, -1, -1};
  b.inputs = prompt;
  for (const auto& a : answers) {
    b.inputs.insert(b.inputs.end(), a.begin(), a.end());
  }
  b.score_rows = {6, 10, 11, 15, 21};
  b.answers = {3, 2};
  b.normalizer = 2;
  std::vector<std::vector<int32_t>> whole;
  for (int i = 0; i < 3; ++i) {
    whole.push_back(prompt);
    whole.back().insert(whole.back().end(), answers[i].begin(), answers[i].end());
  }
  whole.push_back(answers[3]);
  whole.push_back(answers[4]);
  const RankingLossOptions options{rc.kwise ? RankingLossKind::kKWise : RankingLossKind::kPairwise,
                                   rc.zero_sum};
  TrainStep step(tm);
  std::vector<float> rewards(5);
  const double loss = step.RankingLoss(b, options, true, rewards);

  const reference::Weights<C> weights = ReferenceWeights(tm);
  auto reference_loss = [&](const reference::Weights<C>& w) {
    return reference::RankingLoss(c, w, whole, b.answers, rc.kwise, rc.zero_sum, b.normalizer);
  };
  // A loss of ~0.7 from float32 forwards (the shared rows' attention merged from two parts):
  // ~1e-6 relative.
  EXPECT_NEAR(loss, reference_loss(weights).real(), 1e-5);
  ExpectGradientsMatchComplexStep(tm, weights, reference_loss,
                                  static_cast<size_t>(prompt[2] * 16 + 3), rng, rc.name);
}

INSTANTIATE_TEST_SUITE_P(Cases, RewardGradientTest,
                         ::testing::Values(RewardCase{"kwise", 0, true, 0.0, -1},
                                           RewardCase{"pairwise_zero_sum", 0, false, 0.05, -1},
                                           RewardCase{"kwise_window3_across_the_prefix", 3, true,
                                                      0.0, -1},
                                           RewardCase{"kwise_window6_zero_sum", 6, true, 0.1, -1},
                                           RewardCase{"pairwise_top_block", 0, false, 0.0, 1}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// --- DPO: a loss of the targets' log-probs, chosen and rejected sharing their prompt --------

TEST(DpoLoss, MatchesTheFormulaAndItsDerivative) {
  double dpw = 0, dpl = 0;
  // Policy = reference: z = 0, loss ln 2, gradients -+beta/2.
  EXPECT_DOUBLE_EQ(DpoLoss(0.1, -5, -5, -7, -7, &dpw, &dpl), std::log(2.0));
  EXPECT_DOUBLE_EQ(dpw, -0.05);
  EXPECT_DOUBLE_EQ(dpl, 0.05);
  const double z = 0.5 * ((-3.0 - -4.0) - (-9.0 - -6.0));  // 2
  EXPECT_NEAR(DpoLoss(0.5, -3, -4, -9, -6, &dpw, &dpl), std::log1p(std::exp(-z)), 1e-15);
  const double h = 1e-6;  // central difference of the double formula: ~1e-10 error
  double unused = 0;
  EXPECT_NEAR(dpw,
              (DpoLoss(0.5, -3 + h, -4, -9, -6, &unused, &unused) -
               DpoLoss(0.5, -3 - h, -4, -9, -6, &unused, &unused)) /
                  (2 * h),
              1e-8);
  // Far from zero: no overflow.
  EXPECT_NEAR(DpoLoss(1.0, 0, 0, 800, 0, &dpw, &dpl), 800.0, 1e-9);
  EXPECT_NEAR(dpw, -1.0, 1e-12);
}

class DpoGradientTest : public ::testing::TestWithParam<int32_t> {};

// Two pairs: the first's answers share a 6-token prompt (laid once), the second's differ from
// the first token (no sharing); scored tokens only at the answers' ends. The reference runs
// every sequence alone.
TEST_P(DpoGradientTest, EveryTensorMatchesComplexStepOfUnsharedSequences) {
  const int32_t window = GetParam();
  const ModelConfig c = SmallConfig({"", 2, window, false, false, false, -1});
  TrainModel tm(RandomModelFiles(c, 31), -1);
  std::mt19937 rng(12);
  auto tokens = [&](int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(static_cast<int32_t>(rng() % 61));
    return t;
  };
  auto example = [](std::vector<int32_t> ids, int scored) {
    ChatExample e;
    e.ids = std::move(ids);
    e.weights.assign(e.ids.size() - 1, 0.0f);
    std::fill(e.weights.end() - scored, e.weights.end(), 1.0f);
    return e;
  };
  const std::vector<int32_t> prompt = tokens(6);
  auto join = [&](std::vector<int32_t> a) {
    a.insert(a.begin(), prompt.begin(), prompt.end());
    return a;
  };
  std::vector<DpoPair> pairs(2);
  pairs[0].chosen = example(join(tokens(4)), 3);
  pairs[0].rejected = example(join(tokens(2)), 2);
  pairs[1].chosen = example(tokens(7), 4);
  pairs[1].rejected = example(tokens(5), 2);
  pairs[1].rejected.ids[0] = (pairs[1].chosen.ids[0] + 1) % 61;  // nothing in common
  const double beta = 0.7;
  const double refs[4] = {-9.5, -7.25, -11.0, -6.5};
  pairs[0].reference_chosen = refs[0], pairs[0].reference_rejected = refs[1];
  pairs[1].reference_chosen = refs[2], pairs[1].reference_rejected = refs[3];
  std::vector<std::pair<int64_t, int64_t>> rows;
  const TokenBatch b = MakePairBatch({&pairs[0], &pairs[1]}, &rows);
  // The first pair shares 5 rows (inputs prompt[0..4], targets prompt[1..5]); the second none.
  EXPECT_EQ(b.lengths, (std::vector<int64_t>{5, 4, 2, 6, 4}));
  EXPECT_EQ(b.prefixes, (std::vector<int64_t>{-1, 0, 0, -1, -1}));

  TrainStep step(tm);
  const double loss = step.LogProbLoss(b, [&](std::span<const float> logps, std::span<float> dl) {
    double total = 0;
    for (size_t p = 0; p < 2; ++p) {
      double sums[2];
      for (size_t s = 0; s < 2; ++s) {
        sums[s] = 0;
        for (int64_t i = rows[2 * p + s].first; i < rows[2 * p + s].second; ++i) {
          if (b.weights[i] != 0.0f) sums[s] += logps[i];
        }
      }
      double dpw = 0, dpl = 0;
      total += DpoLoss(beta, sums[0], refs[2 * p], sums[1], refs[2 * p + 1], &dpw, &dpl);
      for (size_t s = 0; s < 2; ++s) {
        for (int64_t i = rows[2 * p + s].first; i < rows[2 * p + s].second; ++i) {
          if (b.weights[i] != 0.0f) dl[i] = static_cast<float>((s == 0 ? dpw : dpl) / 2);
        }
      }
    }
    return total / 2;
  });

  const reference::Weights<C> weights = ReferenceWeights(tm);
  auto reference_loss = [&](const reference::Weights<C>& w) {
    C total(0);
    for (size_t p = 0; p < 2; ++p) {
      C sums[2];
      for (size_t s = 0; s < 2; ++s) {
        const ChatExample& e = s == 0 ? pairs[p].chosen : pairs[p].rejected;
        const std::vector<int32_t> in(e.ids.begin(), e.ids.end() - 1);
        const std::vector<int32_t> out(e.ids.begin() + 1, e.ids.end());
        const auto lp = reference::TargetLogProbs(c, w, {static_cast<int64_t>(in.size())}, in, out);
        for (size_t i = 0; i < lp.size(); ++i) {
          if (e.weights[i] != 0.0f) sums[s] += lp[i];
        }
      }
      const C z = C(beta) * ((sums[0] - C(refs[2 * p])) - (sums[1] - C(refs[2 * p + 1])));
      total += std::log(C(1) + std::exp(-z));
    }
    return total / C(2);
  };
  // Losses of ~1-10 from float32 forwards: ~1e-6 relative.
  EXPECT_NEAR(loss, reference_loss(weights).real(), 1e-5 * std::max(1.0, loss));
  ExpectGradientsMatchComplexStep(tm, weights, reference_loss,
                                  static_cast<size_t>(prompt[1] * 16 + 2), rng, "dpo");
}

INSTANTIATE_TEST_SUITE_P(Windows, DpoGradientTest, ::testing::Values(0, 4));

// --- Policy tuning: log-probs and a value head through one step ------------------------------

// Two responses (rows 3.. of each sequence scored): the APA (paper) loss plus the value loss
// through TrainStep::PolicyLoss, against complex-step derivatives of a reference that computes
// the log-probs and the values from scratch.
TEST(PolicyStep, LogProbsAndValuesMatchComplexStep) {
  ModelConfig c = SmallConfig({"", 2, 0, false, false, false, -1});
  c.value_head = true;
  TrainModel tm(RandomModelFiles(c, 41), -1);
  ASSERT_NE(tm.value_weights(), nullptr);
  std::mt19937 rng(13);
  TokenBatch b;
  b.lengths = {7, 9};
  for (int i = 0; i < 16; ++i) {
    b.inputs.push_back(static_cast<int32_t>(rng() % 61));
    b.targets.push_back(static_cast<int32_t>(rng() % 61));
    const int pos = i < 7 ? i : i - 7;
    b.weights.push_back(pos >= 3 ? 1.0f : 0.0f);  // the responses: rows 3.. of each
  }
  std::vector<size_t> scored;
  for (size_t i = 0; i < 16; ++i) {
    if (b.weights[i] != 0.0f) scored.push_back(i);
  }
  const size_t m = scored.size();
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> old_lp(m), init_lp(m), old_v(m), adv(m), ret(m);
  for (size_t k = 0; k < m; ++k) {
    old_lp[k] = -4.0f + normal(rng), init_lp[k] = -4.0f + normal(rng);
    old_v[k] = normal(rng), adv[k] = 0.1f * normal(rng), ret[k] = normal(rng);
  }
  PolicyLossConfig config;
  config.algorithm = PolicyAlgorithm::kApaPaper;
  config.cliprange_value = 0;  // smooth, for the complex step
  config.vf_coef = 0.5;
  config.adv_coeff = 2.0;
  TrainStep step(tm);
  const double loss =
      step.PolicyLoss(b, [&](std::span<const float> logps, std::span<const float> values,
                             std::span<float> dlogps, std::span<float> dvalues) {
        std::vector<float> lp(m), v(m), dl(m), dv(m);
        for (size_t k = 0; k < m; ++k) lp[k] = logps[scored[k]], v[k] = values[scored[k]];
        const PolicyLossTerms t =
            starling::PolicyLoss(config, {lp, v, old_lp, init_lp, old_v, adv, ret}, dl, dv);
        for (size_t k = 0; k < m; ++k) dlogps[scored[k]] = dl[k], dvalues[scored[k]] = dv[k];
        return t.loss;
      });

  const reference::Weights<C> weights = ReferenceWeights(tm);
  auto reference_loss = [&](const reference::Weights<C>& w) {
    const auto lp = reference::TargetLogProbs(c, w, b.lengths, b.inputs, b.targets);
    const auto h = reference::Hidden(c, w, b.lengths, b.inputs);
    C policy(0), value(0);
    for (size_t k = 0; k < m; ++k) {
      C v(0);
      for (int64_t i = 0; i < 16; ++i) v += w.at("value_head.weight")[i] * h[scored[k] * 16 + i];
      const C e = lp[scored[k]] - C(2.0 * adv[k]) - C(init_lp[k]);
      policy += e * e;
      value += C(0.5) * (v - C(ret[k])) * (v - C(ret[k]));
    }
    return (policy + C(0.5) * value) / C(static_cast<double>(m));
  };
  // A loss of ~1-10 from float32 forwards: ~1e-6 relative.
  EXPECT_NEAR(loss, reference_loss(weights).real(), 1e-5 * std::max(1.0, loss));
  ExpectGradientsMatchComplexStep(tm, weights, reference_loss,
                                  static_cast<size_t>(b.inputs[2] * 16 + 1), rng, "policy");
}

TEST(PolicyStep, AValueHeadIsSavedBesideTheModelAndInferenceIgnoresIt) {
  ModelConfig c = SmallConfig({"", 2, 0, false, false, false, -1});
  TrainModel tm(WithValueHead(RandomModelFiles(c, 5)), -1);
  ASSERT_NE(tm.value_weights(), nullptr);
  EXPECT_EQ(tm.value_weights()[0], 0.0f);  // a fresh value head starts at zero
  for (Parameter& p : tm.parameters()) {
    if (p.spec.role == TensorRole::kValue) p.value[3] = 0.25f;
  }
  const std::string dir = ::testing::TempDir() + "/value_head_" + std::to_string(::getpid());
  SaveHuggingFace(tm, dir, "");
  const Model loaded = Model::Load(dir);  // config.json has no value head: a plain LM
  EXPECT_FALSE(loaded.config().value_head);
  TrainModel again(WithValueHead(OpenModelFiles(dir)), -1);
  LoadParameters(again, dir + "/model.safetensors");  // resume reads the value head back
  EXPECT_EQ(again.value_weights()[3], 0.25f);
  std::filesystem::remove_all(dir);
}

TEST(Training, RecomputingActivationsGivesTheSameBits) {
  const ModelConfig c = SmallConfig({"", 2, 3, false, false, true, -1});
  TokenBatch b;
  b.lengths = {9, 4};
  for (int i = 0; i < 13; ++i) {
    b.inputs.push_back(i * 7 % 61), b.targets.push_back(i * 5 % 61), b.weights.push_back(1.0f);
  }
  b.normalizer = 13;
  TrainModel saved(RandomModelFiles(c, 3), -1), recomputed(RandomModelFiles(c, 3), -1);
  TrainStep a(saved), r(recomputed, /*recompute=*/true);
  EXPECT_EQ(a.LanguageModelLoss(b), r.LanguageModelLoss(b));
  for (size_t i = 0; i < saved.parameters().size(); ++i) {
    EXPECT_EQ(saved.parameters()[i].grad, recomputed.parameters()[i].grad)
        << saved.parameters()[i].spec.name;
  }
}

TEST(Training, UnfreezeBeyondTheLayerCountIsAnError) {
  const ModelConfig c = SmallConfig({"", 2, 0, false, false, false, -1});
  EXPECT_THROW(TrainModel(RandomModelFiles(c, 1), 3), Error);
  EXPECT_THROW(TrainModel(RandomModelFiles(c, 1), -2), Error);
}

TEST(Optimizer, AdamWMatchesTorchsFormulaInDouble) {
  // One parameter of 3 elements, two steps, against the update written out in double.
  ModelConfig c = SmallConfig({"", 2, 0, false, false, false, -1});
  TrainModel tm(RandomModelFiles(c, 2), -1);
  Parameter& p = tm.parameters()[1];  // layer 0's input norm: no decay
  Parameter& w = tm.parameters()[2];  // q_proj: decayed
  AdamWConfig cfg;
  cfg.weight_decay = 0.1f;
  std::vector<double> pv(p.value.begin(), p.value.end()), wv(w.value.begin(), w.value.end());
  std::vector<double> pm(pv.size()), pvv(pv.size()), wm(wv.size()), wvv(wv.size());
  std::mt19937 rng(11);
  for (int step = 1; step <= 2; ++step) {
    for (auto* q : {&p, &w}) q->grad = Random(q->value.size(), rng);
    AdamWStep(tm.parameters(), step, 0.01, cfg);
    auto update = [&](std::vector<double>& x, std::vector<double>& m, std::vector<double>& v,
                      const std::vector<float>& g, double wd) {
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] *= 1 - 0.01 * wd;
        m[i] = 0.9 * m[i] + 0.1 * g[i];
        v[i] = 0.999 * v[i] + 0.001 * double{g[i]} * g[i];
        x[i] -= 0.01 / (1 - std::pow(0.9, step)) * m[i] /
                (std::sqrt(v[i]) / std::sqrt(1 - std::pow(0.999, step)) + 1e-8);
      }
    };
    update(pv, pm, pvv, p.grad, 0.0);
    update(wv, wm, wvv, w.grad, 0.1);
    // float32 arithmetic on values of size ~1: a few ulp.
    for (size_t i = 0; i < pv.size(); ++i) ASSERT_NEAR(p.value[i], pv[i], 1e-6) << i;
    for (size_t i = 0; i < wv.size(); ++i) ASSERT_NEAR(w.value[i], wv[i], 1e-6) << i;
  }
}

TEST(Schedule, MatchesHuggingFaceFormulas) {
  // get_scheduler(name, num_warmup_steps=10, num_training_steps=110) lr_lambda, times lr 1e-3,
  // written out: warmup step / 10; linear (110 - step) / 100; cosine 0.5 (1 + cos(pi p)).
  LrScheduleConfig c{LrSchedule::kLinear, 1e-3, 0.0, 10, 110};
  for (int step : {0, 1, 5, 9}) EXPECT_DOUBLE_EQ(LearningRate(c, step), 1e-3 * step / 10.0);
  for (int step : {10, 11, 60, 109, 110, 200}) {
    EXPECT_DOUBLE_EQ(LearningRate(c, step), 1e-3 * std::max(0.0, (110.0 - step) / 100.0)) << step;
  }
  c.kind = LrSchedule::kCosine;
  for (int step : {10, 35, 60, 85, 110}) {
    const double p = (step - 10) / 100.0;
    EXPECT_NEAR(LearningRate(c, step), 1e-3 * 0.5 * (1 + std::cos(M_PI * p)), 1e-18) << step;
  }
  c.min_lr = 1e-4;  // linear and cosine end at --min-lr instead of 0
  EXPECT_DOUBLE_EQ(LearningRate(c, 110), 1e-4);
  EXPECT_DOUBLE_EQ(LearningRate(c, 60), 1e-4 + 0.9e-3 * 0.5);
  c.kind = LrSchedule::kConstant;
  EXPECT_DOUBLE_EQ(LearningRate(c, 5), 0.5e-3);
  EXPECT_DOUBLE_EQ(LearningRate(c, 1000), 1e-3);
  EXPECT_THROW(LrScheduleFromName("exponential"), Error);
}

}  // namespace
}  // namespace starling
