// Pretraining data: a token stream cut into windows, and the order they are visited in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/step.h"

namespace starling {

// The order of epoch `epoch` over n examples: a Fisher-Yates shuffle of [0, n) driven by
// mt19937_64(seed + epoch) (i from n-1 down to 1 swaps i with rng() mod (i+1)).
std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int64_t epoch);

// The example at data position s (examples consumed since the start of the run) of n: s mod n
// without shuffling, else perm_e[s mod n] of epoch e = s / n, perm_e = EpochPermutation(n,
// seed, e) (computed once per epoch).
class EpochOrder {
 public:
  EpochOrder(int64_t n, bool shuffle, uint64_t seed) : n_(n), shuffle_(shuffle), seed_(seed) {}
  int64_t operator()(int64_t position);

 private:
  int64_t n_;
  bool shuffle_;
  uint64_t seed_;
  int64_t epoch_ = -1;  // of perm_
  std::vector<int64_t> perm_;
};

// Window i is tokens[i*T .. i*T+T] (T+1 tokens: inputs the first T, targets the last T); there
// are floor((n-1)/T) windows. Sample s (= step * B + j) is window EpochOrder(W, shuffle,
// seed)(s).
class TokenWindows {
 public:
  // Throws naming `source` when the stream has fewer than T + 1 tokens.
  TokenWindows(std::vector<int32_t> tokens, int64_t ctx, const std::string& source);
  int64_t count() const { return count_; }
  int64_t ctx() const { return ctx_; }
  // Appends window w to the batch: T inputs, T targets, weights 1, one sequence of length T.
  void Append(int64_t w, TokenBatch* batch) const;

 private:
  std::vector<int32_t> tokens_;
  int64_t ctx_, count_;
};

}  // namespace starling
