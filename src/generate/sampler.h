// Token sampling: turns one step's logits into the next token id.
//
// The chain follows llama.cpp's default `common_sampler` order, so users see familiar
// behaviour for the same settings:
//
//   1. repetition penalty  on the distinct tokens among the last repeat_last_n of history
//   2. greedy              if temperature < 1e-6: argmax (ties -> lowest id), stop here
//   3. top-k               keep the k highest logits
//   4. top-p (nucleus)     keep the smallest set of most probable tokens whose cumulative
//                          probability reaches top_p (always at least one)
//   5. min-p               keep tokens with p >= min_p * p_max
//   6. temperature         divide the surviving logits by T
//   7. softmax and draw    with the sampler's own seeded RNG
//
// As in llama.cpp, top-p and min-p see probabilities of the un-tempered logits (softmax over
// the tokens that survived the previous stage); temperature only reshapes the distribution
// among the survivors.
//
// Where this differs from llama.cpp (all deliberate, see sampler.cpp for the reasons):
//   - NaN logits count as -inf and +inf as the largest float; tokens at -inf are dropped
//     before top-k. If every logit is NaN or -inf, Sample throws starling::Error.
//   - Greedy below T = 1e-6 rather than at T <= 0: such temperatures are argmax up to
//     rounding anyway, and dividing by them overflows.
//   - Ties are broken by the lower token id everywhere (argmax, top-k, top-p order), so the
//     result never depends on how a standard library orders equal elements.
//   - The top-p and min-p thresholds allow a relative slack of 1e-6, so a boundary written
//     in decimal (0.5 + 0.3 reaching top_p = 0.8) behaves as written despite float rounding.
//   - The draw uses std::mt19937_64 and a 53-bit uniform double, not llama.cpp's
//     std::mt19937 + std::uniform_real_distribution, so a seed gives the same tokens on every
//     platform but not the same tokens as llama.cpp with that seed.
//   - History ids outside [0, V) are ignored by the penalty (llama.cpp never matches them
//     either); top_p = 0 is rejected rather than meaning "keep one token".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace starling {

struct SamplerConfig {
  float temperature = 0.8f;     // < 1e-6 (e.g. 0): greedy argmax, ties -> lowest id
  int32_t top_k = 40;           // 0: off (negative: an error)
  float top_p = 0.95f;          // in (0, 1]; 1: off
  float min_p = 0.05f;          // in [0, 1]; 0: off
  float repeat_penalty = 1.0f;  // > 0; 1: off. logit > 0 ? logit / p : logit * p (CTRL)
  int32_t repeat_last_n = 64;   // recent tokens the penalty looks at; -1: all; 0: off
  uint64_t seed = 0;            // the same seed gives the same draws on every platform

  // Throws starling::Error naming the first bad field and its allowed range.
  void Validate() const;
};

// One surviving token of the filter chain.
struct SamplerCandidate {
  int32_t id;
  float logit;  // after the repetition penalty (+inf read as FLT_MAX), before temperature
};

class Sampler {
 public:
  // Validates the config (throws starling::Error) and seeds the RNG with config.seed.
  explicit Sampler(const SamplerConfig& config);

  // Picks the next token. `logits` has one entry per vocabulary id and is used as scratch:
  // its contents are unspecified afterwards. `history` is every token so far (prompt and
  // generated), for the repetition penalty. After the first call with a given vocabulary
  // size, calls with that size (or a smaller one) do not allocate.
  int32_t Sample(std::span<float> logits, std::span<const int32_t> history);

  // Runs stages 1-5 and returns the survivors, for inspection (tests, "show alternatives"
  // UIs): in descending logit order (ties by id) when top-k or top-p ran, in id order
  // otherwise; that order is also the order in which the draw accumulates probability.
  // Greedy returns the argmax alone. The span is valid until the next call on this Sampler.
  std::span<const SamplerCandidate> Filter(std::span<float> logits,
                                           std::span<const int32_t> history);

  // Stage 1 alone, in place.
  void ApplyRepetitionPenalty(std::span<float> logits, std::span<const int32_t> history);

  // Restarts the RNG stream: after Reseed(s), draws repeat those of a new Sampler with seed s.
  void Reseed(uint64_t seed) { rng_.seed(seed); }

  const SamplerConfig& config() const { return config_; }

 private:
  bool greedy() const;
  int32_t ArgMax(std::span<const float> logits) const;
  size_t Gather(std::span<const float> logits);  // fills candidates_, returns the count
  size_t TopK(size_t n, bool* sorted);
  // Sum of exp(logit - max) over candidates [0, n); with `histogram`, also fills bucket_mass_.
  double SumWeights(size_t n, bool histogram);
  size_t TopP(size_t n, double total, bool* sorted);
  size_t MinP(size_t n, bool sorted);
  int32_t Draw(size_t n);
  void Reserve(size_t vocab_size);

  SamplerConfig config_;
  std::mt19937_64 rng_;
  // Scratch, sized to the largest vocabulary seen so that Sample never allocates after.
  std::vector<SamplerCandidate> candidates_;
  std::vector<float> weights_;  // unnormalized probabilities of the survivors
  std::vector<uint8_t> seen_;   // marks tokens already penalized in this call
  // Top-p's histogram of the probability mass by distance below the max logit.
  static constexpr size_t kTopPBuckets = 64;
  static size_t BucketOf(double max_logit, float logit);
  std::array<double, kTopPBuckets + 1> bucket_mass_{};
  float max_logit_ = 0.0f;  // the largest candidate logit, set by Gather
};

}  // namespace starling
