// The forward pass against an independent, naive implementation in double precision that
// recomputes every position from scratch with explicit masks (no KV cache, no batching).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "error_message.h"
#include "model/model.h"

namespace starling {
namespace {

// A random model held in memory: float32 tensors in vectors that TensorRefs point into.
struct RandomModel {
  ModelConfig config;
  std::vector<std::vector<float>> storage;
  std::vector<TensorRef> tensors;

  void Add(const std::string& name, std::vector<int64_t> shape, std::mt19937& rng, float scale,
           float offset = 0.0f) {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> values(static_cast<size_t>(n));
    for (float& x : values) x = offset + normal(rng);
    storage.push_back(std::move(values));
    tensors.push_back({name, "memory", WeightFormat::kF32, shape, storage.back().data(),
                       static_cast<uint64_t>(n) * 4});
  }
};

std::unique_ptr<RandomModel> MakeRandomModel(int32_t sliding_window, RopeLayout layout) {
  auto m = std::make_unique<RandomModel>();
  ModelConfig& c = m->config;
  c.architecture = "MistralForCausalLM";
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rope_dim = 8;
  c.rope_theta = 10000.0f;
  c.rms_norm_eps = 1e-5f;
  c.sliding_window = sliding_window;
  c.max_position_embeddings = 64;
  c.rope_layout = layout;
  c.eos_token_ids = {2};
  m->storage.reserve(64);  // TensorRefs point into the vectors: no reallocation
  std::mt19937 rng(1234);
  const int64_t d = 32, q = 32, kv = 16, f = 40, v = 61;
  m->Add("model.embed_tokens.weight", {v, d}, rng, 1.0f);
  m->Add("model.norm.weight", {d}, rng, 0.1f, 1.0f);
  m->Add("lm_head.weight", {v, d}, rng, 0.3f);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m->Add(p + "input_layernorm.weight", {d}, rng, 0.1f, 1.0f);
    m->Add(p + "self_attn.q_proj.weight", {q, d}, rng, 0.4f);
    m->Add(p + "self_attn.k_proj.weight", {kv, d}, rng, 0.4f);
    m->Add(p + "self_attn.v_proj.weight", {kv, d}, rng, 0.3f);
    m->Add(p + "self_attn.o_proj.weight", {d, q}, rng, 0.2f);
    m->Add(p + "post_attention_layernorm.weight", {d}, rng, 0.1f, 1.0f);
    m->Add(p + "mlp.gate_proj.weight", {f, d}, rng, 0.3f);
    m->Add(p + "mlp.up_proj.weight", {f, d}, rng, 0.3f);
    m->Add(p + "mlp.down_proj.weight", {d, f}, rng, 0.2f);
  }
  return m;
}

// --- The naive reference, double precision throughout ---
using Vec = std::vector<double>;

const std::vector<float>& T(const RandomModel& m, const std::string& name) {
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    if (m.tensors[i].name == name) return m.storage[i];
  }
  throw std::runtime_error("no tensor " + name);
}

Vec MatVec(const std::vector<float>& w, int64_t rows, int64_t cols, const Vec& x) {
  Vec y(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) y[r] += double{w[r * cols + c]} * x[c];
  }
  return y;
}

Vec Norm(const Vec& x, const std::vector<float>& w, double eps) {
  double ss = 0;
  for (const double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
  return y;
}

void RopeRef(Vec& v, int64_t heads, int64_t hd, int64_t pos, double theta, bool interleaved) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double angle = static_cast<double>(pos) *
                           std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
      const int64_t a = h * hd + (interleaved ? 2 * i : i);
      const int64_t b = h * hd + (interleaved ? 2 * i + 1 : i + hd / 2);
      const double x0 = v[a], x1 = v[b];
      v[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
      v[b] = x1 * std::cos(angle) + x0 * std::sin(angle);
    }
  }
}

// Logits [T][V] for every position of `tokens`.
// With `probe_position` >= 0, the last token is placed at that RoPE position and attends to
// the earlier tokens only, not to itself (the mask of a right-padded batch at a padding
// position; Session::Probe).
std::vector<Vec> ReferenceForward(const RandomModel& m, const std::vector<int32_t>& tokens,
                                  int64_t probe_position = -1) {
  const ModelConfig& c = m.config;
  const int64_t d = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const bool inter = c.rope_layout == RopeLayout::kInterleaved;
  std::vector<Vec> x(n);
  for (int64_t t = 0; t < n; ++t) {
    const auto& e = T(m, "model.embed_tokens.weight");
    x[t].assign(e.begin() + tokens[t] * d, e.begin() + (tokens[t] + 1) * d);
  }
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<Vec> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      const Vec xn = Norm(x[t], T(m, p + "input_layernorm.weight"), c.rms_norm_eps);
      q[t] = MatVec(T(m, p + "self_attn.q_proj.weight"), nh * hd, d, xn);
      k[t] = MatVec(T(m, p + "self_attn.k_proj.weight"), nkv * hd, d, xn);
      v[t] = MatVec(T(m, p + "self_attn.v_proj.weight"), nkv * hd, d, xn);
      const int64_t pos = probe_position >= 0 && t == n - 1 ? probe_position : t;
      RopeRef(q[t], nh, hd, pos, c.rope_theta, inter);
      RopeRef(k[t], nkv, hd, pos, c.rope_theta, inter);
    }
    for (int64_t i = 0; i < n; ++i) {
      Vec out(nh * hd, 0.0);
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t g = h / (nh / nkv);
        // The mask, spelled out: j <= i, and within the window when there is one.
        std::vector<int64_t> visible;
        for (int64_t j = 0; j < n; ++j) {
          if (probe_position >= 0 && i == n - 1) {
            if (j < i) visible.push_back(j);  // (the probe tests use no window)
          } else if (j <= i && (c.sliding_window == 0 || i - j < c.sliding_window)) {
            visible.push_back(j);
          }
        }
        Vec s;
        double mx = -1e300;
        for (const int64_t j : visible) {
          double dot = 0;
          for (int64_t e = 0; e < hd; ++e) dot += q[i][h * hd + e] * k[j][g * hd + e];
          s.push_back(dot / std::sqrt(static_cast<double>(hd)));
          mx = std::max(mx, s.back());
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t a = 0; a < visible.size(); ++a) {
          for (int64_t e = 0; e < hd; ++e) out[h * hd + e] += s[a] / z * v[visible[a]][g * hd + e];
        }
      }
      const Vec o = MatVec(T(m, p + "self_attn.o_proj.weight"), d, nh * hd, out);
      for (int64_t e = 0; e < d; ++e) x[i][e] += o[e];
    }
    for (int64_t t = 0; t < n; ++t) {
      const Vec xn = Norm(x[t], T(m, p + "post_attention_layernorm.weight"), c.rms_norm_eps);
      Vec g = MatVec(T(m, p + "mlp.gate_proj.weight"), c.intermediate_size, d, xn);
      const Vec u = MatVec(T(m, p + "mlp.up_proj.weight"), c.intermediate_size, d, xn);
      for (size_t e = 0; e < g.size(); ++e) g[e] = g[e] / (1 + std::exp(-g[e])) * u[e];
      const Vec o = MatVec(T(m, p + "mlp.down_proj.weight"), d, c.intermediate_size, g);
      for (int64_t e = 0; e < d; ++e) x[t][e] += o[e];
    }
  }
  std::vector<Vec> logits(n);
  for (int64_t t = 0; t < n; ++t) {
    logits[t] = MatVec(T(m, "lm_head.weight"), c.vocab_size, d,
                       Norm(x[t], T(m, "model.norm.weight"), c.rms_norm_eps));
  }
  return logits;
}

// Relative L2 distance of a float row from a double row.
double RelativeL2(const float* a, const Vec& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

std::vector<int32_t> Tokens(int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((i * 37 + 11) % 61);
  return t;
}

// float32 against double over 2 small layers: errors are ~1e-7 relative per operation;
// 1e-5 leaves two orders of magnitude of room while any masking or RoPE mistake gives O(1).
constexpr double kTolerance = 1e-5;

class ForwardTest : public ::testing::TestWithParam<std::tuple<int, RopeLayout>> {};

TEST_P(ForwardTest, BatchedPromptMatchesNaiveReference) {
  const auto [window, layout] = GetParam();
  const auto m = MakeRandomModel(window, layout);
  const Model model(m->config, m->tensors, "random", nullptr);
  const std::vector<int32_t> tokens = Tokens(20);
  const std::vector<Vec> expected = ReferenceForward(*m, tokens);
  Session session(model, 32);
  std::vector<float> logits(tokens.size() * 61);
  session.Forward(tokens, logits, /*all_logits=*/true);
  for (size_t t = 0; t < tokens.size(); ++t) {
    EXPECT_LT(RelativeL2(&logits[t * 61], expected[t]), kTolerance) << "position " << t;
  }
}

TEST_P(ForwardTest, DecodingWithTheCacheMatchesRecomputing) {
  const auto [window, layout] = GetParam();
  const auto m = MakeRandomModel(window, layout);
  const Model model(m->config, m->tensors, "random", nullptr);
  const std::vector<int32_t> tokens = Tokens(20);
  const std::vector<Vec> expected = ReferenceForward(*m, tokens);
  // A prompt of 7 as one batch, then one token at a time.
  Session session(model, 32);
  std::vector<float> logits(61);
  session.Forward(std::span(tokens).first(7), logits);
  EXPECT_LT(RelativeL2(logits.data(), expected[6]), kTolerance);
  for (size_t t = 7; t < tokens.size(); ++t) {
    session.Forward(std::span(tokens).subspan(t, 1), logits);
    EXPECT_LT(RelativeL2(logits.data(), expected[t]), kTolerance) << "position " << t;
  }
  EXPECT_EQ(session.length(), 20);
  // Truncating and re-running gives the same logits again.
  session.Truncate(10);
  session.Forward(std::span(tokens).subspan(10, 1), logits);
  EXPECT_LT(RelativeL2(logits.data(), expected[10]), kTolerance);
}

// An F16 cache: close to the reference, and the same bits whether a prompt runs as one batch or
// token by token (each position stores, then reads, the same rounded keys either way), which
// the server's prefix reuse relies on. Keys and values carry binary16's rounding (2^-12
// relative at most); the random weights' large attention scores and two layers amplify that to
// at most 2.4e-3 relative L2 here (measured, every window and layout, AVX2 and scalar): 1e-2
// leaves 4x room, while a cache read at the wrong place or in the wrong type gives O(1).
TEST_P(ForwardTest, F16CacheIsCloseAndBatchingInvariant) {
  const auto [window, layout] = GetParam();
  const auto m = MakeRandomModel(window, layout);
  const Model model(m->config, m->tensors, "random", nullptr);
  const std::vector<int32_t> tokens = Tokens(20);
  const std::vector<Vec> expected = ReferenceForward(*m, tokens);
  Session batched(model, 32, DType::kF16), stepped(model, 32, DType::kF16);
  EXPECT_EQ(batched.kv_type(), DType::kF16);
  std::vector<float> all(tokens.size() * 61), logits(61);
  batched.Forward(tokens, all, /*all_logits=*/true);
  stepped.Forward(std::span(tokens).first(7), logits);
  for (int v = 0; v < 61; ++v) ASSERT_EQ(logits[v], all[6 * 61 + v]);
  for (size_t t = 7; t < tokens.size(); ++t) {
    stepped.Forward(std::span(tokens).subspan(t, 1), logits);
    for (int v = 0; v < 61; ++v) ASSERT_EQ(logits[v], all[t * 61 + v]) << "position " << t;
  }
  double worst = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const double error = RelativeL2(&all[t * 61], expected[t]);
    worst = std::max(worst, error);
    EXPECT_LT(error, 1e-2) << "position " << t;
  }
  // Guards the test: the cache really is F16 (an F32 cache stays within kTolerance).
  EXPECT_GT(worst, kTolerance);
}

INSTANTIATE_TEST_SUITE_P(WindowsAndLayouts, ForwardTest,
                         ::testing::Combine(::testing::Values(0, 1, 3, 8, 100),
                                            ::testing::Values(RopeLayout::kHalves,
                                                              RopeLayout::kInterleaved)));

TEST(Forward, SlidingWindowChangesTheResult) {
  // Guards the test above: the window must matter for sequences longer than it.
  const auto full = MakeRandomModel(0, RopeLayout::kHalves);
  const auto windowed = MakeRandomModel(3, RopeLayout::kHalves);
  const auto a = ReferenceForward(*full, Tokens(10));
  const auto b = ReferenceForward(*windowed, Tokens(10));
  EXPECT_EQ(a[2], b[2]);  // within the window: identical
  EXPECT_NE(a[9], b[9]);
}

TEST(Forward, ProbeMatchesAMaskedPaddingPosition) {
  const auto m = MakeRandomModel(0, RopeLayout::kHalves);
  const Model model(m->config, m->tensors, "random", nullptr);
  std::vector<int32_t> tokens = Tokens(9);
  const std::vector<Vec> expected = ReferenceForward(*m, tokens, /*probe_position=*/30);
  Session session(model, 16);
  std::vector<float> logits(61), probe(61);
  session.Forward(std::span(tokens).first(8), logits);
  session.Probe(tokens[8], 30, probe);
  EXPECT_LT(RelativeL2(probe.data(), expected[8]), kTolerance);
  EXPECT_EQ(session.length(), 8);  // the probe left the cache alone
  // Not what a plain forward at the next position computes.
  const std::vector<Vec> plain = ReferenceForward(*m, tokens);
  EXPECT_GT(RelativeL2(probe.data(), plain[8]), 1e-3);
  session.Forward(std::span(tokens).subspan(8, 1), logits);
  EXPECT_LT(RelativeL2(logits.data(), plain[8]), kTolerance);
  // Errors: a position inside the cache, an empty cache.
  EXPECT_THROW(session.Probe(tokens[0], 5, probe), Error);
  Session empty(model, 16);
  EXPECT_THROW(empty.Probe(tokens[0], 5, probe), Error);
}

TEST_P(ForwardTest, BatchedDecodeOfSeveralSessionsEqualsEachAlone) {
  const auto [window, layout] = GetParam();
  const auto m = MakeRandomModel(window, layout);
  const Model model(m->config, m->tensors, "random", nullptr);
  const std::vector<int32_t> tokens = Tokens(20);
  // Three sessions at different lengths, decoded together; their twins decoded alone. The
  // middle one has an F16 cache: a batch may mix cache types.
  std::vector<std::unique_ptr<Session>> batched, alone;
  std::vector<float> scratch_logits(61);
  for (int i = 0; i < 3; ++i) {
    for (auto* list : {&batched, &alone}) {
      list->push_back(std::make_unique<Session>(model, 32, i == 1 ? DType::kF16 : DType::kF32));
      list->back()->Forward(std::span(tokens).first(3 + 4 * i), scratch_logits);
    }
  }
  ForwardScratch scratch;
  for (int step = 0; step < 5; ++step) {
    std::vector<Session*> sessions;
    std::vector<int32_t> next;
    for (int i = 0; i < 3; ++i) {
      sessions.push_back(batched[i].get());
      next.push_back(tokens[(3 + 4 * i + step) % 20]);
    }
    std::vector<float> out(3 * 61);
    Session::ForwardBatch(sessions, next, out, &scratch);
    for (int i = 0; i < 3; ++i) {
      std::vector<float> want(61);
      alone[i]->Forward(std::span(next).subspan(i, 1), want);
      for (int v = 0; v < 61; ++v) {
        ASSERT_EQ(out[i * 61 + v], want[v]) << "session " << i << " step " << step;
      }
      ASSERT_EQ(batched[i]->length(), alone[i]->length());
    }
  }
  // Errors before any work: a repeated session, a full one.
  std::vector<Session*> twice = {batched[0].get(), batched[0].get()};
  std::vector<int32_t> two = {1, 2};
  std::vector<float> out(2 * 61);
  EXPECT_THROW(Session::ForwardBatch(twice, two, out, &scratch), Error);
  EXPECT_EQ(batched[0]->length(), alone[0]->length());
}

TEST(Forward, SessionKeepsItsIdsAndReusesTheLongestPrefix) {
  const auto m = MakeRandomModel(0, RopeLayout::kHalves);
  const Model model(m->config, m->tensors, "random", nullptr);
  Session s(model, 32);
  std::vector<float> out(static_cast<size_t>(model.config().vocab_size));
  const std::vector<int32_t> a = {1, 5, 7, 9, 11}, b = {1, 5, 7, 4}, same = {1, 5, 7, 9, 11};
  s.Forward(a, out);
  EXPECT_EQ(s.tokens(), a);
  EXPECT_EQ(s.ReusePrefix(b), 3);  // 1 5 7 shared
  EXPECT_EQ(s.tokens(), std::vector<int32_t>({1, 5, 7}));
  s.Forward(std::span(b).subspan(3), out);
  EXPECT_EQ(s.tokens(), b);
  s.Truncate(4);
  s.Forward(std::vector<int32_t>{2, 3}, out);
  EXPECT_EQ(s.ReusePrefix(std::vector<int32_t>{1, 5, 7, 4, 2, 3}), 5);  // the last id runs again
  EXPECT_EQ(s.ReusePrefix(same), 3);
  EXPECT_EQ(s.ReusePrefix(std::vector<int32_t>{8}), 0);
  EXPECT_EQ(s.length(), 0);
}

TEST(Forward, ALongPromptRunsInChunksWithTheSameOutputs) {
  // Session::kChunkRows rows at a time: the outputs equal those of the same prompt run in two
  // calls split elsewhere (each position's bits do not depend on its batch).
  const auto m = MakeRandomModel(0, RopeLayout::kHalves);
  const Model model(m->config, m->tensors, "random", nullptr);
  const int64_t n = Session::kChunkRows + 37, v = model.config().vocab_size;
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7 + 1) % v);
  Session whole(model, 1024), split(model, 1024);
  std::vector<float> all(static_cast<size_t>(n * v)), parts(all.size());
  whole.Forward(ids, all, true);
  split.Forward(std::span(ids).first(100), std::span(parts).first(100 * v), true);
  split.Forward(std::span(ids).subspan(100), std::span(parts).subspan(100 * v), true);
  EXPECT_EQ(all, parts);
  std::vector<float> last(static_cast<size_t>(v));
  Session again(model, 1024);
  again.Forward(ids, last);
  EXPECT_TRUE(std::equal(last.begin(), last.end(), all.end() - v));
}

TEST(Forward, ErrorsAreClear) {
  const auto m = MakeRandomModel(0, RopeLayout::kHalves);
  const Model model(m->config, m->tensors, "random", nullptr);
  Session session(model, 4);
  std::vector<float> logits(61);
  const std::vector<int32_t> too_many = Tokens(5);
  EXPECT_THROW(session.Forward(too_many, logits), Error);
  const std::vector<int32_t> bad = {61};
  EXPECT_THROW(session.Forward(bad, logits), Error);
  // KV cache types other than F32 and F16.
  for (const DType t : {DType::kBF16, DType::kI8, DType::kF64}) {
    const std::string error = testing::ErrorMessage([&] { Session(model, 4, t); });
    EXPECT_NE(error.find(std::string("KV cache type ") + DTypeName(t)), std::string::npos) << error;
    EXPECT_NE(error.find("F32 or F16"), std::string::npos) << error;
  }
}

TEST(Forward, F16CacheHalvesTheCacheBytes) {
  const auto m = MakeRandomModel(0, RopeLayout::kHalves);
  const Model model(m->config, m->tensors, "random", nullptr);
  const Session f32(model, 32), f16(model, 32, DType::kF16);
  EXPECT_EQ(f32.kv_type(), DType::kF32);
  // keys and values x 2 layers x 32 positions x 2 kv heads x 8 dims.
  EXPECT_EQ(f32.kv_cache_bytes(), 2u * 2 * 32 * 2 * 8 * 4);
  EXPECT_EQ(f16.kv_cache_bytes(), 2u * 2 * 32 * 2 * 8 * 2);
}

TEST(Forward, MissingOrMisshapedTensorsAreNamed) {
  auto m = MakeRandomModel(0, RopeLayout::kHalves);
  auto tensors = m->tensors;
  tensors.erase(tensors.begin() + 5);  // a layer-0 tensor
  try {
    Model(m->config, tensors, "ckpt", nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "ckpt: tensor 'model.layers.0.self_attn.k_proj.weight' is missing");
  }
  tensors = m->tensors;
  tensors[4].shape = {16, 32};
  try {
    Model(m->config, tensors, "ckpt", nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "memory: tensor 'model.layers.0.self_attn.q_proj.weight' has shape [16, 32], "
                 "expected [32, 32] from the config");
  }
}

TEST(Forward, WeightsForMoreLayersThanTheConfigAreRefused) {
  // A config.json with fewer layers than the weights hold used to run the shallower model.
  auto m = MakeRandomModel(0, RopeLayout::kHalves);
  ModelConfig one_layer = m->config;
  one_layer.num_layers = 1;
  EXPECT_EQ(testing::ErrorMessage([&] { Model(one_layer, m->tensors, "ckpt", nullptr); }),
            "memory: tensor 'model.layers.1.input_layernorm.weight' belongs to layer 1, but the "
            "config has 1 layers (num_hidden_layers, or llama.block_count in GGUF): the config "
            "does not match the weights");
  // A GGUF block tensor with no canonical name counts too; other names are left alone.
  auto tensors = m->tensors;
  std::vector<float> extra(4);
  tensors.push_back({"blk.7.attn_q.bias", "model.gguf", WeightFormat::kF32, {4}, extra.data(), 16});
  EXPECT_NE(testing::ErrorMessage([&] { Model(m->config, tensors, "ckpt", nullptr); })
                .find("model.gguf: tensor 'blk.7.attn_q.bias' belongs to layer 7, but the config "
                      "has 2 layers"),
            std::string::npos);
  tensors.back().name = "model.layers.x.rotary_emb.inv_freq";
  EXPECT_NO_THROW(Model(m->config, tensors, "ckpt", nullptr));
}

}  // namespace
}  // namespace starling
