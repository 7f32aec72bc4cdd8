#include "train/parameters.h"

#include <map>

#include "core/error.h"
#include "model/gguf_export.h"

namespace starling {

TrainModel::TrainModel(ModelFiles files, int32_t unfreeze_layers) : files_(std::move(files)) {
  ModelConfig& c = files_.config;
  c.Validate(files_.source);
  const int32_t layers = c.num_layers;
  if (unfreeze_layers < -1 || unfreeze_layers > layers) {
    Fail("--unfreeze-layers ", unfreeze_layers, " is outside [0, ", layers, "] (the model has ",
         layers, " layers)");
  }
  const bool everything = unfreeze_layers == -1 || unfreeze_layers == layers;
  const int32_t lowest = everything ? 0 : layers - unfreeze_layers;
  std::map<std::string, const TensorRef*> stored;
  for (const TensorRef& t : files_.tensors) stored.emplace(t.name, &t);

  auto trainable = [&](const TensorSpec& spec) {
    if (spec.role == TensorRole::kEmbedding) return everything;
    return spec.layer < 0 || spec.layer >= lowest;
  };
  const std::vector<TensorSpec> specs = ModelTensors(c);
  params_.reserve(specs.size());
  std::vector<TensorRef> bound;  // what the Model binds: parameters in place of trainables
  for (const TensorSpec& spec : specs) {
    const auto it = stored.find(spec.name);
    if (it == stored.end()) Fail(files_.source, ": tensor '", spec.name, "' is missing");
    const TensorRef& t = *it->second;
    if (!trainable(spec)) {
      bound.push_back(t);
      continue;
    }
    if (t.shape != spec.shape) {
      Fail(t.file, ": tensor '", spec.name, "' does not have the shape the config implies");
    }
    Parameter p;
    p.spec = spec;
    p.value.resize(static_cast<size_t>(spec.elements()));
    p.grad.assign(p.value.size(), 0.0f);
    const int64_t rows = spec.shape.size() == 2 ? spec.shape[0] : 1;
    const int64_t cols = spec.shape.back();
    const WeightMatrix w{t.format, t.data, rows, cols};
    if (t.size_bytes != static_cast<uint64_t>(rows) * w.row_bytes()) {
      Fail(t.file, ": tensor '", spec.name, "' holds ", t.size_bytes, " bytes, expected ",
           static_cast<uint64_t>(rows) * w.row_bytes());
    }
    for (int64_t r = 0; r < rows; ++r) ReadRow(w, r, &p.value[static_cast<size_t>(r * cols)]);
    // The file's copy is not read again (saving reads the parameter): let its pages go.
    if (t.mapping != nullptr) t.mapping->DropPages(t.data, t.size_bytes);
    params_.push_back(std::move(p));
  }
  for (Parameter& p : params_) {
    TensorRef t;
    t.name = p.spec.name;
    t.file = files_.source + " (training parameters)";
    t.format = WeightFormat::kF32;
    t.shape = p.spec.shape;
    t.data = p.value.data();
    t.size_bytes = p.value.size() * sizeof(float);
    bound.push_back(std::move(t));
  }
  model_ = std::make_unique<Model>(c, bound, files_.source, files_.storage);

  grads_.layers.assign(static_cast<size_t>(layers), BlockGrads{});
  grads_.lowest_layer = lowest;
  for (Parameter& p : params_) {
    float* g = p.grad.data();
    BlockGrads* b = p.spec.layer >= 0 ? &grads_.layers[p.spec.layer] : nullptr;
    switch (p.spec.role) {
      case TensorRole::kEmbedding:
        grads_.embedding = g;
        if (c.tie_word_embeddings && c.head == ModelHead::kLanguageModel) head_grad_ = g;
        break;
      case TensorRole::kAttnNorm: b->attn_norm = g; break;
      case TensorRole::kWq: b->wq = g; break;
      case TensorRole::kWk: b->wk = g; break;
      case TensorRole::kWv: b->wv = g; break;
      case TensorRole::kWo: b->wo = g; break;
      case TensorRole::kFfnNorm: b->ffn_norm = g; break;
      case TensorRole::kGate: b->gate = g; break;
      case TensorRole::kUp: b->up = g; break;
      case TensorRole::kDown: b->down = g; break;
      case TensorRole::kFinalNorm: grads_.final_norm = g; break;
      case TensorRole::kLmHead:
      case TensorRole::kScore: head_grad_ = g; break;
      case TensorRole::kValue:
        value_grad_ = g;
        value_weights_ = p.value.data();
        break;
    }
  }
}

const float* TrainModel::head_weights() {
  const WeightMatrix& h = model_->head();
  if (h.format == WeightFormat::kF32 && h.layout == WeightLayout::kRows) {
    return static_cast<const float*>(h.data);
  }
  if (head_grad_ != nullptr) Fail("a trained head must be float32");  // parameters always are
  if (frozen_head_.empty()) {
    // The head's rows as stored (the model may hold it relaid for MatMul).
    const std::string name = config().head == ModelHead::kReward ? "score.weight"
                             : config().tie_word_embeddings      ? "model.embed_tokens.weight"
                                                                 : "lm_head.weight";
    for (const TensorRef& t : files_.tensors) {
      if (t.name != name) continue;
      const int64_t rows = t.shape[0], cols = t.shape[1];
      frozen_head_.resize(static_cast<size_t>(rows * cols));
      for (int64_t r = 0; r < rows; ++r) {
        ReadRow(WeightMatrix{t.format, t.data, rows, cols}, r, &frozen_head_[r * cols]);
      }
    }
    if (frozen_head_.empty()) Fail(files_.source, ": no tensor '", name, "'");
  }
  return frozen_head_.data();
}

void TrainModel::ZeroGrads() {
  for (Parameter& p : params_) std::fill(p.grad.begin(), p.grad.end(), 0.0f);
}

uint64_t TrainModel::parameter_count() const {
  uint64_t n = 0;
  for (const Parameter& p : params_) n += p.value.size();
  return n;
}

uint64_t TrainModel::frozen_count() const {
  uint64_t n = 0;
  for (const TensorSpec& s : ModelTensors(config())) n += static_cast<uint64_t>(s.elements());
  return n - parameter_count();
}

ModelFiles WithValueHead(ModelFiles files) {
  if (files.config.value_head) return files;
  if (files.config.head != ModelHead::kLanguageModel) Fail("a value head needs a language model");
  struct Storage {
    std::shared_ptr<const void> original;
    std::vector<float> value_head;
  };
  auto storage = std::make_shared<Storage>();
  storage->original = files.storage;
  storage->value_head.assign(static_cast<size_t>(files.config.hidden_size), 0.0f);
  files.config.value_head = true;
  TensorRef t;
  t.name = "value_head.weight";
  t.file = files.source + " (fresh value head: zeros)";
  t.shape = {1, files.config.hidden_size};
  t.data = storage->value_head.data();
  t.size_bytes = storage->value_head.size() * sizeof(float);
  files.tensors.push_back(std::move(t));
  files.storage = storage;
  return files;
}

ModelFiles RandomModelFiles(const ModelConfig& c, uint64_t seed) {
  auto buffers = std::make_shared<std::vector<std::vector<float>>>();
  ModelFiles files;
  files.config = c;
  files.source = "random init (seed " + std::to_string(seed) + ")";
  for (const ExportTensor& t : RandomTensors(c, seed)) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const int64_t cols = t.shape.back();
    std::vector<float> data(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) t.rows(r, &data[static_cast<size_t>(r * cols)]);
    buffers->push_back(std::move(data));
    TensorRef ref;
    ref.name = t.name;
    ref.file = files.source;
    ref.format = WeightFormat::kF32;
    ref.shape = t.shape;
    ref.data = buffers->back().data();
    ref.size_bytes = buffers->back().size() * sizeof(float);
    files.tensors.push_back(std::move(ref));
  }
  files.storage = buffers;
  return files;
}

}  // namespace starling
