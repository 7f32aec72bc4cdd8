#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dot.h"
#include "quant/quant.h"

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

  // The matrix in the layout MatMul runs fastest; a rearranged copy goes into `relaid`, and
  // the stored bytes' pages leave resident memory (they are not read again).
  WeightMatrix Matrix(const std::string& name, int64_t rows, int64_t cols,
                      std::vector<std::shared_ptr<const HugePageBuffer>>& relaid) const {
    const TensorRef& t = Require(name, {rows, cols});
    const WeightMatrix stored{t.format, t.data, rows, cols};
    if (!LoadsForMatMul(stored)) return stored;
    auto buffer = std::make_shared<HugePageBuffer>();
    WeightMatrix faster;
    try {
      faster = LoadForMatMul(stored, *buffer);
    } catch (const Error& e) {  // e.g. out of memory: say which tensor
      Fail(t.file, ": tensor '", name, "': ", e.what());
    }
    relaid.push_back(std::move(buffer));
    if (t.mapping != nullptr) t.mapping->DropPages(t.data, t.size_bytes);
    return faster;
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

  embedding_ = table.Matrix("model.embed_tokens.weight", v, d, relaid_);
  final_norm_ = table.Vector("model.norm.weight", d);
  if (c.head == ModelHead::kReward) {
    head_ = table.Matrix("score.weight", 1, d, relaid_);
  } else if (c.tie_word_embeddings) {
    head_ = embedding_;
  } else {
    head_ = table.Matrix("lm_head.weight", v, d, relaid_);
  }
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights layer;
    layer.attn_norm = table.Vector(p + "input_layernorm.weight", d);
    layer.wq = table.Matrix(p + "self_attn.q_proj.weight", q_rows, d, relaid_);
    layer.wk = table.Matrix(p + "self_attn.k_proj.weight", kv_rows, d, relaid_);
    layer.wv = table.Matrix(p + "self_attn.v_proj.weight", kv_rows, d, relaid_);
    layer.wo = table.Matrix(p + "self_attn.o_proj.weight", d, q_rows, relaid_);
    layer.ffn_norm = table.Vector(p + "post_attention_layernorm.weight", d);
    layer.w_gate = table.Matrix(p + "mlp.gate_proj.weight", f, d, relaid_);
    layer.w_up = table.Matrix(p + "mlp.up_proj.weight", f, d, relaid_);
    layer.w_down = table.Matrix(p + "mlp.down_proj.weight", d, f, relaid_);
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

Session::Session(const Model& model, int32_t context_length, DType kv_type)
    : model_(&model), context_length_(context_length), kv_type_(kv_type) {
  const ModelConfig& c = model.config();
  if (context_length <= 0) Fail("context length ", context_length, " must be positive");
  const size_t kv =
      static_cast<size_t>(c.num_layers) * context_length * c.num_kv_heads * c.head_dim;
  switch (kv_type) {
    case DType::kF32:
      keys_.assign(kv, 0.0f);
      values_.assign(kv, 0.0f);
      break;
    case DType::kF16:
      half_keys_.assign(kv, 0);
      half_values_.assign(kv, 0);
      break;
    default: Fail("KV cache type ", DTypeName(kv_type), " is not supported (F32 or F16)");
  }
}

namespace {

// out[n] = x[n] as binary16 bits, rounded to nearest even: F16C where the kernels use AVX2,
// else the scalar FloatToHalf; the same bits either way.
void StoreHalves(const float* x, int64_t n, uint16_t* out) {
  if (ActiveSimdLevel() != SimdLevel::kScalar) return FloatToHalfRowAvx2(x, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalf(x[i]);
}

template <DType kCache>
void AttendCache(const std::vector<CacheElement<kCache>>& keys,
                 const std::vector<CacheElement<kCache>>& values, int64_t offset, const float* q,
                 int64_t q_stride, int64_t group, int64_t kv_stride, int64_t head_dim,
                 int64_t first, int64_t last, float* scores, float* out, int64_t out_stride) {
  const auto attend =
      ActiveSimdLevel() != SimdLevel::kScalar ? AttentionGroupAvx2<kCache> : AttentionGroup<kCache>;
  attend(q, q_stride, group, &keys[offset], &values[offset], kv_stride, head_dim, first, last,
         scores, out, out_stride);
}

}  // namespace

void Session::StoreKeyValue(int32_t layer, int64_t position, const float* key, const float* value) {
  const ModelConfig& c = model_->config();
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t offset = (int64_t{layer} * context_length_ + position) * kv_dim;
  if (kv_type_ == DType::kF32) {
    std::copy_n(key, kv_dim, &keys_[offset]);
    std::copy_n(value, kv_dim, &values_[offset]);
  } else {
    StoreHalves(key, kv_dim, &half_keys_[offset]);
    StoreHalves(value, kv_dim, &half_values_[offset]);
  }
}

void Session::Attend(int32_t layer, int64_t kv_head, const float* q, int64_t group, int64_t first,
                     int64_t last, float* scores, float* out) const {
  const ModelConfig& c = model_->config();
  const int64_t hd = c.head_dim, kv_dim = int64_t{c.num_kv_heads} * hd;
  const int64_t offset = int64_t{layer} * context_length_ * kv_dim + kv_head * hd;
  if (kv_type_ == DType::kF32) {
    AttendCache<DType::kF32>(keys_, values_, offset, q, hd, group, kv_dim, hd, first, last, scores,
                             out, hd);
  } else {
    AttendCache<DType::kF16>(half_keys_, half_values_, offset, q, hd, group, kv_dim, hd, first,
                             last, scores, out, hd);
  }
}

void ForwardScratch::Ensure(const ModelConfig& c, int64_t tokens, int64_t context_length) {
  if (tokens > rows) {
    const auto t = static_cast<size_t>(tokens);
    x.resize(t * c.hidden_size);
    xn.resize(t * c.hidden_size);
    q.resize(t * c.num_heads * c.head_dim);
    k.resize(t * c.num_kv_heads * c.head_dim);
    v.resize(t * c.num_kv_heads * c.head_dim);
    attn.resize(t * c.num_heads * c.head_dim);
    gate.resize(t * c.intermediate_size);
    up.resize(t * c.intermediate_size);
    last.resize(c.hidden_size);
    rows = tokens;
  }
  // Attention scores [group, context] per thread (group: the query heads of a key/value head,
  // attended together), group * context floats apart.
  context = std::max(context, context_length);
  const int64_t group = c.num_heads / c.num_kv_heads;
  const auto score_floats = static_cast<size_t>(ThreadPool::Global().size() * group * context);
  if (scores.size() < score_floats) scores.resize(score_floats);
}

void Session::Truncate(int32_t n) {
  if (n < 0 || n > length_) Fail("cannot truncate a session of ", length_, " positions to ", n);
  length_ = n;
}

void Session::CheckTokens(std::span<const int32_t> tokens) const {
  const int32_t vocab = model_->config().vocab_size;
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= vocab) {
      Fail("token id ", tokens[t], " at position ", length_ + static_cast<int64_t>(t),
           " is outside the vocabulary (", vocab, ")");
    }
  }
}

void Session::Forward(std::span<const int32_t> tokens, std::span<float> logits, bool all_logits) {
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) Fail("Forward needs at least one token");
  if (length_ + n > context_length_) {
    Fail("context overflow: ", length_, " cached + ", n, " new tokens > context length ",
         context_length_);
  }
  CheckTokens(tokens);
  rows_.clear();
  for (int64_t t = 0; t < n; ++t) rows_.push_back({this, tokens[t], length_ + t, false});
  RunRows(*model_, rows_, &scratch_, logits, all_logits);
  length_ += static_cast<int32_t>(n);
}

void Session::Probe(int32_t token, int64_t position, std::span<float> outputs) {
  if (length_ < 1) Fail("Probe needs at least one cached position");
  if (position < length_) {
    Fail("probe position ", position, " is inside the cached positions [0, ", length_, ")");
  }
  CheckTokens(std::span(&token, 1));
  const int32_t window = model_->config().sliding_window;
  if (window > 0 && position - window + 1 > length_ - 1) {
    Fail("probe position ", position, " sees no cached position in the window");
  }
  rows_.assign(1, Row{this, token, position, true});
  RunRows(*model_, rows_, &scratch_, outputs, false);
}

void Session::ForwardBatch(std::span<Session* const> sessions, std::span<const int32_t> tokens,
                           std::span<float> outputs, ForwardScratch* scratch) {
  if (sessions.empty()) Fail("ForwardBatch needs at least one session");
  if (sessions.size() != tokens.size()) Fail("ForwardBatch: one token per session");
  const Model& m = sessions[0]->model();
  std::vector<Row> rows;  // small: one per session
  rows.reserve(sessions.size());
  for (size_t i = 0; i < sessions.size(); ++i) {
    Session* s = sessions[i];
    if (&s->model() != &m) Fail("ForwardBatch: sessions of different models");
    if (std::find(sessions.begin(), sessions.begin() + static_cast<std::ptrdiff_t>(i), s) !=
        sessions.begin() + static_cast<std::ptrdiff_t>(i)) {
      Fail("ForwardBatch: a session appears twice");
    }
    if (s->length_ + 1 > s->context_length_) {
      Fail("context overflow in batch row ", i, ": ", s->length_, " cached + 1 > ",
           s->context_length_);
    }
    s->CheckTokens(tokens.subspan(i, 1));
    rows.push_back({s, tokens[i], s->length_, false});
  }
  RunRows(m, rows, scratch, outputs, true);
  for (Session* s : sessions) s->length_ += 1;
}

void Session::RunRows(const Model& m, std::span<const Row> rows, ForwardScratch* s,
                      std::span<float> outputs, bool all_outputs) {
  const ModelConfig& c = m.config();
  const auto n = static_cast<int64_t>(rows.size());
  const int64_t o_size = c.output_size();
  if (static_cast<int64_t>(outputs.size()) < (all_outputs ? n * o_size : o_size)) {
    Fail("output buffer too small");
  }
  int64_t max_context = 0;
  for (const Row& r : rows)
    max_context = std::max<int64_t>(max_context, r.session->context_length_);
  s->Ensure(c, n, max_context);
  const int64_t d = c.hidden_size, hd = c.head_dim, f = c.intermediate_size;
  const int64_t q_dim = int64_t{c.num_heads} * hd, kv_dim = int64_t{c.num_kv_heads} * hd;
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
  float* x = s->x.data();
  float* xn = s->xn.data();

  for (int64_t t = 0; t < n; ++t) ReadRow(m.embedding(), rows[t].token, &x[t * d]);

  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = m.layers()[l];
    // Attention block: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(&x[t * d], w.attn_norm.data(), d, c.rms_norm_eps, &xn[t * d]);
    }
    MatMul(w.wq, xn, n, s->q.data());  // [T, H * Dh]
    MatMul(w.wk, xn, n, s->k.data());  // [T, KVH * Dh]
    MatMul(w.wv, xn, n, s->v.data());  // [T, KVH * Dh]
    for (int64_t t = 0; t < n; ++t) {
      const Row& r = rows[t];
      Rope(&s->q[t * q_dim], c.num_heads, hd, c.rope_dim, r.position, m.inv_freq(), interleaved);
      if (r.probe) continue;  // a probe's key and value are never attended to
      Rope(&s->k[t * kv_dim], c.num_kv_heads, hd, c.rope_dim, r.position, m.inv_freq(),
           interleaved);
      r.session->StoreKeyValue(l, r.position, &s->k[t * kv_dim], &s->v[t * kv_dim]);
    }
    // One item per (slice of a group, row) over the threads: the query heads of a group
    // share their key/value head, whose keys and values AttentionGroup reads once for all of
    // them. A slice is the whole group unless that leaves too few items to keep the threads
    // busy (decoding a single row): then groups split in halves. Each head's output has the
    // same bits however its group is sliced, so results do not depend on the thread count.
    // Slice-major, so that each thread gets whole slices (rows late in a prompt cost more).
    const int64_t group = c.num_heads / c.num_kv_heads;
    const int64_t threads = ThreadPool::Global().size();
    int64_t slice = group;  // query heads per item
    while (slice % 2 == 0 && c.num_heads / slice * n < 4 * threads) slice /= 2;
    const int64_t slices = c.num_heads / slice;
    ThreadPool::Global().ParallelFor(slices * n, 1, [&](int64_t begin, int64_t end, int thread) {
      float* scores = s->scores.data() + thread * group * s->context;  // [slice, context]
      for (int64_t i = begin; i < end; ++i) {
        const int64_t h = i / n * slice, t = i % n;  // the slice's first query head
        const Row& r = rows[t];
        // Mistral's sliding window: position i sees exactly positions (i - window, i]. A probe
        // sees the cached positions only.
        const int64_t last = r.probe ? r.session->length_ - 1 : r.position;
        const int64_t first =
            c.sliding_window > 0 ? std::max<int64_t>(0, r.position - c.sliding_window + 1) : 0;
        r.session->Attend(l, h / group, &s->q[t * q_dim + h * hd], slice, first, last, scores,
                          &s->attn[t * q_dim + h * hd]);
      }
    });
    MatMul(w.wo, s->attn.data(), n, xn);  // [T, D]
    for (int64_t i = 0; i < n * d; ++i) x[i] += xn[i];

    // Feed-forward block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(&x[t * d], w.ffn_norm.data(), d, c.rms_norm_eps, &xn[t * d]);
    }
    MatMul(w.w_gate, xn, n, s->gate.data());  // [T, F]
    MatMul(w.w_up, xn, n, s->up.data());      // [T, F]
    const auto silu_mul = ActiveSimdLevel() != SimdLevel::kScalar ? SiluMulAvx2 : SiluMul;
    silu_mul(s->gate.data(), s->up.data(), n * f);
    MatMul(w.w_down, s->gate.data(), n, xn);  // [T, D]
    for (int64_t i = 0; i < n * d; ++i) x[i] += xn[i];
  }

  if (all_outputs) {
    for (int64_t t = 0; t < n; ++t) {
      RmsNorm(&x[t * d], m.final_norm().data(), d, c.rms_norm_eps, &xn[t * d]);
    }
    MatMul(m.head(), xn, n, outputs.data());
  } else {
    RmsNorm(&x[(n - 1) * d], m.final_norm().data(), d, c.rms_norm_eps, s->last.data());
    MatMul(m.head(), s->last.data(), 1, outputs.data());
  }
}

}  // namespace starling
