#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"

namespace starling {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

class TensorTable {
 public:
  TensorTable(const std::vector<TensorRef>& tensors, const std::string& source) : source_(source) {
    for (const TensorRef& t : tensors) by_name_.emplace(t.name, &t);
  }

  const TensorRef* Find(const std::string& name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
  }

  const TensorRef& Require(const std::string& name, std::vector<int64_t> shape) const {
    const TensorRef* t = Find(name);
    if (t == nullptr) Fail(source_, ": tensor '", name, "' is missing");
    if (t->shape != shape) {
      Fail(t->file, ": tensor '", name, "' has shape ", ShapeString(t->shape), ", expected ",
           ShapeString(shape), " from the config");
    }
    if (shape.size() == 1 && IsQuantized(t->format)) {
      Fail(t->file, ": tensor '", name, "' is ", WeightFormatName(t->format),
           "; vectors must be F32, F16 or BF16");
    }
    const int64_t rows = shape.size() == 2 ? shape[0] : 1;
    const uint64_t expected = static_cast<uint64_t>(rows) * WeightRowBytes(t->format, shape.back());
    if (t->size_bytes != expected || t->data == nullptr) {
      Fail(t->file, ": tensor '", name, "' holds ", t->size_bytes, " bytes, expected ", expected);
    }
    return *t;
  }

  WeightMatrix Matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const TensorRef& t = Require(name, {rows, cols});
    return {t.format, t.data, rows, cols};
  }

  std::vector<float> Vector(const std::string& name, int64_t n) const {
    const TensorRef& t = Require(name, {n});
    std::vector<float> out(static_cast<size_t>(n));
    ReadRow(WeightMatrix{t.format, t.data, 1, n}, 0, out.data());
    return out;
  }

 private:
  std::string source_;
  std::map<std::string, const TensorRef*> by_name_;
};

}  // namespace

Model::Model(ModelConfig config, const std::vector<TensorRef>& tensors, std::string source,
             std::shared_ptr<const void> storage)
    : config_(std::move(config)),
      source_(std::move(source)),
      storage_(std::move(storage)),
      tensors_(tensors) {
  config_.Validate(source_);
  const ModelConfig& c = config_;
  const TensorTable table(tensors_, source_);
  const int64_t d = c.hidden_size, v = c.vocab_size, f = c.intermediate_size;
  const int64_t q_rows = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_rows = int64_t{c.num_kv_heads} * c.head_dim;

  embedding_ = table.Matrix("model.embed_tokens.weight", v, d);
  final_norm_ = table.Vector("model.norm.weight", d);
  if (c.head == ModelHead::kReward) {
    head_ = table.Matrix("score.weight", 1, d);
  } else if (c.tie_word_embeddings) {
    head_ = embedding_;
  } else {
    head_ = table.Matrix("lm_head.weight", v, d);
  }
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights layer;
    layer.attn_norm = table.Vector(p + "input_layernorm.weight", d);
    layer.wq = table.Matrix(p + "self_attn.q_proj.weight", q_rows, d);
    layer.wk = table.Matrix(p + "self_attn.k_proj.weight", kv_rows, d);
    layer.wv = table.Matrix(p + "self_attn.v_proj.weight", kv_rows, d);
    layer.wo = table.Matrix(p + "self_attn.o_proj.weight", d, q_rows);
    layer.ffn_norm = table.Vector(p + "post_attention_layernorm.weight", d);
    layer.w_gate = table.Matrix(p + "mlp.gate_proj.weight", f, d);
    layer.w_up = table.Matrix(p + "mlp.up_proj.weight", f, d);
    layer.w_down = table.Matrix(p + "mlp.down_proj.weight", d, f);
    layers_.push_back(std::move(layer));
  }
  for (const TensorRef& t : tensors_) weight_bytes_ += t.size_bytes;

  // inv_freq as Hugging Face computes it in float32: 1 / theta^(2i / rope_dim).
  for (int32_t i = 0; i < c.rope_dim / 2; ++i) {
    const double exponent = static_cast<double>(2 * i) / c.rope_dim;
    inv_freq_.push_back(
        static_cast<float>(1.0 / std::pow(static_cast<double>(c.rope_theta), exponent)));
  }
}

Session::Session(const Model& model, int32_t context_length)
    : model_(&model), context_length_(context_length) {
  const ModelConfig& c = model.config();
  if (context_length <= 0) Fail("context length ", context_length, " must be positive");
  const size_t kv =
      static_cast<size_t>(c.num_layers) * context_length * c.num_kv_heads * c.head_dim;
  keys_.assign(kv, 0.0f);
  values_.assign(kv, 0.0f);
}

void Session::EnsureScratch(int64_t tokens) {
  if (tokens <= scratch_tokens_) return;
  const ModelConfig& c = model_->config();
  const auto t = static_cast<size_t>(tokens);
  x_.resize(t * c.hidden_size);
  xn_.resize(t * c.hidden_size);
  q_.resize(t * c.num_heads * c.head_dim);
  k_.resize(t * c.num_kv_heads * c.head_dim);
  v_.resize(t * c.num_kv_heads * c.head_dim);
  attn_.resize(t * c.num_heads * c.head_dim);
  gate_.resize(t * c.intermediate_size);
  up_.resize(t * c.intermediate_size);
  scores_.resize(static_cast<size_t>(context_length_));
  last_.resize(c.hidden_size);
  scratch_tokens_ = tokens;
}

void Session::Truncate(int32_t n) {
  if (n < 0 || n > length_) Fail("cannot truncate a session of ", length_, " positions to ", n);
  length_ = n;
}

void Session::Forward(std::span<const int32_t> tokens, std::span<float> logits, bool all_logits) {
  if (length_ + static_cast<int64_t>(tokens.size()) > context_length_) {
    Fail("context overflow: ", length_, " cached + ", tokens.size(),
         " new tokens > context length ", context_length_);
  }
  Run(tokens, logits, all_logits, -1);
}

void Session::Probe(int32_t token, int64_t position, std::span<float> outputs) {
  if (length_ < 1) Fail("Probe needs at least one cached position");
  if (position < length_) {
    Fail("probe position ", position, " is inside the cached positions [0, ", length_, ")");
  }
  const int32_t tokens[1] = {token};
  Run(tokens, outputs, false, position);
}

void Session::Run(std::span<const int32_t> tokens, std::span<float> logits, bool all_logits,
                  int64_t probe_position) {
  const Model& m = *model_;
  const ModelConfig& c = m.config();
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) Fail("Forward needs at least one token");
  const bool probe = probe_position >= 0;
  const int64_t v_size = c.output_size();
  if (static_cast<int64_t>(logits.size()) < (all_logits ? n * v_size : v_size)) {
    Fail("output buffer too small");
  }
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size) {
      Fail("token id ", tokens[t], " at position ", length_ + t, " is outside the vocabulary (",
           c.vocab_size, ")");
    }
  }
  EnsureScratch(n);
  const int64_t d = c.hidden_size, hd = c.head_dim, f = c.intermediate_size;
  const int64_t q_dim = int64_t{c.num_heads} * hd, kv_dim = int64_t{c.num_kv_heads} * hd;
  const int64_t layer_stride = int64_t{context_length_} * kv_dim;
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;

  for (int64_t t = 0; t < n; ++t) ReadRow(m.embedding(), tokens[t], &x_[t * d]);

  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = m.layers()[l];
    float* layer_keys = &keys_[l * layer_stride];
    float* layer_values = &values_[l * layer_stride];
    // Attention block: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(&x_[t * d], w.attn_norm.data(), d, c.rms_norm_eps, &xn_[t * d]);
    }
    MatMul(w.wq, xn_.data(), n, q_.data());  // [T, H * Dh]
    MatMul(w.wk, xn_.data(), n, k_.data());  // [T, KVH * Dh]
    MatMul(w.wv, xn_.data(), n, v_.data());  // [T, KVH * Dh]
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = probe ? probe_position : length_ + t;
      Rope(&q_[t * q_dim], c.num_heads, hd, c.rope_dim, pos, m.inv_freq(), interleaved);
      if (probe) continue;  // a probe's key and value are never attended to
      Rope(&k_[t * kv_dim], c.num_kv_heads, hd, c.rope_dim, pos, m.inv_freq(), interleaved);
      std::copy_n(&k_[t * kv_dim], kv_dim, layer_keys + pos * kv_dim);
      std::copy_n(&v_[t * kv_dim], kv_dim, layer_values + pos * kv_dim);
    }
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = probe ? probe_position : length_ + t;
      // Mistral's sliding window: position i sees exactly positions (i - window, i]. A probe
      // sees the cached positions only.
      const int64_t last = probe ? length_ - 1 : pos;
      const int64_t first =
          c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      if (first > last) Fail("probe position ", pos, " sees no cached position in the window");
      Attention(&q_[t * q_dim], layer_keys, layer_values, c.num_heads, c.num_kv_heads, hd, first,
                last, scores_.data(), &attn_[t * q_dim]);
    }
    MatMul(w.wo, attn_.data(), n, xn_.data());  // [T, D]
    for (int64_t i = 0; i < n * d; ++i) x_[i] += xn_[i];

    // Feed-forward block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(&x_[t * d], w.ffn_norm.data(), d, c.rms_norm_eps, &xn_[t * d]);
    }
    MatMul(w.w_gate, xn_.data(), n, gate_.data());  // [T, F]
    MatMul(w.w_up, xn_.data(), n, up_.data());      // [T, F]
    SiluMul(gate_.data(), up_.data(), n * f);
    MatMul(w.w_down, gate_.data(), n, xn_.data());  // [T, D]
    for (int64_t i = 0; i < n * d; ++i) x_[i] += xn_[i];
  }

  if (all_logits) {
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(&x_[t * d], m.final_norm().data(), d, c.rms_norm_eps, &xn_[t * d]);
    }
    MatMul(m.head(), xn_.data(), n, logits.data());
  } else {
    RmsNorm(&x_[(n - 1) * d], m.final_norm().data(), d, c.rms_norm_eps, last_.data());
    MatMul(m.head(), last_.data(), 1, logits.data());
  }
  if (!probe) length_ += static_cast<int32_t>(n);
}

}  // namespace starling
