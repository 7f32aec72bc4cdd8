#include "model/gguf_export.h"

#include "model/tensors.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "model/gguf_names.h"
#include "model/tensors.h"

namespace starling {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void EncodeWeightRow(WeightFormat f, const float* x, int64_t n, char* out) {
  QuantizeRow(f, x, n, out);
}

namespace {

struct PresetRow {
  QuantPreset preset;
  const char* name;
  WeightFormat base;
  uint32_t file_type;  // llama.cpp's llama_ftype, written as general.file_type
};
constexpr PresetRow kPresets[] = {
    {QuantPreset::kF32, "f32", WeightFormat::kF32, 0},
    {QuantPreset::kF16, "f16", WeightFormat::kF16, 1},
    {QuantPreset::kBF16, "bf16", WeightFormat::kBF16, 32},
    {QuantPreset::kQ8_0, "q8_0", WeightFormat::kQ8_0, 7},
    {QuantPreset::kQ4_0, "q4_0", WeightFormat::kQ4_0, 2},
    {QuantPreset::kQ4_1, "q4_1", WeightFormat::kQ4_1, 3},
    {QuantPreset::kQ5_0, "q5_0", WeightFormat::kQ5_0, 8},
    {QuantPreset::kQ5_1, "q5_1", WeightFormat::kQ5_1, 9},
    {QuantPreset::kQ2_K, "q2_k", WeightFormat::kQ2_K, 10},
    {QuantPreset::kQ3_K_S, "q3_k_s", WeightFormat::kQ3_K, 11},
    {QuantPreset::kQ3_K_M, "q3_k_m", WeightFormat::kQ3_K, 12},
    {QuantPreset::kQ3_K_L, "q3_k_l", WeightFormat::kQ3_K, 13},
    {QuantPreset::kQ4_K_S, "q4_k_s", WeightFormat::kQ4_K, 14},
    {QuantPreset::kQ4_K_M, "q4_k_m", WeightFormat::kQ4_K, 15},
    {QuantPreset::kQ5_K_S, "q5_k_s", WeightFormat::kQ5_K, 16},
    {QuantPreset::kQ5_K_M, "q5_k_m", WeightFormat::kQ5_K, 17},
    {QuantPreset::kQ6_K, "q6_k", WeightFormat::kQ6_K, 18},
};

const PresetRow& RowOf(QuantPreset preset) {
  for (const PresetRow& r : kPresets) {
    if (r.preset == preset) return r;
  }
  Fail("unknown quantization preset ", static_cast<int>(preset));
}

// The block index in a canonical name "model.layers.N....", or -1.
int LayerOf(const std::string& name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  int layer = 0;
  size_t i = kPrefix.size();
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i) {
    layer = layer * 10 + (name[i] - '0');
    if (layer > 1000000) return -1;
  }
  return layer;
}

// llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between.
bool UseMoreBits(int layer, int layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

// What llama.cpp writes when a row does not divide into 256-element blocks.
WeightFormat SmallRowFallback(WeightFormat f) {
  switch (f) {
    case WeightFormat::kQ2_K:
    case WeightFormat::kQ3_K: return WeightFormat::kQ4_0;
    case WeightFormat::kQ4_K: return WeightFormat::kQ5_0;
    case WeightFormat::kQ5_K: return WeightFormat::kQ5_1;
    case WeightFormat::kQ6_K: return WeightFormat::kQ8_0;
    default: return f;
  }
}

}  // namespace

QuantPreset QuantPresetFromName(const std::string& name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const PresetRow& r : kPresets) {
    if (lower == r.name) return r.preset;
  }
  Fail("unknown quantization type '", name, "' (known: ", QuantPresetList(), ")");
}

const char* QuantPresetName(QuantPreset preset) {
  return RowOf(preset).name;
}

uint32_t QuantPresetFileType(QuantPreset preset) {
  return RowOf(preset).file_type;
}

std::string QuantPresetList() {
  std::string list;
  for (const PresetRow& r : kPresets) list += (list.empty() ? "" : ", ") + std::string(r.name);
  return list;
}

WeightFormat FormatForTensor(QuantPreset preset, const std::string& name,
                             const std::vector<int64_t>& shape, int num_layers, int gqa,
                             bool* fallback, bool tied_embeddings) {
  if (fallback != nullptr) *fallback = false;
  if (shape.size() != 2) return WeightFormat::kF32;
  using P = QuantPreset;
  using F = WeightFormat;
  const WeightFormat base = RowOf(preset).base;
  WeightFormat f = base;
  const int layer = LayerOf(name);
  const int layers = std::max(num_layers, 1);
  if (IsQuantized(base)) {
    if (name == "lm_head.weight" || (tied_embeddings && name == "model.embed_tokens.weight")) {
      f = base == F::kQ8_0 || shape[1] % 256 != 0 ? F::kQ8_0 : F::kQ6_K;
    } else if (EndsWith(name, "self_attn.v_proj.weight")) {
      switch (preset) {
        case P::kQ2_K: f = gqa >= 4 ? F::kQ4_K : F::kQ3_K; break;
        case P::kQ3_K_M: f = layer < 2 ? F::kQ5_K : F::kQ4_K; break;
        case P::kQ3_K_L: f = F::kQ5_K; break;
        case P::kQ4_K_M:
        case P::kQ5_K_M: f = UseMoreBits(layer, layers) ? F::kQ6_K : base; break;
        case P::kQ4_K_S: f = layer < 4 ? F::kQ5_K : base; break;
        default: break;
      }
    } else if (EndsWith(name, "mlp.down_proj.weight")) {
      switch (preset) {
        case P::kQ2_K: f = F::kQ3_K; break;
        case P::kQ3_K_M: f = layer < layers / 16 ? F::kQ5_K : F::kQ4_K; break;
        case P::kQ3_K_L: f = F::kQ5_K; break;
        case P::kQ4_K_M:
        case P::kQ5_K_M: f = UseMoreBits(layer, layers) ? F::kQ6_K : base; break;
        case P::kQ4_K_S: f = layer < layers / 8 ? F::kQ5_K : base; break;
        default: break;
      }
    } else if (EndsWith(name, "self_attn.o_proj.weight")) {
      switch (preset) {
        case P::kQ2_K: f = F::kQ3_K; break;
        case P::kQ3_K_M: f = F::kQ4_K; break;
        case P::kQ3_K_L: f = F::kQ5_K; break;
        default: break;
      }
    }
  }
  const int64_t cols = shape[1];
  const auto fits = [&](WeightFormat g) { return cols % Traits(g).block_size == 0; };
  if (!fits(f)) {
    if (fallback != nullptr) *fallback = true;
    f = SmallRowFallback(f);
    if (!fits(f)) f = F::kF16;
  }
  return f;
}

void AddModelToGguf(const ModelConfig& c, const std::vector<ExportTensor>& tensors,
                    QuantPreset preset, GgufWriter* writer, const TensorWrittenFn& written) {
  writer->AddString("general.architecture", "llama");
  writer->AddString("general.name", c.architecture);
  writer->AddUint32("general.file_type", QuantPresetFileType(preset));
  writer->AddUint32("llama.context_length", static_cast<uint32_t>(c.max_position_embeddings));
  writer->AddUint32("llama.embedding_length", static_cast<uint32_t>(c.hidden_size));
  writer->AddUint32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  writer->AddUint32("llama.block_count", static_cast<uint32_t>(c.num_layers));
  writer->AddUint32("llama.attention.head_count", static_cast<uint32_t>(c.num_heads));
  writer->AddUint32("llama.attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  writer->AddUint32("llama.rope.dimension_count", static_cast<uint32_t>(c.rope_dim));
  writer->AddFloat32("llama.rope.freq_base", c.rope_theta);
  writer->AddFloat32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  writer->AddUint32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
  if (c.head_dim * c.num_heads != c.hidden_size) {
    writer->AddUint32("llama.attention.key_length", static_cast<uint32_t>(c.head_dim));
    writer->AddUint32("llama.attention.value_length", static_cast<uint32_t>(c.head_dim));
  }
  // GGUF llama files rotate interleaved pairs: permute Q/K rows of halves-layout sources.
  const bool permute = c.rope_layout == RopeLayout::kHalves;
  // A language model without lm_head.weight reads its logits through the token embedding.
  const bool tied = c.head == ModelHead::kLanguageModel &&
                    std::none_of(tensors.begin(), tensors.end(),
                                 [](const ExportTensor& t) { return t.name == "lm_head.weight"; });
  for (const ExportTensor& t : tensors) {
    bool fallback = false;
    const WeightFormat format =
        FormatForTensor(preset, t.name, t.shape, c.num_layers,
                        c.num_heads / std::max(1, c.num_kv_heads), &fallback, tied);
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const int64_t cols = t.shape.back();
    const size_t row_bytes = WeightRowBytes(format, cols);
    int64_t heads = 0;
    if (permute && EndsWith(t.name, "self_attn.q_proj.weight")) heads = c.num_heads;
    if (permute && EndsWith(t.name, "self_attn.k_proj.weight")) heads = c.num_kv_heads;
    std::string bytes(row_bytes * static_cast<size_t>(rows), '\0');
    // Rows over the thread pool (quantizing is the cost): each row is read and encoded alone,
    // so the bytes do not depend on the thread count.
    ThreadPool::Global().ParallelFor(rows, 16, [&](int64_t begin, int64_t end, int) {
      std::vector<float> row(static_cast<size_t>(cols));
      for (int64_t r = begin; r < end; ++r) {
        int64_t source = r;
        if (heads > 0) {  // new row h*Dh + 2i + j comes from old row h*Dh + j*Dh/2 + i
          const int64_t dh = rows / heads, h = r / dh, within = r % dh;
          source = h * dh + (within % 2) * (dh / 2) + within / 2;
        }
        t.rows(source, row.data());
        EncodeWeightRow(format, row.data(), cols,
                        bytes.data() + static_cast<size_t>(r) * row_bytes);
      }
    });
    std::vector<uint64_t> dims;
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it)
      dims.push_back(static_cast<uint64_t>(*it));
    writer->AddTensor(GgufTensorName(t.name), dims, Traits(format).ggml_type, bytes);
    if (written)
      written(TensorWritten{GgufTensorName(t.name), t.shape, format, bytes.size(), fallback});
  }
}

std::vector<ExportTensor> ExportTensorsOf(const Model& model) {
  std::vector<ExportTensor> out;
  for (const TensorRef& t : model.tensors()) {
    if (t.shape.empty() || t.shape.size() > 2) continue;
    // A policy's value head (train apa|ppo) serves training only; a GGUF file is for inference.
    if (t.name == "value_head.weight") continue;
    const int64_t cols = t.shape.back();
    const WeightMatrix m{t.format, t.data, t.shape.size() == 2 ? t.shape[0] : 1, cols};
    out.push_back({t.name, t.shape, [m](int64_t r, float* o) { ReadRow(m, r, o); }});
  }
  return out;
}

std::vector<ExportTensor> RandomTensors(const ModelConfig& c, uint64_t seed) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  std::vector<ExportTensor> out;
  // Each row is generated from its own seed, so rows can be produced in any order.
  auto add = [&](std::string name, std::vector<int64_t> shape, float scale, float offset) {
    const uint64_t tensor_seed = seed + out.size() * 0x9E3779B97F4A7C15ull;
    const int64_t cols = shape.back();
    out.push_back({std::move(name), std::move(shape), [=](int64_t r, float* o) {
                     std::mt19937_64 rng(tensor_seed + static_cast<uint64_t>(r));
                     std::normal_distribution<float> normal(offset, scale);
                     for (int64_t i = 0; i < cols; ++i) o[i] = normal(rng);
                   }});
  };
  // Scales like trained weights: unit embeddings, norms near 1, matrices 1/sqrt(fan-in).
  const float wscale = 1.0f / std::sqrt(static_cast<float>(d));
  for (const TensorSpec& spec : ModelTensors(c)) {
    switch (spec.role) {
      case TensorRole::kEmbedding: add(spec.name, spec.shape, 1.0f, 0.0f); break;
      case TensorRole::kAttnNorm:
      case TensorRole::kFfnNorm:
      case TensorRole::kFinalNorm: add(spec.name, spec.shape, 0.05f, 1.0f); break;
      case TensorRole::kDown:
        add(spec.name, spec.shape, 1.0f / std::sqrt(static_cast<float>(f)), 0.0f);
        break;
      case TensorRole::kWq:
      case TensorRole::kWk:
      case TensorRole::kWv:
      case TensorRole::kWo:
      case TensorRole::kGate:
      case TensorRole::kUp:
      case TensorRole::kLmHead:
      case TensorRole::kScore:
      case TensorRole::kValue: add(spec.name, spec.shape, wscale, 0.0f); break;
    }
  }
  return out;
}

}  // namespace starling
