// Heads and their losses for training, each forward beside its backward: the language-model
// head with cross-entropy under per-token weights, and a scalar head read at chosen rows
// (reward and value models).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace starling {

// Working memory for LmHeadCrossEntropy, kept between steps.
struct LossScratch {
  std::vector<float> logits;  // [chunk, V]
};

// The language-model head W[V, D] over hidden[N, D] and cross-entropy against targets[N]:
//   loss = sum_i weights[i] * CE_i / normalizer,   CE_i = logsumexp(logits_i) - logits_i[target_i]
// (weight 0 masks a token: its logits are not even computed). Pretraining: weights 1 and
// normalizer N (the mean); SFT: the number of trained tokens. Writes dhidden[N, D] (d loss /
// d hidden) and adds d loss / d W into dw[V, D] unless null. Rows go in chunks of 256 so the
// logits take [256, V] floats whatever N is. Per-token CE into `token_losses`[N] when not
// empty (0 for masked tokens). Returns the loss (sums in double).
double LmHeadCrossEntropy(const float* w, int64_t vocab, const float* hidden, int64_t n, int64_t d,
                          std::span<const int32_t> targets, std::span<const float> weights,
                          double normalizer, float* dhidden, float* dw, LossScratch& scratch,
                          std::span<float> token_losses = {});

// A scalar head w[D] read at rows[i] of hidden[N, D]: values[i] = w . hidden[rows[i]].
void ScalarHead(const float* w, const float* hidden, int64_t d, std::span<const int64_t> rows,
                std::span<float> values);
// Its backward from dvalues[i]: dhidden[rows[i]] += dvalues[i] w; dw[D] += dvalues[i]
// hidden[rows[i]] (unless null), in index order.
void ScalarHeadBackward(const float* w, const float* hidden, int64_t d,
                        std::span<const int64_t> rows, std::span<const float> dvalues,
                        float* dhidden, float* dw);

}  // namespace starling
