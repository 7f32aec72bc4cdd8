// The token sampler: each stage of the chain on toy distributions, checked against exact
// sets or against softmax frequencies within 4 binomial standard errors (all seeds are fixed,
// so every run draws the same numbers and a pass is reproducible, not luck).
#include "generate/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"

// Counts heap allocations so a test can show that steady-state sampling makes none. Only
// the scalar forms are replaced: std::vector allocates through them.
namespace {
std::atomic<long> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// Not inlined: GCC would otherwise see free() applied to the result of operator new at the
// call site and warn (-Wmismatched-new-delete), not knowing that this new uses malloc.
[[gnu::noinline]] void operator delete(void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace starling {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Every filter off: the draw is plain softmax(logits / temperature).
SamplerConfig Plain(float temperature = 1.0f, uint64_t seed = 1) {
  SamplerConfig config;
  config.temperature = temperature;
  config.top_k = 0;
  config.top_p = 1.0f;
  config.min_p = 0.0f;
  config.repeat_penalty = 1.0f;
  config.seed = seed;
  return config;
}

std::vector<float> LogitsOf(const std::vector<double>& probabilities) {
  std::vector<float> logits;
  for (const double p : probabilities) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature = 1.0) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p;
  double total = 0.0;
  for (const float logit : logits) {
    p.push_back(std::exp((logit - max) / temperature));
    total += p.back();
  }
  for (double& x : p) x /= total;
  return p;
}

// Keeps only `kept` ids of a distribution and renormalizes.
std::vector<double> Restrict(std::vector<double> p, const std::vector<int32_t>& kept) {
  double total = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (std::find(kept.begin(), kept.end(), static_cast<int32_t>(i)) == kept.end()) p[i] = 0.0;
    total += p[i];
  }
  for (double& x : p) x /= total;
  return p;
}

// Token frequencies over `draws` samples (the logits are copied each time: they are scratch).
std::vector<double> Frequencies(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<double> counts(logits.size(), 0.0);
  std::vector<float> scratch(logits.size());
  for (int i = 0; i < draws; ++i) {
    std::copy(logits.begin(), logits.end(), scratch.begin());
    const int32_t id = sampler.Sample(scratch, {});
    EXPECT_GE(id, 0);
    EXPECT_LT(id, static_cast<int32_t>(logits.size()));
    counts[id] += 1.0;
  }
  for (double& c : counts) c /= draws;
  return counts;
}

// Tolerance: 4 standard errors of a binomial proportion, 4 * sqrt(p (1 - p) / n); a token of
// probability 0 must never appear.
void ExpectFrequencies(const std::vector<double>& observed, const std::vector<double>& expected,
                       int draws) {
  ASSERT_EQ(observed.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const double p = expected[i];
    if (p == 0.0) {
      EXPECT_EQ(observed[i], 0.0) << "token " << i << " should be filtered out";
    } else {
      EXPECT_NEAR(observed[i], p, 4.0 * std::sqrt(p * (1.0 - p) / draws)) << "token " << i;
    }
  }
}

std::vector<int32_t> FilteredIds(Sampler& sampler, std::vector<float> logits,
                                 const std::vector<int32_t>& history = {}) {
  std::vector<int32_t> ids;
  for (const SamplerCandidate& c : sampler.Filter(logits, history)) ids.push_back(c.id);
  return ids;
}

// Deterministic pseudo-random logits, uniform in [-scale, scale).
std::vector<float> RandomLogits(size_t vocab, uint64_t seed, double scale) {
  std::mt19937_64 rng(seed);
  std::vector<float> logits(vocab);
  for (float& x : logits) {
    x = static_cast<float>(scale * (2.0 * static_cast<double>(rng() >> 11) * 0x1.0p-53 - 1.0));
  }
  return logits;
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  SamplerConfig config = Plain(0.0f);
  Sampler sampler(config);
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};
  EXPECT_EQ(sampler.Sample(logits, {}), 1);
  logits = {kNaN, -kInf, -5.0f, kNaN, -6.0f};
  EXPECT_EQ(sampler.Sample(logits, {}), 2);
  // Below 1e-6 counts as greedy too.
  config.temperature = 1e-7f;
  Sampler tiny(config);
  logits = {0.0f, 0.5f, 0.5f};
  EXPECT_EQ(tiny.Sample(logits, {}), 1);
}

TEST(Sampler, GreedyIgnoresFilters) {
  // Temperature 0 with aggressive filters and with none: always the argmax, the tie between
  // ids 2 and 4 going to 2, and Filter reports that token alone.
  SamplerConfig config = Plain(0.0f, 7);
  config.top_k = 1;
  config.top_p = 0.01f;
  config.min_p = 1.0f;
  Sampler filtered(config);
  Sampler plain(Plain(0.0f, 7));
  const std::vector<float> logits = {0.1f, -2.0f, 4.0f, 3.9f, 4.0f};
  for (int i = 0; i < 10; ++i) {
    std::vector<float> a = logits, b = logits;
    EXPECT_EQ(filtered.Sample(a, {}), 2);
    EXPECT_EQ(plain.Sample(b, {}), 2);
  }
  std::vector<float> scratch = logits;
  EXPECT_EQ(FilteredIds(filtered, scratch), std::vector<int32_t>{2});
}

TEST(Sampler, PlainDrawMatchesSoftmax) {
  // 200k draws; tolerance 4 binomial standard errors per token (at most ~0.0044).
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f};
  Sampler sampler(Plain(1.0f, 11));
  constexpr int kDraws = 200000;
  ExpectFrequencies(Frequencies(sampler, logits, kDraws), Softmax(logits), kDraws);
}

TEST(Sampler, TopKKeepsTheKBest) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f};
  SamplerConfig config = Plain(1.0f, 12);
  config.top_k = 2;
  Sampler sampler(config);
  EXPECT_EQ(FilteredIds(sampler, logits), (std::vector<int32_t>{4, 1}));
  // 50k draws; only ids 4 and 1, frequencies within 4 standard errors of the renormalized
  // softmax.
  constexpr int kDraws = 50000;
  ExpectFrequencies(Frequencies(sampler, logits, kDraws), Restrict(Softmax(logits), {4, 1}),
                    kDraws);
  // Ties at the cut go to the lower id; k >= V keeps everything.
  EXPECT_EQ(FilteredIds(sampler, {5.0f, 7.0f, 5.0f, 5.0f}), (std::vector<int32_t>{1, 0}));
  config.top_k = 10;
  Sampler wide(config);
  EXPECT_EQ(FilteredIds(wide, {5.0f, 7.0f, 5.0f}), (std::vector<int32_t>{0, 1, 2}));
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
  const std::vector<float> logits = LogitsOf(p);
  SamplerConfig config = Plain(1.0f, 13);
  const auto kept = [&](float top_p) {
    config.top_p = top_p;
    Sampler sampler(config);
    return FilteredIds(sampler, logits);
  };
  // Exact sets: 0.5 + 0.3 reaches 0.8 exactly, so 0.8 stops there; 0.81 needs the third.
  EXPECT_EQ(kept(0.8f), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(kept(0.81f), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(kept(0.5f), (std::vector<int32_t>{0}));
  EXPECT_EQ(kept(0.01f), (std::vector<int32_t>{0}));  // always at least one
  EXPECT_EQ(kept(0.96f), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(kept(1.0f), (std::vector<int32_t>{0, 1, 2, 3}));  // off

  // The same distribution with shuffled ids: survivors come back most probable first.
  config.top_p = 0.8f;
  Sampler shuffled(config);
  EXPECT_EQ(FilteredIds(shuffled, LogitsOf({0.15, 0.05, 0.3, 0.5})), (std::vector<int32_t>{3, 2}));

  // 50k draws at top_p = 0.8: ids 0 and 1 only, at 0.5/0.8 and 0.3/0.8 within 4 standard
  // errors.
  Sampler sampler(config);
  constexpr int kDraws = 50000;
  ExpectFrequencies(Frequencies(sampler, logits, kDraws), {0.625, 0.375, 0.0, 0.0}, kDraws);
}

TEST(Sampler, TopPBreaksTiesByLowerId) {
  // 1000 equal logits: top_p = 0.5 must take exactly 500 of them, the lower ids, in order.
  SamplerConfig config = Plain(1.0f, 14);
  config.top_p = 0.5f;
  Sampler sampler(config);
  std::vector<int32_t> first_500(500);
  for (int32_t i = 0; i < 500; ++i) first_500[i] = i;
  EXPECT_EQ(FilteredIds(sampler, std::vector<float>(1000, 0.25f)), first_500);
}

TEST(Sampler, FilterChainMatchesAReferenceOnALargeVocabulary) {
  // Reference, written the plain way in llama.cpp's order: sort all 32000 candidates, cut
  // to top-k, softmax over those in double, keep the top-p prefix (same 1e-6 relative
  // slack), then the min-p tokens of that. Logits are rounded to 1/64 so that ties abound.
  // The survivors must match exactly, in order, for top-k off / heap-selected / nth_element.
  std::vector<float> logits = RandomLogits(32000, 99, 6.0);
  for (float& x : logits) x = std::round(x * 64.0f) / 64.0f;
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (const int32_t top_k : {0, 40, 1000}) {
    for (const float top_p : {0.3f, 0.9f, 0.99f}) {
      for (const float min_p : {0.0f, 0.05f}) {
        std::vector<int32_t> expected = order;
        if (top_k > 0) expected.resize(top_k);
        std::vector<float> kept_logits;
        for (const int32_t id : expected) kept_logits.push_back(logits[id]);
        const std::vector<double> p = Softmax(kept_logits);
        double cumulative = 0.0;
        for (size_t i = 0; i < p.size(); ++i) {
          cumulative += p[i];
          if (cumulative >= top_p * (1.0 - 1e-6)) {
            expected.resize(i + 1);
            break;
          }
        }
        while (p[expected.size() - 1] < min_p * p[0] * (1.0 - 1e-6)) expected.pop_back();

        SamplerConfig config = Plain(1.0f, 15);
        config.top_k = top_k;
        config.top_p = top_p;
        config.min_p = min_p;
        Sampler sampler(config);
        EXPECT_EQ(FilteredIds(sampler, logits), expected)
            << "top_k " << top_k << " top_p " << top_p << " min_p " << min_p;
      }
    }
  }
}

TEST(Sampler, TopPAndMinPKeepTheShorterPrefix) {
  // Top-p 0.99 alone keeps all four and min-p 0.5 alone keeps {0, 1}: together, {0, 1}.
  // And the other way round: top-p 0.5 keeps {0} even though min-p would keep {0, 1}.
  const std::vector<float> logits = LogitsOf({0.5, 0.3, 0.15, 0.05});
  SamplerConfig config = Plain(1.0f);
  config.top_p = 0.99f;
  config.min_p = 0.5f;
  Sampler a(config);
  EXPECT_EQ(FilteredIds(a, logits), (std::vector<int32_t>{0, 1}));
  config.top_p = 0.5f;
  Sampler b(config);
  EXPECT_EQ(FilteredIds(b, logits), std::vector<int32_t>{0});
}

TEST(Sampler, MinPKeepsTokensNearTheMax) {
  // p_max = 0.5 and min_p = 0.5: keep p >= 0.25, the boundary included.
  const std::vector<double> p = {0.5, 0.2, 0.25, 0.05};
  const std::vector<float> logits = LogitsOf(p);
  SamplerConfig config = Plain(1.0f, 16);
  config.min_p = 0.5f;
  Sampler sampler(config);
  EXPECT_EQ(FilteredIds(sampler, logits), (std::vector<int32_t>{0, 2}));  // id order
  // 50k draws: ids 0 and 2 at 0.5/0.75 and 0.25/0.75, within 4 standard errors.
  constexpr int kDraws = 50000;
  ExpectFrequencies(Frequencies(sampler, logits, kDraws), Restrict(p, {0, 2}), kDraws);
  config.min_p = 1.0f;
  Sampler strictest(config);
  EXPECT_EQ(FilteredIds(strictest, logits), std::vector<int32_t>{0});
}

TEST(Sampler, TemperatureFlattensAndSharpens) {
  // 100k draws each; frequencies match softmax(logits / T) within 4 standard errors.
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f};
  constexpr int kDraws = 100000;
  for (const float t : {2.0f, 0.5f}) {
    Sampler sampler(Plain(t, 17));
    ExpectFrequencies(Frequencies(sampler, logits, kDraws), Softmax(logits, t), kDraws);
  }
  // T = 2 flattens and T = 0.5 sharpens: the best token's share is 0.42 / 0.62 / 0.86.
  EXPECT_LT(Softmax(logits, 2.0)[4], Softmax(logits, 1.0)[4] - 0.1);
  EXPECT_GT(Softmax(logits, 0.5)[4], Softmax(logits, 1.0)[4] + 0.1);
}

TEST(Sampler, FiltersSeeUntemperedProbabilities) {
  // As in llama.cpp, temperature comes after top-p and min-p. At T = 0.1 token 0 would have
  // p ~ 0.99 and top_p = 0.8 would keep it alone; on the raw logits it keeps {0, 1}.
  const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
  const std::vector<float> logits = LogitsOf(p);
  SamplerConfig config = Plain(0.1f, 18);
  config.top_p = 0.8f;
  Sampler sampler(config);
  EXPECT_EQ(FilteredIds(sampler, logits), (std::vector<int32_t>{0, 1}));
  // Then the temperature applies among the survivors: softmax({log .5, log .3} / 0.1).
  // 50k draws, 4 standard errors.
  constexpr int kDraws = 50000;
  std::vector<double> expected = Softmax({logits[0], logits[1]}, 0.1);
  expected.resize(4, 0.0);
  ExpectFrequencies(Frequencies(sampler, logits, kDraws), expected, kDraws);
}

TEST(Sampler, RepetitionPenaltyExactValues) {
  SamplerConfig config = Plain(1.0f);
  config.repeat_penalty = 2.0f;
  config.repeat_last_n = 5;
  Sampler sampler(config);
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 1.0f, 0.0f};
  // Positive logits are halved, negative ones doubled. The last 5 of history are
  // {0, 1, 1, 3, 1}: token 2 is older than the window; token 1 repeats but is penalized once.
  const std::vector<int32_t> history = {2, 0, 1, 1, 3, 1};
  std::vector<float> out = logits;
  sampler.ApplyRepetitionPenalty(out, history);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 0.5f, 1.5f, -2.0f, 1.0f, 0.0f}));
  // Scratch state is reset between calls: the same input gives the same output.
  out = logits;
  sampler.ApplyRepetitionPenalty(out, history);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 0.5f, 1.5f, -2.0f, 1.0f, 0.0f}));

  // -1: the whole history; zero stays zero; ids outside [0, V) are ignored.
  config.repeat_last_n = -1;
  Sampler all(config);
  out = logits;
  all.ApplyRepetitionPenalty(out, std::vector<int32_t>{2, 0, 1, 6, 7, -1, 1000});
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 0.25f, 3.0f, -2.0f, 1.0f, 0.0f}));

  // A window longer than the history takes all of it.
  config.repeat_last_n = 64;
  Sampler longer(config);
  out = logits;
  longer.ApplyRepetitionPenalty(out, history);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 0.25f, 1.5f, -2.0f, 1.0f, 0.0f}));

  // Off: repeat_last_n = 0, or penalty 1.
  config.repeat_last_n = 0;
  Sampler off_n(config);
  out = logits;
  off_n.ApplyRepetitionPenalty(out, history);
  EXPECT_EQ(out, logits);
  config.repeat_last_n = 64;
  config.repeat_penalty = 1.0f;
  Sampler off_p(config);
  out = logits;
  off_p.ApplyRepetitionPenalty(out, history);
  EXPECT_EQ(out, logits);
}

TEST(Sampler, RepetitionPenaltyComesFirstInTheChain) {
  // Greedy sees the penalized logits: 2.0 / 1.1 < 1.9, so token 1 wins.
  SamplerConfig config = Plain(0.0f);
  config.repeat_penalty = 1.1f;
  Sampler greedy(config);
  std::vector<float> logits = {2.0f, 1.9f};
  EXPECT_EQ(greedy.Sample(logits, std::vector<int32_t>{0}), 1);
  // And top-k does too: penalizing token 0 pushes it out of the top 1.
  config.temperature = 1.0f;
  config.top_k = 1;
  Sampler top1(config);
  const std::vector<int32_t> history = {0};
  EXPECT_EQ(FilteredIds(top1, {2.0f, 1.9f}, history), std::vector<int32_t>{1});
}

TEST(Sampler, SameSeedSameDraws) {
  // Defaults (T 0.8, top-k 40, top-p 0.95, min-p 0.05) on a 100-token vocabulary.
  const std::vector<float> logits = RandomLogits(100, 5, 3.0);
  const auto draws = [&](Sampler& sampler) {
    std::vector<int32_t> ids;
    std::vector<float> scratch;
    for (int i = 0; i < 1000; ++i) {
      scratch = logits;
      ids.push_back(sampler.Sample(scratch, {}));
    }
    return ids;
  };
  SamplerConfig config;
  config.seed = 42;
  Sampler a(config), b(config);
  const std::vector<int32_t> first = draws(a);
  EXPECT_EQ(first, draws(b));
  EXPECT_GT(std::set<int32_t>(first.begin(), first.end()).size(), 5u);  // really random
  config.seed = 43;
  Sampler c(config);
  EXPECT_NE(first, draws(c));
  // Reseed restarts the stream, on the sampler that already drew.
  a.Reseed(42);
  EXPECT_EQ(first, draws(a));
  c.Reseed(42);
  EXPECT_EQ(first, draws(c));
}

TEST(Sampler, DrawsArePinnedAcrossPlatforms) {
  // Ten equal logits: every weight is exp(0) = 1, so the draw is floor(10 u) for
  // u = (mt19937_64() >> 11) * 2^-53, a sequence the C++ standard fixes. A change here means
  // every user's seeded outputs change.
  Sampler sampler(Plain(1.0f, 0));
  std::vector<int32_t> ids;
  std::mt19937_64 reference(0);
  std::vector<int32_t> expected;
  for (int i = 0; i < 16; ++i) {
    std::vector<float> logits(10, 0.0f);
    ids.push_back(sampler.Sample(logits, {}));
    expected.push_back(
        static_cast<int32_t>(static_cast<double>(reference() >> 11) * 0x1.0p-53 * 10));
  }
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 9, 0, 5, 5, 0, 6, 4, 8, 9, 4, 6, 9, 3, 2, 4}));
}

TEST(Sampler, ValidateNamesTheBadField) {
  const auto expect_error = [](SamplerConfig config, const std::string& field) {
    try {
      config.Validate();
      ADD_FAILURE() << "no error for " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field + " = "), std::string::npos) << e.what();
    }
    EXPECT_THROW(Sampler{config}, Error) << field;
  };
  SamplerConfig bad;
  for (const float t : {-0.1f, kNaN, kInf}) {
    bad = {};
    bad.temperature = t;
    expect_error(bad, "temperature");
  }
  for (const float p : {0.0f, -0.5f, 1.5f, kNaN}) {
    bad = {};
    bad.top_p = p;
    expect_error(bad, "top_p");
  }
  for (const float p : {-0.01f, 1.01f, kNaN}) {
    bad = {};
    bad.min_p = p;
    expect_error(bad, "min_p");
  }
  for (const float p : {0.0f, -1.0f, kInf, kNaN}) {
    bad = {};
    bad.repeat_penalty = p;
    expect_error(bad, "repeat_penalty");
  }
  bad = {};
  bad.repeat_last_n = -2;
  expect_error(bad, "repeat_last_n");
  SamplerConfig negative_k;
  negative_k.top_k = -5;  // was taken as "off"
  expect_error(negative_k, "top_k");
  try {
    SamplerConfig config;
    config.top_p = 1.5f;
    config.Validate();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "top_p = 1.5 is out of range (0, 1]");
  }

  // The edges of each range are valid.
  SamplerConfig edges;
  edges.temperature = 0.0f;
  edges.top_k = 0;
  edges.top_p = 1.0f;
  edges.min_p = 1.0f;
  edges.repeat_penalty = 1e-3f;
  edges.repeat_last_n = -1;
  EXPECT_NO_THROW(edges.Validate());
  edges.min_p = 0.0f;
  edges.top_p = 1e-9f;
  EXPECT_NO_THROW(edges.Validate());
}

TEST(Sampler, NaNCountsAsMinusInfinity) {
  // NaN tokens are never drawn; the rest keep their softmax shares. 50k draws, 4 standard
  // errors.
  const std::vector<float> logits = {kNaN, 1.0f, kNaN, 0.0f, -kInf};
  Sampler sampler(Plain(1.0f, 19));
  constexpr int kDraws = 50000;
  const double e = std::exp(1.0);
  ExpectFrequencies(Frequencies(sampler, logits, kDraws), {0.0, e / (e + 1), 0.0, 1 / (e + 1), 0.0},
                    kDraws);
  // +inf tokens share all the mass equally.
  ExpectFrequencies(Frequencies(sampler, {0.0f, kInf, 50.0f, kInf}, kDraws), {0.0, 0.5, 0.0, 0.5},
                    kDraws);
}

TEST(Sampler, AllLogitsUnusableIsAnError) {
  for (const float temperature : {0.0f, 1.0f}) {
    Sampler sampler(Plain(temperature));
    for (std::vector<float> logits : {std::vector<float>{kNaN, kNaN}, std::vector<float>{-kInf},
                                      std::vector<float>{kNaN, -kInf, kNaN}}) {
      try {
        sampler.Sample(logits, {});
        ADD_FAILURE() << "no error at T " << temperature;
      } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "all logits are NaN or -inf");
      }
    }
    std::vector<float> empty;
    EXPECT_THROW(sampler.Sample(empty, {}), Error);
  }
}

TEST(Sampler, NoAllocationAfterTheFirstCall) {
  // Llama's vocabulary size with every stage on (defaults plus a penalty and history), and
  // greedy; after one warm-up call, further calls of that size or smaller allocate nothing.
  const std::vector<float> logits = RandomLogits(32000, 3, 8.0);
  std::vector<int32_t> history(200);
  for (size_t i = 0; i < history.size(); ++i) history[i] = static_cast<int32_t>(i * 37 % 32000);
  SamplerConfig config;
  config.repeat_penalty = 1.3f;
  for (const float temperature : {0.8f, 0.0f}) {
    for (const int32_t top_k : {40, 0}) {
      config.temperature = temperature;
      config.top_k = top_k;
      Sampler sampler(config);
      std::vector<float> scratch = logits;
      sampler.Sample(scratch, history);
      const long before = g_allocations.load();
      for (int i = 0; i < 20; ++i) {
        std::copy(logits.begin(), logits.end(), scratch.begin());
        sampler.Sample(scratch, history);
      }
      std::span<float> smaller(scratch.data(), 1000);
      sampler.Sample(smaller, history);
      EXPECT_EQ(g_allocations.load(), before) << "T " << temperature << " top_k " << top_k;
    }
  }
}

TEST(Sampler, DefaultsOnALargeVocabularyStayInTheTopK) {
  // 50 draws with the defaults on 32000 random logits: every token is one of the 40 best.
  const std::vector<float> logits = RandomLogits(32000, 4, 8.0);
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::partial_sort(order.begin(), order.begin() + 40, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const std::set<int32_t> top40(order.begin(), order.begin() + 40);
  Sampler sampler(SamplerConfig{});
  std::vector<float> scratch;
  for (int i = 0; i < 50; ++i) {
    scratch = logits;
    EXPECT_TRUE(top40.count(sampler.Sample(scratch, {})));
  }
}

}  // namespace
}  // namespace starling
