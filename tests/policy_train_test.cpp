// The policy-tuning loop's pieces (issue 15), in process: the log-probs the loss uses (the
// training forward) equal the engine's at sampling time; the reference policy that shares the
// frozen blocks ("hydra") gives the initial model's log-probs after the policy has moved; the
// rollout batch's layout; the prompts file's lines. (The losses and gradients against PyTorch:
// train_policy_fixture_test.cpp; the whole loop as a process: train_policy_cli_test.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/error.h"
#include "model/tensors.h"
#include "tokenizer/load.h"
#include "train/parameters.h"
#include "train/policy_train.h"
#include "train/step.h"

namespace starling {
namespace {

const std::string kModel = std::string(STARLING_TEST_DATA_DIR) + "/tiny-mistral/hf";

std::vector<PolicyPrompt> Prompts(const Tokenizer& tokenizer) {
  std::vector<PolicyPrompt> out;
  for (const char* text : {"Say hello.", "What is two plus two? Answer briefly.", "Name a color"}) {
    PolicyPrompt p;
    p.messages = {{"user", text}};
    p.ids = ChatTemplate::ByName("openchat").Render(tokenizer, p.messages, true).ids;
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<Rollout> Sample(const TrainModel& m, const Tokenizer& tokenizer,
                            const std::vector<PolicyPrompt>& prompts, int32_t max_new_tokens) {
  std::vector<const PolicyPrompt*> chosen;
  std::vector<int64_t> indices;
  std::vector<uint64_t> seeds;
  for (size_t i = 0; i < prompts.size(); ++i) {
    chosen.push_back(&prompts[i]);
    indices.push_back(static_cast<int64_t>(i));
    seeds.push_back(100 + i);
  }
  GenerationOptions g;
  g.max_new_tokens = max_new_tokens;
  g.sampling.temperature = 1.0f;
  g.sampling.top_k = 0;
  g.sampling.top_p = 1.0f;
  g.sampling.min_p = 0.0f;
  return GenerateRollouts(m.model(), tokenizer, chosen, indices, seeds, g, /*batch=*/2);
}

// The engine samples from the model's logits (batched decode over a KV cache); the loss scores
// the same tokens with the training forward (whole sequences, sgemm). Both are float32 over the
// same weights with different summation orders: logits of this model (|logit| < ~5) agree to
// ~1e-6 relative, so log-probs agree to well within 1e-4. A log-prob of the wrong token or
// position would be off by ~1 (the vocabulary is 32002 tokens: log-probs near -10).
TEST(PolicyTrain, TheTrainingLogProbsEqualTheEnginesAtSamplingTime) {
  TrainModel m(WithValueHead(OpenModelFiles(kModel)), -1);
  const Tokenizer tokenizer = LoadTokenizer(kModel);
  const std::vector<PolicyPrompt> prompts = Prompts(tokenizer);
  std::vector<Rollout> rollouts = Sample(m, tokenizer, prompts, 12);
  ASSERT_EQ(rollouts.size(), 3u);
  TrainStep step(m);
  ReferencePolicy reference(m);
  ScoreRollouts(step, reference, rollouts, 2);
  int64_t tokens = 0;
  for (const Rollout& r : rollouts) {
    ASSERT_EQ(r.response.size(), r.engine_logps.size());
    ASSERT_EQ(r.response.size(), r.old_logps.size());
    for (size_t t = 0; t < r.response.size(); ++t, ++tokens) {
      EXPECT_NEAR(r.old_logps[t], r.engine_logps[t], 1e-4) << "token " << t;
      // Before any update the reference is the policy.
      EXPECT_NEAR(r.ref_logps[t], r.old_logps[t], 1e-4) << "token " << t;
      EXPECT_EQ(r.old_values[t], 0.0f);  // a fresh value head is zero
      EXPECT_GT(r.entropy[t], 0.0f);
    }
  }
  EXPECT_GT(tokens, 20);
}

// Each rollout's sequence is its prompt and response less the last token; the weights mark the
// response's targets only.
TEST(PolicyTrain, RolloutBatchLaysPromptAndResponse) {
  Rollout a, b;
  a.context = {1, 5, 6};
  a.response = {7, 8};
  b.context = {1, 9};
  b.response = {10, 11, 12};
  const std::vector<const Rollout*> rs = {&a, &b};
  const TokenBatch batch = RolloutBatch(rs);
  EXPECT_EQ(batch.lengths, (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(batch.inputs, (std::vector<int32_t>{1, 5, 6, 7, 1, 9, 10, 11}));
  EXPECT_EQ(batch.targets, (std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(batch.weights, (std::vector<float>{0, 0, 1, 1, 0, 1, 1, 1}));
}

// With the top block trained, the reference binds copies of the trained tensors over the
// policy's frozen block, and continues the policy's forward from the trained block's input.
// After the policy's weights move, its log-probs equal those of a model loaded afresh from the
// same files (the initial policy), to float32 rounding (the reference runs the inference
// matmuls, the fresh model the training ones), while the moved policy's differ.
TEST(PolicyTrain, TheReferenceSharesTheFrozenBlocksAndStaysTheInitialPolicy) {
  TrainModel policy(WithValueHead(OpenModelFiles(kModel)), /*unfreeze_layers=*/1);
  ReferencePolicy reference(policy);
  EXPECT_GT(reference.shared_bytes(), 0u);
  EXPECT_GT(reference.copied_bytes(), 0u);
  // The frozen block is the policy's own memory, not a copy.
  EXPECT_EQ(reference.model().layers()[0].wq.data, policy.model().layers()[0].wq.data);
  EXPECT_NE(reference.model().layers()[1].wq.data, policy.model().layers()[1].wq.data);

  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  for (Parameter& p : policy.parameters()) {
    for (float& x : p.value) x += noise(rng);
  }
  Rollout a, b;
  a.context = {1, 420, 9123, 77, 5};
  a.response = {300, 301, 302, 32000};
  b.context = {1, 1000, 2000};
  b.response = {40, 41, 42, 43, 44};
  std::vector<Rollout> rs = {a, b};
  TrainStep step(policy);
  ScoreRollouts(step, reference, rs, 2);

  TrainModel initial(WithValueHead(OpenModelFiles(kModel)), -1);
  TrainStep initial_step(initial);
  std::vector<Rollout> fresh = {a, b};
  ReferencePolicy unused(initial);
  ScoreRollouts(initial_step, unused, fresh, 2);
  double moved = 0;
  for (size_t r = 0; r < rs.size(); ++r) {
    for (size_t t = 0; t < rs[r].response.size(); ++t) {
      EXPECT_NEAR(rs[r].ref_logps[t], fresh[r].old_logps[t], 1e-4) << r << " " << t;
      moved = std::max(moved, std::fabs(double{rs[r].old_logps[t]} - rs[r].ref_logps[t]));
    }
  }
  EXPECT_GT(moved, 1e-2);  // the policy did move: the comparison can fail
}

// With a value model of its own, the values are that model's (a zero head: all 0, so the value
// loss is 0.5 mean R^2), its head gets the value loss's gradient, and the policy (no value
// head) gets the policy term's only.
TEST(PolicyTrain, ASeparateValueModelTakesTheValueLoss) {
  TrainModel policy(OpenModelFiles(kModel), -1);
  ModelFiles vf = OpenModelFiles(kModel);
  vf.config.head = ModelHead::kReward;
  vf.config.tie_word_embeddings = false;
  std::erase_if(vf.tensors, [](const TensorRef& t) { return t.name == "lm_head.weight"; });
  std::vector<float> zeros(static_cast<size_t>(vf.config.hidden_size), 0.0f);
  TensorRef head;
  head.name = "score.weight";
  head.file = "test";
  head.shape = {1, vf.config.hidden_size};
  head.data = zeros.data();
  head.size_bytes = zeros.size() * sizeof(float);
  vf.tensors.push_back(head);
  TrainModel value(std::move(vf), -1);
  Rollout a;
  a.context = {1, 420, 9123};
  a.response = {300, 301, 302};
  a.old_logps = {-10.0f, -9.0f, -11.0f};
  a.ref_logps = a.old_logps;
  a.old_values = {0.0f, 0.0f, 0.0f};
  a.rewards = {0.0f, 0.0f, 2.0f};
  const std::vector<const Rollout*> rs = {&a};
  PolicyUpdateConfig c;
  c.loss.algorithm = PolicyAlgorithm::kPpo;
  c.loss.cliprange_value = 0;
  c.whiten = false;
  TrainStep policy_step(policy), value_step(value);
  policy.ZeroGrads();
  value.ZeroGrads();
  const PolicyMinibatchResult r = PolicyMinibatchLoss(policy_step, rs, c, 1.0, true, &value_step);
  double expected = 0;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.values[i], 0.0f);
    expected += 0.5 * r.returns[i] * r.returns[i] / 3;
  }
  EXPECT_NEAR(r.terms.value_loss, expected, 1e-6);
  double head_grad = 0;
  for (const Parameter& p : value.parameters()) {
    if (p.spec.role == TensorRole::kScore) {
      for (const float g : p.grad) head_grad += std::fabs(g);
    }
  }
  EXPECT_GT(head_grad, 0.0);
  EXPECT_EQ(policy.value_weights(), nullptr);
}

// A minibatch of one response of one token (an immediate end of turn) has a single advantage:
// nothing to whiten against. It trains (unwhitened) instead of stopping the run.
TEST(PolicyTrain, AOneTokenMinibatchIsNotWhitened) {
  TrainModel m(WithValueHead(OpenModelFiles(kModel)), -1);
  Rollout a;
  a.context = {1, 420, 9123};
  a.response = {32000};
  a.old_logps = {-3.0f};
  a.ref_logps = {-3.0f};
  a.old_values = {0.0f};
  a.rewards = {1.5f};
  const std::vector<const Rollout*> rs = {&a};
  PolicyUpdateConfig c;
  c.whiten = true;
  TrainStep step(m);
  const PolicyMinibatchResult r = PolicyMinibatchLoss(step, rs, c, 1.0);
  ASSERT_EQ(r.advantages.size(), 1u);
  EXPECT_EQ(r.advantages[0], 1.5f);  // the reward minus the value 0, as it is
}

TEST(PolicyTrain, PromptLines) {
  auto m = ParsePromptLine(R"({"messages": [{"role": "user", "content": "Hi"}]})", "f:1");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].content, "Hi");
  // An SFT line's answer is dropped: its prompt remains.
  m = ParsePromptLine(
      R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},)"
      R"( {"role": "assistant", "content": "A"}]})",
      "f:2");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1].role, "user");
  m = ParsePromptLine(
      R"({"prompt": "\n\nHuman: One\n\nAssistant: Two\n\nHuman: Three\n\nAssistant: "})", "f:3");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[2].content, "Three");
  m = ParsePromptLine(R"({"prompt": "Just text"})", "f:4");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].role, "user");
  for (const char* bad :
       {"not json", "[1]", "{}", R"({"prompt": 3})",
        R"({"messages": [{"role": "assistant", "content": "A"}]})", R"({"messages": []})"}) {
    try {
      ParsePromptLine(bad, "file.jsonl:7");
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("file.jsonl:7"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace starling
