#include "train/data.h"

#include <random>
#include <utility>

#include "core/error.h"

namespace starling {

std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  std::mt19937_64 rng(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i >= 1; --i) {
    std::swap(perm[i], perm[rng() % static_cast<uint64_t>(i + 1)]);
  }
  return perm;
}

TokenWindows::TokenWindows(std::vector<int32_t> tokens, int64_t ctx, const std::string& source)
    : tokens_(std::move(tokens)), ctx_(ctx) {
  if (ctx < 1) Fail("--ctx must be at least 1, not ", ctx);
  const auto n = static_cast<int64_t>(tokens_.size());
  count_ = n >= 1 ? (n - 1) / ctx : 0;
  if (count_ < 1) {
    Fail(source, ": ", n, " tokens, too few for one training window of --ctx ", ctx, " (needs ",
         ctx + 1, ")");
  }
}

int64_t EpochOrder::operator()(int64_t position) {
  const int64_t within = position % n_;
  if (!shuffle_) return within;
  const int64_t epoch = position / n_;
  if (epoch != epoch_) {
    perm_ = EpochPermutation(n_, seed_, epoch);
    epoch_ = epoch;
  }
  return perm_[within];
}

void TokenWindows::Append(int64_t w, TokenBatch* b) const {
  const int32_t* window = &tokens_[w * ctx_];
  b->inputs.insert(b->inputs.end(), window, window + ctx_);
  b->targets.insert(b->targets.end(), window + 1, window + ctx_ + 1);
  b->weights.insert(b->weights.end(), static_cast<size_t>(ctx_), 1.0f);
  b->lengths.push_back(ctx_);
}

}  // namespace starling
