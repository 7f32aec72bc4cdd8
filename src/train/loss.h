// Heads and their losses for training, each forward beside its backward: the language-model
// head with cross-entropy under per-token weights, a scalar head read at chosen rows (reward
// and value models), and the ranking losses of reward-model training.
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

enum class RankingLossKind { kKWise, kPairwise };

// The loss of one prompt's K >= 2 answers from their rewards r[K], ordered best first:
//   kKWise (Plackett-Luce maximum likelihood, Zhu, Jiao and Jordan 2023; normalized by K - 1 as
//     Starling-RM's training does):  L = -sum_{j=1..K} [ r_j - log sum_{k>=j} e^{r_k} ] / (K - 1)
//   kPairwise (Bradley-Terry over every ordered pair):
//     L = mean over i < j of -log sigmoid(r_i - r_j)
// plus zero_sum * (sum_j r_j)^2 (Starling's option to centre the rewards). Computed in double.
// Writes scale * dL/dr into dscores[K] and returns L (unscaled).
double RankingLoss(RankingLossKind kind, std::span<const float> rewards, double zero_sum,
                   double scale, std::span<float> dscores);

// DPO (Rafailov et al. 2023) for one preference pair, from the summed response log-probs of the
// chosen (w) and rejected (l) answers under the policy (pw, pl) and the reference (rw, rl):
//   z = beta * ((pw - rw) - (pl - rl)),   L = -log sigmoid(z) = log(1 + e^{-z})
// dL/dpw = -beta * sigmoid(-z) into *dpw, dL/dpl = +beta * sigmoid(-z) into *dpl. In double.
double DpoLoss(double beta, double pw, double rw, double pl, double rl, double* dpw, double* dpl);

}  // namespace starling
