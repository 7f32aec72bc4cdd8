// An independent, naive Llama/Mistral forward and language-modelling loss, generic over the
// scalar type: double for reference losses, std::complex<double> for complex-step derivatives
// (d f / d x = Im f(x + i h) / h, exact to rounding for tiny h: no cancellation, unlike finite
// differences). Written from the Hugging Face semantics, sharing no code with src/.
#pragma once

#include <cmath>
#include <complex>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace starling::reference {

inline double Real(double x) {
  return x;
}
inline double Real(const std::complex<double>& x) {
  return x.real();
}

// Tensors by canonical name, row-major, as T.
template <typename T>
using Weights = std::map<std::string, std::vector<T>>;

template <typename T>
std::vector<T> Linear(const std::vector<T>& w, int64_t out, int64_t in, const std::vector<T>& x,
                      int64_t n) {  // x [n, in] -> [n, out]
  std::vector<T> y(static_cast<size_t>(n * out), T(0));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      T acc(0);
      for (int64_t i = 0; i < in; ++i) acc += w[o * in + i] * x[t * in + i];
      y[t * out + o] = acc;
    }
  return y;
}

template <typename T>
std::vector<T> Norm(const std::vector<T>& x, const std::vector<T>& w, int64_t n, int64_t d,
                    double eps) {
  std::vector<T> y(x.size());
  for (int64_t t = 0; t < n; ++t) {
    T ss(0);
    for (int64_t i = 0; i < d; ++i) ss += x[t * d + i] * x[t * d + i];
    const T r = T(1) / std::sqrt(ss / T(static_cast<double>(d)) + T(eps));
    for (int64_t i = 0; i < d; ++i) y[t * d + i] = x[t * d + i] * r * w[i];
  }
  return y;
}

template <typename T>
void Rope(std::vector<T>& v, int64_t n, int64_t heads, int64_t hd, const std::vector<int64_t>& pos,
          double theta, bool interleaved) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < hd / 2; ++i) {
        // float32 angles, as Hugging Face and the engine compute them
        const float inv = static_cast<float>(
            1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(hd)));
        const double angle = static_cast<double>(static_cast<float>(pos[t]) * inv);
        const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + hd / 2;
        T* x = &v[(t * heads + h) * hd];
        const T x0 = x[a], x1 = x[b];
        x[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
        x[b] = x1 * std::cos(angle) + x0 * std::sin(angle);
      }
}

// The final hidden states [N, D] (after the final norm) of sequences laid end to end.
template <typename T>
std::vector<T> Hidden(const ModelConfig& c, const Weights<T>& W,
                      const std::vector<int64_t>& lengths, const std::vector<int32_t>& inputs) {
  const int64_t n = static_cast<int64_t>(inputs.size()), d = c.hidden_size, hd = c.head_dim;
  const int64_t H = c.num_heads, KVH = c.num_kv_heads, F = c.intermediate_size;
  const bool inter = c.rope_layout == RopeLayout::kInterleaved;
  std::vector<int64_t> pos, start;
  int64_t s0 = 0;
  for (int64_t len : lengths) {
    for (int64_t p = 0; p < len; ++p) pos.push_back(p), start.push_back(s0);
    s0 += len;
  }
  auto w = [&](const std::string& name) -> const std::vector<T>& { return W.at(name); };
  std::vector<T> x(static_cast<size_t>(n * d));
  const auto& emb = w("model.embed_tokens.weight");
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < d; ++i) x[t * d + i] = emb[inputs[t] * d + i];
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto xn = Norm(x, w(p + "input_layernorm.weight"), n, d, c.rms_norm_eps);
    auto q = Linear(w(p + "self_attn.q_proj.weight"), H * hd, d, xn, n);
    auto k = Linear(w(p + "self_attn.k_proj.weight"), KVH * hd, d, xn, n);
    const auto v = Linear(w(p + "self_attn.v_proj.weight"), KVH * hd, d, xn, n);
    Rope(q, n, H, hd, pos, c.rope_theta, inter);
    Rope(k, n, KVH, hd, pos, c.rope_theta, inter);
    std::vector<T> att(static_cast<size_t>(n * H * hd), T(0));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / (H / KVH);
        const int64_t first =
            c.sliding_window > 0 ? std::max<int64_t>(0, pos[t] - c.sliding_window + 1) : 0;
        std::vector<T> s;
        double mx = -1e300;
        for (int64_t j = first; j <= pos[t]; ++j) {
          T dot(0);
          for (int64_t i = 0; i < hd; ++i)
            dot += q[(t * H + h) * hd + i] * k[((start[t] + j) * KVH + kvh) * hd + i];
          s.push_back(dot / std::sqrt(static_cast<double>(hd)));
          mx = std::max(mx, Real(s.back()));
        }
        T z(0);
        for (T& e : s) z += (e = std::exp(e - T(mx)));
        for (int64_t j = first; j <= pos[t]; ++j)
          for (int64_t i = 0; i < hd; ++i)
            att[(t * H + h) * hd + i] +=
                s[j - first] / z * v[((start[t] + j) * KVH + kvh) * hd + i];
      }
    const auto o = Linear(w(p + "self_attn.o_proj.weight"), d, H * hd, att, n);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const auto xn2 = Norm(x, w(p + "post_attention_layernorm.weight"), n, d, c.rms_norm_eps);
    auto g = Linear(w(p + "mlp.gate_proj.weight"), F, d, xn2, n);
    const auto u = Linear(w(p + "mlp.up_proj.weight"), F, d, xn2, n);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
    const auto down = Linear(w(p + "mlp.down_proj.weight"), d, F, g, n);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  return Norm(x, w("model.norm.weight"), n, d, c.rms_norm_eps);
}

// log p(targets[t]) for every row t of sequences laid end to end (the LM head's softmax).
template <typename T>
std::vector<T> TargetLogProbs(const ModelConfig& c, const Weights<T>& W,
                              const std::vector<int64_t>& lengths,
                              const std::vector<int32_t>& inputs,
                              const std::vector<int32_t>& targets) {
  const int64_t n = static_cast<int64_t>(inputs.size()), d = c.hidden_size, V = c.vocab_size;
  const auto h = Hidden(c, W, lengths, inputs);
  const auto& head =
      c.tie_word_embeddings ? W.at("model.embed_tokens.weight") : W.at("lm_head.weight");
  std::vector<T> out;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<T> z(static_cast<size_t>(V));
    double mx = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      T acc(0);
      for (int64_t i = 0; i < d; ++i) acc += head[v * d + i] * h[t * d + i];
      z[v] = acc;
      mx = std::max(mx, Real(acc));
    }
    T sum(0);
    for (const T& e : z) sum += std::exp(e - T(mx));
    out.push_back(z[targets[t]] - T(mx) - std::log(sum));
  }
  return out;
}

// The mean-or-weighted LM loss sum_i w_i CE_i / normalizer over sequences laid end to end.
template <typename T>
T LanguageModelLoss(const ModelConfig& c, const Weights<T>& W, const std::vector<int64_t>& lengths,
                    const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets,
                    const std::vector<float>& weights, double normalizer) {
  const auto logps = TargetLogProbs(c, W, lengths, inputs, targets);
  T loss(0);
  for (size_t t = 0; t < logps.size(); ++t) {
    if (weights[t] != 0.0f) loss -= T(static_cast<double>(weights[t])) * logps[t];
  }
  return loss / T(normalizer);
}

// A reward model's ranking loss, every (prompt, answer) sequence run alone from its first
// token: sequences[i] are whole token sequences, groups[g] the number of consecutive sequences
// (best first) ranked together; the loss is the mean over groups of
//   kwise: -sum_j [r_j - log sum_{k>=j} e^{r_k}] / (K - 1),  pairwise: mean_{i<j} log(1 + e^{r_j -
//   r_i})
// plus zero_sum * (sum r)^2, r = score.weight . hidden at each sequence's last token.
template <typename T>
T RankingLoss(const ModelConfig& c, const Weights<T>& W,
              const std::vector<std::vector<int32_t>>& sequences,
              const std::vector<int64_t>& groups, bool kwise, double zero_sum, double normalizer) {
  const int64_t d = c.hidden_size;
  std::vector<T> r;
  for (const auto& seq : sequences) {
    const auto h = Hidden(c, W, {static_cast<int64_t>(seq.size())}, seq);
    const int64_t last = static_cast<int64_t>(seq.size()) - 1;
    T acc(0);
    for (int64_t i = 0; i < d; ++i) acc += W.at("score.weight")[i] * h[last * d + i];
    r.push_back(acc);
  }
  T loss(0);
  size_t first = 0;
  for (const int64_t k : groups) {
    T l(0), sum(0);
    for (int64_t j = 0; j < k; ++j) sum += r[first + j];
    if (kwise) {
      for (int64_t j = 0; j < k; ++j) {
        double mx = -1e300;
        for (int64_t i = j; i < k; ++i) mx = std::max(mx, Real(r[first + i]));
        T z(0);
        for (int64_t i = j; i < k; ++i) z += std::exp(r[first + i] - T(mx));
        l += T(mx) + std::log(z) - r[first + j];
      }
      l = l / T(static_cast<double>(k - 1));
    } else {
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = i + 1; j < k; ++j)
          l += std::log(T(1) + std::exp(r[first + j] - r[first + i]));
      l = l / T(static_cast<double>(k * (k - 1) / 2));
    }
    loss += l + T(zero_sum) * sum * sum;
    first += static_cast<size_t>(k);
  }
  return loss / T(normalizer);
}

}  // namespace starling::reference
