#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "model/blocks.h"
#include "model/tensors.h"
#include "quant/quant.h"

namespace starling {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

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

  // A float32 view of vector `name`: in place when stored as aligned F32 (a trainer's
  // parameters, most F32 files), else a converted copy kept in `owned`.
  std::span<const float> Vector(
      const std::string& name, int64_t n,
      std::vector<std::shared_ptr<const std::vector<float>>>& owned) const {
    const TensorRef& t = Require(name, {n});
    if (t.format == WeightFormat::kF32 &&
        reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
      return {static_cast<const float*>(t.data), static_cast<size_t>(n)};
    }
    auto out = std::make_shared<std::vector<float>>(static_cast<size_t>(n));
    ReadRow(WeightMatrix{t.format, t.data, 1, n}, 0, out->data());
    owned.push_back(out);
    return {out->data(), out->size()};
  }

 private:
  std::string source_;
  std::map<std::string, const TensorRef*> by_name_;
};

namespace {

// The decoder block a tensor name belongs to ("model.layers.N." or, for a GGUF name with no
// canonical form, "blk.N."), or -1.
int64_t LayerOfName(std::string_view name) {
  for (const std::string_view prefix :
       {std::string_view("model.layers."), std::string_view("blk.")}) {
    if (!name.starts_with(prefix)) continue;
    int64_t layer = 0;
    size_t k = prefix.size();
    for (; k < name.size() && name[k] >= '0' && name[k] <= '9' && layer < (1 << 20); ++k) {
      layer = layer * 10 + (name[k] - '0');
    }
    if (k > prefix.size() && k < name.size() && name[k] == '.') return layer;
  }
  return -1;
}

// Weights for blocks past the config's last would be ignored, running a shallower model than
// the file holds: a config that does not match its weights is an error, not a guess.
void CheckNoExtraLayers(const std::vector<TensorRef>& tensors, int32_t num_layers) {
  for (const TensorRef& t : tensors) {
    const int64_t layer = LayerOfName(t.name);
    if (layer >= num_layers) {
      Fail(t.file, ": tensor '", t.name, "' belongs to layer ", layer, ", but the config has ",
           num_layers, " layers (num_hidden_layers, or llama.block_count in GGUF): the config ",
           "does not match the weights");
    }
  }
}

}  // namespace

Model::Model(ModelConfig config, const std::vector<TensorRef>& tensors, std::string source,
             std::shared_ptr<const void> storage, const LoadProgress& progress)
    : config_(std::move(config)),
      source_(std::move(source)),
      storage_(std::move(storage)),
      tensors_(tensors) {
  config_.Validate(source_);
  const ModelConfig& c = config_;
  const TensorTable table(tensors_, source_);
  CheckNoExtraLayers(tensors_, c.num_layers);
  layers_.resize(static_cast<size_t>(c.num_layers));
  uint64_t total = 0, done = 0;
  for (const TensorRef& t : tensors_) total += t.size_bytes;
  for (const TensorSpec& spec : ModelTensors(c)) {
    Bind(spec, table);
    if (!progress) continue;
    for (const TensorRef& t : tensors_) {
      if (t.name == spec.name) done += t.size_bytes;
    }
    progress(done, total);
  }
  if (progress) progress(total, total);
  if (c.head == ModelHead::kLanguageModel && c.tie_word_embeddings) head_ = embedding_;
  for (const TensorRef& t : tensors_) weight_bytes_ += t.size_bytes;

  // inv_freq as Hugging Face computes it in float32: 1 / theta^(2i / rope_dim).
  for (int32_t i = 0; i < c.rope_dim / 2; ++i) {
    const double exponent = static_cast<double>(2 * i) / c.rope_dim;
    inv_freq_.push_back(
        static_cast<float>(1.0 / std::pow(static_cast<double>(c.rope_theta), exponent)));
  }
}

void Model::Bind(const TensorSpec& spec, const TensorTable& table) {
  const std::string& name = spec.name;
  LayerWeights* layer = spec.layer >= 0 ? &layers_[spec.layer] : nullptr;
  auto matrix = [&] { return table.Matrix(name, spec.shape[0], spec.shape[1], relaid_); };
  auto vector = [&] { return table.Vector(name, spec.shape[0], vectors_); };
  switch (spec.role) {
    case TensorRole::kEmbedding: embedding_ = matrix(); break;
    case TensorRole::kAttnNorm: layer->attn_norm = vector(); break;
    case TensorRole::kWq: layer->wq = matrix(); break;
    case TensorRole::kWk: layer->wk = matrix(); break;
    case TensorRole::kWv: layer->wv = matrix(); break;
    case TensorRole::kWo: layer->wo = matrix(); break;
    case TensorRole::kFfnNorm: layer->ffn_norm = vector(); break;
    case TensorRole::kGate: layer->w_gate = matrix(); break;
    case TensorRole::kUp: layer->w_up = matrix(); break;
    case TensorRole::kDown: layer->w_down = matrix(); break;
    case TensorRole::kFinalNorm: final_norm_ = vector(); break;
    case TensorRole::kLmHead: head_ = matrix(); break;
    case TensorRole::kScore: head_ = matrix(); break;
    case TensorRole::kValue: value_head_ = matrix(); break;
  }
}

Model Model::WithReplacedTensors(const std::vector<TensorRef>& replacements, std::string source,
                                 std::shared_ptr<const void> storage) const {
  Model m = *this;
  m.source_ = std::move(source);
  m.storage_ =
      std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
          storage_, std::move(storage));
  for (const TensorRef& r : replacements) {
    auto it = std::find_if(m.tensors_.begin(), m.tensors_.end(),
                           [&](const TensorRef& t) { return t.name == r.name; });
    if (it == m.tensors_.end()) Fail(source_, ": no tensor '", r.name, "' to replace");
    *it = r;
  }
  const TensorTable table(m.tensors_, m.source_);
  for (const TensorSpec& spec : ModelTensors(m.config_)) {
    for (const TensorRef& r : replacements) {
      if (r.name == spec.name) m.Bind(spec, table);
    }
  }
  if (m.config_.head == ModelHead::kLanguageModel && m.config_.tie_word_embeddings) {
    m.head_ = m.embedding_;
  }
  m.weight_bytes_ = 0;
  for (const TensorRef& t : m.tensors_) m.weight_bytes_ += t.size_bytes;
  return m;
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

// out[n] = x[n] as binary16 bits, rounded to nearest even.
void StoreHalves(const float* x, int64_t n, uint16_t* out) {
  dispatch::FloatToHalfRow(x, n, out);
}

template <DType kCache>
void AttendCache(const std::vector<CacheElement<kCache>>& keys,
                 const std::vector<CacheElement<kCache>>& values, int64_t offset, const float* q,
                 int64_t q_stride, int64_t group, int64_t kv_stride, int64_t head_dim,
                 int64_t first, int64_t last, float* scores, float* out, int64_t out_stride,
                 float* lse) {
  dispatch::AttentionGroup<kCache>(q, q_stride, group, &keys[offset], &values[offset], kv_stride,
                                   head_dim, first, last, scores, out, out_stride, lse);
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
                     int64_t last, float* scores, float* out, float* lse) const {
  const ModelConfig& c = model_->config();
  const int64_t hd = c.head_dim, kv_dim = int64_t{c.num_kv_heads} * hd;
  const int64_t offset = int64_t{layer} * context_length_ * kv_dim + kv_head * hd;
  if (kv_type_ == DType::kF32) {
    AttendCache<DType::kF32>(keys_, values_, offset, q, hd, group, kv_dim, hd, first, last, scores,
                             out, hd, lse);
  } else {
    AttendCache<DType::kF16>(half_keys_, half_values_, offset, q, hd, group, kv_dim, hd, first,
                             last, scores, out, hd, lse);
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
  tokens_.resize(static_cast<size_t>(n));
}

int32_t Session::ReusePrefix(std::span<const int32_t> ids) {
  size_t common = 0;
  const size_t limit = ids.empty() ? 0 : std::min(tokens_.size(), ids.size() - 1);
  while (common < limit && tokens_[common] == ids[common]) ++common;
  Truncate(static_cast<int32_t>(common));
  return static_cast<int32_t>(common);
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
  const int64_t o_size = model_->config().output_size();
  if (static_cast<int64_t>(logits.size()) < (all_logits ? n * o_size : o_size)) {
    Fail("output buffer too small");
  }
  for (int64_t begin = 0; begin < n; begin += kChunkRows) {
    const int64_t end = std::min(n, begin + kChunkRows);
    rows_.clear();
    for (int64_t t = begin; t < end; ++t)
      rows_.push_back({this, tokens[t], length_ + t - begin, false});
    // Every chunk's outputs when all are asked for; else only the last chunk's last row.
    if (all_logits) {
      RunRows(*model_, rows_, &scratch_, logits.subspan(begin * o_size), true);
    } else if (end == n) {
      RunRows(*model_, rows_, &scratch_, logits, false);
    } else {
      RunRows(*model_, rows_, &scratch_, {}, false, /*outputs_wanted=*/false);
    }
    length_ += static_cast<int32_t>(end - begin);
    tokens_.insert(tokens_.end(), tokens.begin() + begin, tokens.begin() + end);
  }
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
  for (size_t i = 0; i < sessions.size(); ++i) {
    sessions[i]->length_ += 1;
    sessions[i]->tokens_.push_back(tokens[i]);
  }
}

// The rows of a batch of sessions as a key/value source: each row's key and value go into its
// session's cache, and each row attends to its session's cache.
class SessionKeyValues final : public KeyValueSource {
 public:
  explicit SessionKeyValues(std::span<const Session::Row> rows) : rows_(rows) {
    for (const Session::Row& r : rows)
      max_span_ = std::max<int64_t>(max_span_, r.session->context_length_);
  }
  void Append(int32_t layer, const float* k, const float* v) override {
    const ModelConfig& c = rows_[0].session->model().config();
    const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
    for (size_t t = 0; t < rows_.size(); ++t) {
      const Session::Row& r = rows_[t];
      if (r.probe) continue;  // a probe's key and value are never attended to
      r.session->StoreKeyValue(layer, r.position, &k[t * kv_dim], &v[t * kv_dim]);
    }
  }
  void Attend(int32_t layer, int64_t row, int64_t kv_head, const float* q, int64_t group,
              float* scores, float* out, float* lse) const override {
    const Session::Row& r = rows_[row];
    // Mistral's sliding window: position i sees exactly positions (i - window, i]. A probe
    // sees the cached positions only.
    const int32_t window = r.session->model().config().sliding_window;
    const int64_t last = r.probe ? r.session->length_ - 1 : r.position;
    const int64_t first = window > 0 ? std::max<int64_t>(0, r.position - window + 1) : 0;
    r.session->Attend(layer, kv_head, q, group, first, last, scores, out, lse);
  }
  int64_t max_span() const override { return max_span_; }

 private:
  std::span<const Session::Row> rows_;
  int64_t max_span_ = 0;
};

void Session::RunRows(const Model& m, std::span<const Row> rows, ForwardScratch* s,
                      std::span<float> outputs, bool all_outputs, bool outputs_wanted) {
  const ModelConfig& c = m.config();
  const auto n = static_cast<int64_t>(rows.size());
  const int64_t o_size = c.output_size();
  if (outputs_wanted &&
      static_cast<int64_t>(outputs.size()) < (all_outputs ? n * o_size : o_size)) {
    Fail("output buffer too small");
  }
  s->row_tokens.resize(static_cast<size_t>(n));
  s->row_positions.resize(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    s->row_tokens[t] = rows[t].token;
    s->row_positions[t] = rows[t].position;
  }
  SessionKeyValues kv(rows);
  RunDecoder(m, s->row_tokens, s->row_positions, kv, *s, nullptr);
  if (!outputs_wanted) return;
  const int64_t d = c.hidden_size;
  if (all_outputs) {
    FinalNorm(m, s->x.data(), n, s->xn.data(), nullptr);
    MatMul(m.head(), s->xn.data(), n, outputs.data());
  } else {
    FinalNorm(m, &s->x[(n - 1) * d], 1, s->last.data(), nullptr);
    MatMul(m.head(), s->last.data(), 1, outputs.data());
  }
}

}  // namespace starling
