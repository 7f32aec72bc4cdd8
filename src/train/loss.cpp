#include "train/loss.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"

namespace starling {
double LmHeadCrossEntropy(const float* w, int64_t vocab, const float* hidden, int64_t n, int64_t d,
                          std::span<const int32_t> targets, std::span<const float> weights,
                          double normalizer, float* dhidden, float* dw, LossScratch& scratch,
                          std::span<float> token_losses) {
  if (static_cast<int64_t>(targets.size()) != n || static_cast<int64_t>(weights.size()) != n) {
    Fail("cross-entropy: ", n, " rows but ", targets.size(), " targets and ", weights.size(),
         " weights");
  }
  if (!(normalizer > 0)) Fail("cross-entropy: the normalizer must be positive");
  constexpr int64_t kChunk = 256;
  scratch.logits.resize(static_cast<size_t>(std::min(n, kChunk) * vocab));
  std::fill(dhidden, dhidden + n * d, 0.0f);
  std::vector<double> row_loss(static_cast<size_t>(std::min(n, kChunk)));
  double total = 0.0;
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    // The chunk's rows with nonzero weight, packed (masked rows cost nothing).
    std::vector<int64_t> rows;
    for (int64_t i = begin; i < std::min(n, begin + kChunk); ++i) {
      if (weights[i] != 0.0f) rows.push_back(i);
      if (targets[i] < 0 || targets[i] >= vocab) {
        Fail("cross-entropy: target ", targets[i], " at row ", i, " is outside the vocabulary (",
             vocab, ")");
      }
    }
    const auto m = static_cast<int64_t>(rows.size());
    if (m == 0) continue;
    std::vector<float> packed(static_cast<size_t>(m * d));
    for (int64_t r = 0; r < m; ++r) std::copy_n(&hidden[rows[r] * d], d, &packed[r * d]);
    float* logits = scratch.logits.data();  // [m, V]
    GemmForward(packed.data(), w, m, d, vocab, logits);
    // Per row: loss and d loss / d logits = weight / normalizer * (softmax - onehot), in place.
    const auto exp_row = dispatch::ExpRow;
    ThreadPool::Global().ParallelFor(m, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t r = b; r < e; ++r) {
        float* z = &logits[r * vocab];
        const int64_t i = rows[r];
        float max_value = z[0];
        for (int64_t v = 1; v < vocab; ++v) max_value = std::max(max_value, z[v]);
        const float target_shifted = z[targets[i]] - max_value;
        for (int64_t v = 0; v < vocab; ++v) z[v] -= max_value;
        exp_row(z, vocab, z);  // e^(z - max), ExpFast's bits at every SIMD level
        double sum = 0.0;
        for (int64_t v = 0; v < vocab; ++v) sum += z[v];
        row_loss[r] = std::log(sum) - target_shifted;  // logsumexp(z) - z[target]
        // d loss / d z = weight / normalizer * (softmax - onehot), in place.
        const auto scale_over_sum = static_cast<float>(weights[i] / normalizer / sum);
        for (int64_t v = 0; v < vocab; ++v) z[v] *= scale_over_sum;
        const double scale = weights[i] / normalizer;
        z[targets[i]] -= static_cast<float>(scale);
      }
    });
    for (int64_t r = 0; r < m; ++r) {
      total += weights[rows[r]] * row_loss[r];
      if (!token_losses.empty()) token_losses[rows[r]] = static_cast<float>(row_loss[r]);
    }
    // logits = packed W^T: d packed [m, D] = dlogits W; dW += dlogits^T packed.
    std::vector<float> dpacked(static_cast<size_t>(m * d));
    LinearBackward(packed.data(), w, logits, m, d, vocab, dpacked.data(), false, dw);
    for (int64_t r = 0; r < m; ++r) std::copy_n(&dpacked[r * d], d, &dhidden[rows[r] * d]);
  }
  return total / normalizer;
}

void ScalarHead(const float* w, const float* hidden, int64_t d, std::span<const int64_t> rows,
                std::span<float> values) {
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* h = &hidden[rows[i] * d];
    float acc = 0.0f;
    for (int64_t k = 0; k < d; ++k) acc += w[k] * h[k];
    values[i] = acc;
  }
}

void ScalarHeadBackward(const float* w, const float* hidden, int64_t d,
                        std::span<const int64_t> rows, std::span<const float> dvalues,
                        float* dhidden, float* dw) {
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* h = &hidden[rows[i] * d];
    float* dh = &dhidden[rows[i] * d];
    for (int64_t k = 0; k < d; ++k) {
      dh[k] += dvalues[i] * w[k];
      if (dw) dw[k] += dvalues[i] * h[k];
    }
  }
}

double RankingLoss(RankingLossKind kind, std::span<const float> rewards, double zero_sum,
                   double scale, std::span<float> dscores) {
  const auto k = static_cast<int64_t>(rewards.size());
  if (k < 2) Fail("a ranking needs at least 2 answers, not ", k);
  if (static_cast<int64_t>(dscores.size()) != k)
    Fail("ranking loss: ", k, " rewards but ", dscores.size(), " gradients");
  std::vector<double> r(rewards.begin(), rewards.end()), g(static_cast<size_t>(k), 0.0);
  double loss = 0.0;
  if (kind == RankingLossKind::kKWise) {
    // Term j: -(r_j - lse_j), lse_j = log sum_{i>=j} e^{r_i}; d/dr_i = softmax_j(i) - [i == j].
    const double norm = 1.0 / static_cast<double>(k - 1);
    for (int64_t j = 0; j < k; ++j) {
      double top = r[j];
      for (int64_t i = j; i < k; ++i) top = std::max(top, r[i]);
      double sum = 0.0;
      for (int64_t i = j; i < k; ++i) sum += std::exp(r[i] - top);
      const double lse = top + std::log(sum);
      loss += (lse - r[j]) * norm;
      for (int64_t i = j; i < k; ++i) g[i] += std::exp(r[i] - lse) * norm;
      g[j] -= norm;
    }
  } else {
    // -log sigmoid(d) = log(1 + e^{-d}), d = r_i - r_j; d/dd = -sigmoid(-d).
    const double norm = 2.0 / static_cast<double>(k * (k - 1));
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = i + 1; j < k; ++j) {
        const double d = r[i] - r[j];
        loss += (d > 0 ? std::log1p(std::exp(-d)) : -d + std::log1p(std::exp(d))) * norm;
        const double s = d > 0 ? std::exp(-d) / (1.0 + std::exp(-d)) : 1.0 / (1.0 + std::exp(d));
        g[i] -= s * norm;
        g[j] += s * norm;
      }
    }
  }
  if (zero_sum != 0.0) {
    double sum = 0.0;
    for (const double x : r) sum += x;
    loss += zero_sum * sum * sum;
    for (double& x : g) x += 2.0 * zero_sum * sum;
  }
  for (int64_t i = 0; i < k; ++i) dscores[i] = static_cast<float>(scale * g[i]);
  return loss;
}

double DpoLoss(double beta, double pw, double rw, double pl, double rl, double* dpw, double* dpl) {
  const double z = beta * ((pw - rw) - (pl - rl));
  // log(1 + e^{-z}) and sigmoid(-z), each without overflow.
  const double loss = z > 0 ? std::log1p(std::exp(-z)) : -z + std::log1p(std::exp(z));
  const double s = z > 0 ? std::exp(-z) / (1.0 + std::exp(-z)) : 1.0 / (1.0 + std::exp(z));
  *dpw = -beta * s;
  *dpl = beta * s;
  return loss;
}

}  // namespace starling
