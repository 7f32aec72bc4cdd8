#include "generate/sampler.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace starling {
namespace {

// Below this temperature the draw would be argmax up to rounding anyway, and dividing by
// it could overflow; greedy is exact and cheaper.
constexpr float kGreedyTemperature = 1e-6f;

// The top-p and min-p thresholds are user decimals stored as floats and compared with sums
// of float-derived probabilities: 0.5 + 0.3 may land a few ulps below 0.8f. A relative slack
// far above float rounding (~1e-7) and far below any meaningful probability mass makes
// boundary cases behave as written.
constexpr double kThresholdSlack = 1e-6;

// Top-k selects with a heap (std::partial_sort) up to this k, where it beats nth_element
// several times over on 32000 candidates; beyond it, nth_element and a sort of the k.
constexpr size_t kMaxHeapSelect = 512;

// Top-p's histogram resolution: a bucket spans 1/4 logit, a factor e^0.25 = 1.28 in p.
constexpr double kBucketsPerLogit = 4.0;

// The canonical candidate order: higher logit first, then lower id. A strict total order
// (logits are never NaN here), so every sort and selection gives the same survivors in the
// same order on every standard library.
// (A function object rather than a function, so that the sorts inline it.)
struct Before {
  bool operator()(const SamplerCandidate& a, const SamplerCandidate& b) const {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  }
};

// exp(x) for x <= 0, in float: several times faster than double exp over a 32000-token
// vocabulary, and probabilities need no more than float precision (their sums are kept in
// double). The clamp keeps the conversion to float defined; e^-150 is 0 in float anyway.
float ExpNonPositive(double x) {
  return std::exp(static_cast<float>(std::max(x, -150.0)));
}

// 53 random bits -> a double in [0, 1), identical on every platform, unlike
// std::uniform_real_distribution whose algorithm is implementation-defined.
double UniformDouble(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

}  // namespace

void SamplerConfig::Validate() const {
  // Written as !(valid) so that NaN, which fails every comparison, is rejected too.
  if (!(std::isfinite(temperature) && temperature >= 0.0f)) {
    Fail("temperature = ", temperature, " is out of range: must be finite and >= 0");
  }
  if (top_k < 0) Fail("top_k = ", top_k, " is out of range: must be >= 0 (0 is off)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    Fail("top_p = ", top_p, " is out of range (0, 1]");
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    Fail("min_p = ", min_p, " is out of range [0, 1]");
  }
  if (!(std::isfinite(repeat_penalty) && repeat_penalty > 0.0f)) {
    Fail("repeat_penalty = ", repeat_penalty, " is out of range: must be finite and > 0");
  }
  if (repeat_last_n < -1) {
    Fail("repeat_last_n = ", repeat_last_n, " is out of range: must be >= -1 (-1 means all)");
  }
}

Sampler::Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) {
  config_.Validate();
}

// Top-p's histogram: bucket b holds candidates with max_logit - logit in [b, b + 1) / 4, the
// last bucket everything further down. Monotone in the logit, so lower buckets hold only
// better candidates in the canonical order.
size_t Sampler::BucketOf(double max_logit, float logit) {
  const double scaled = (max_logit - logit) * kBucketsPerLogit;
  return scaled < static_cast<double>(kTopPBuckets) ? static_cast<size_t>(scaled) : kTopPBuckets;
}

bool Sampler::greedy() const {
  return config_.temperature < kGreedyTemperature;
}

void Sampler::Reserve(size_t vocab_size) {
  if (vocab_size > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    Fail("vocabulary size ", vocab_size, " does not fit token ids of 32 bits");
  }
  // Grow only: a smaller vocabulary reuses the buffers, so steady state never allocates.
  if (candidates_.size() < vocab_size) {
    candidates_.resize(vocab_size);
    weights_.resize(vocab_size);
  }
  if (seen_.size() < vocab_size) seen_.resize(vocab_size, 0);
}

void Sampler::ApplyRepetitionPenalty(std::span<float> logits, std::span<const int32_t> history) {
  const float penalty = config_.repeat_penalty;
  if (penalty == 1.0f || config_.repeat_last_n == 0 || history.empty()) return;
  Reserve(logits.size());
  const size_t window = config_.repeat_last_n < 0
                            ? history.size()
                            : std::min(history.size(), static_cast<size_t>(config_.repeat_last_n));
  const std::span<const int32_t> recent = history.last(window);
  const auto vocab = static_cast<int64_t>(logits.size());
  // Each distinct token is penalized once however often it repeats (llama.cpp's repeat
  // penalty ignores the count). seen_ is all zero between calls: it is cleared below.
  for (const int32_t token : recent) {
    if (token < 0 || token >= vocab || seen_[token]) continue;
    seen_[token] = 1;
    float& logit = logits[token];
    // CTRL divides; multiplying negative logits instead keeps the penalty a penalty.
    logit = logit > 0.0f ? logit / penalty : logit * penalty;
  }
  for (const int32_t token : recent) {
    if (token >= 0 && token < vocab) seen_[token] = 0;
  }
}

int32_t Sampler::ArgMax(std::span<const float> logits) const {
  // Strict > keeps the lowest id among ties and never picks NaN or -inf.
  int32_t best = -1;
  float best_logit = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] > best_logit) {
      best_logit = logits[i];
      best = static_cast<int32_t>(i);
    }
  }
  if (best < 0) Fail("all logits are NaN or -inf");
  return best;
}

size_t Sampler::Gather(std::span<const float> logits) {
  // Tokens at -inf (or NaN, treated as -inf) can never be drawn; dropping them here keeps
  // them out of top-k and shortens every later pass. +inf becomes the largest float so that
  // the softmax stays finite: all +inf tokens then share the mass equally.
  size_t n = 0;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    float logit = logits[i];
    if (!(logit > -std::numeric_limits<float>::infinity())) continue;
    if (logit > FLT_MAX) logit = FLT_MAX;
    candidates_[n++] = {static_cast<int32_t>(i), logit};
    max_logit = std::max(max_logit, logit);
  }
  if (n == 0) Fail("all logits are NaN or -inf");
  max_logit_ = max_logit;
  return n;
}

size_t Sampler::TopK(size_t n, bool* sorted) {
  if (config_.top_k <= 0 || static_cast<size_t>(config_.top_k) >= n) return n;
  const auto k = static_cast<size_t>(config_.top_k);
  const auto begin = candidates_.begin();
  // The k survivors end up sorted, which the draw order needs and top-p then reuses.
  if (k <= kMaxHeapSelect) {
    std::partial_sort(begin, begin + k, begin + n, Before{});
  } else {
    std::nth_element(begin, begin + k, begin + n, Before{});
    std::sort(begin, begin + k, Before{});
  }
  *sorted = true;
  return k;
}

double Sampler::SumWeights(size_t n, bool histogram) {
  const double max_logit = max_logit_;
  double total = 0.0;
  if (!histogram) {
    for (size_t i = 0; i < n; ++i) total += ExpNonPositive(candidates_[i].logit - max_logit);
    return total;
  }
  bucket_mass_.fill(0.0);
  for (size_t i = 0; i < n; ++i) {
    const float w = ExpNonPositive(candidates_[i].logit - max_logit);
    total += w;
    bucket_mass_[BucketOf(max_logit, candidates_[i].logit)] += w;
  }
  return total;
}

size_t Sampler::TopP(size_t n, double total, bool* sorted) {
  if (n <= 1) return n;
  const auto begin = candidates_.begin();
  const double max_logit = max_logit_;
  const double target = static_cast<double>(config_.top_p) * (1.0 - kThresholdSlack) * total;
  const auto accumulate = [&](size_t i, double* cumulative) {
    *cumulative += ExpNonPositive(candidates_[i].logit - max_logit);
    return *cumulative >= target;
  };
  double cumulative = 0.0;
  if (*sorted) {
    for (size_t i = 0; i < n; ++i) {
      if (accumulate(i, &cumulative)) return i + 1;
    }
    return n;
  }

  // Unsorted (no top-k): rather than sort up to 32000 candidates, find from the histogram
  // the first bucket where the mass reaches top_p, bring the candidates of the buckets up
  // to it forward (O(n)) and sort only those. The histogram's sum may round differently
  // from the scan's, and min-p may have removed candidates it counted; then the scan runs
  // out first and takes in the next bucket.
  size_t limit = 0;
  double mass = bucket_mass_[0];
  while (limit < kTopPBuckets && mass < target) mass += bucket_mass_[++limit];
  size_t sorted_end = 0;
  size_t i = 0;
  for (;;) {
    const auto mid = std::partition(begin + sorted_end, begin + n, [&](const SamplerCandidate& c) {
      return BucketOf(max_logit, c.logit) <= limit;
    });
    std::sort(begin + sorted_end, mid, Before{});
    sorted_end = static_cast<size_t>(mid - begin);
    for (; i < sorted_end; ++i) {
      if (accumulate(i, &cumulative)) {
        *sorted = true;
        return i + 1;
      }
    }
    // The last bucket takes everything, so this ends.
    if (sorted_end == n) break;
    ++limit;
  }
  // Every candidate is in the nucleus (or min-p already cut it shorter than top-p would).
  *sorted = true;
  return n;
}

size_t Sampler::MinP(size_t n, bool sorted) {
  if (config_.min_p <= 0.0f) return n;
  // p_i >= min_p * p_max  <=>  logit_i - max_logit >= log(min_p), with no softmax needed.
  // The max always survives: log(min_p) <= 0.
  const double min_delta =
      std::log(static_cast<double>(config_.min_p)) + std::log1p(-kThresholdSlack);
  const double max_logit = max_logit_;
  const auto keep = [&](const SamplerCandidate& c) { return c.logit - max_logit >= min_delta; };
  const auto begin = candidates_.begin();
  if (sorted) {
    return static_cast<size_t>(std::partition_point(begin, begin + n, keep) - begin);
  }
  // remove_if is stable, so the survivors stay in id order.
  return static_cast<size_t>(
      std::remove_if(begin, begin + n, [&](const SamplerCandidate& c) { return !keep(c); }) -
      begin);
}

int32_t Sampler::Draw(size_t n) {
  // softmax(logit / T) with the max subtracted first, in double: (logit - max) / T cannot
  // overflow even for T = 1e-6, and its exp is at most 1.
  const double inv_temperature = 1.0 / static_cast<double>(config_.temperature);
  const double max_logit = max_logit_;
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float w = ExpNonPositive((candidates_[i].logit - max_logit) * inv_temperature);
    weights_[i] = w;
    total += w;
  }
  // Pick the first candidate whose running sum exceeds u * total. Strict > means a token
  // whose weight underflowed to 0 can never be picked.
  const double target = UniformDouble(rng_) * total;
  double cumulative = 0.0;
  size_t last_positive = 0;
  for (size_t i = 0; i < n; ++i) {
    if (weights_[i] <= 0.0f) continue;
    last_positive = i;
    cumulative += weights_[i];
    if (cumulative > target) return candidates_[i].id;
  }
  // u * total rounded up to total (u is at most 1 - 2^-53): take the last possible token.
  return candidates_[last_positive].id;
}

std::span<const SamplerCandidate> Sampler::Filter(std::span<float> logits,
                                                  std::span<const int32_t> history) {
  if (logits.empty()) Fail("sampler: the logits are empty (vocabulary size 0)");
  Reserve(logits.size());
  ApplyRepetitionPenalty(logits, history);
  if (greedy()) {
    const int32_t id = ArgMax(logits);
    candidates_[0] = {id, logits[id]};
    max_logit_ = logits[id];
    return {candidates_.data(), 1};
  }
  size_t n = Gather(logits);
  bool sorted = false;
  n = TopK(n, &sorted);
  if (config_.top_p < 1.0f) {
    // Top-p normalizes over the top-k survivors, so take that sum before min-p shrinks
    // the set. Top-p and min-p each keep a prefix of the canonical order, and min-p's
    // threshold (relative to p_max) does not depend on top-p, so "top-p then min-p" keeps
    // the shorter prefix either way; running min-p first lets top-p sort only what min-p
    // kept, usually a handful of tokens instead of the whole vocabulary.
    const double total = SumWeights(n, /*histogram=*/!sorted);
    n = MinP(n, sorted);
    n = TopP(n, total, &sorted);
  } else {
    n = MinP(n, sorted);
  }
  return {candidates_.data(), n};
}

int32_t Sampler::Sample(std::span<float> logits, std::span<const int32_t> history) {
  if (greedy()) {
    // Filters cannot change the argmax, so skip them (and the RNG).
    if (logits.empty()) Fail("sampler: the logits are empty (vocabulary size 0)");
    ApplyRepetitionPenalty(logits, history);
    return ArgMax(logits);
  }
  const size_t n = Filter(logits, history).size();
  return Draw(n);
}

}  // namespace starling
