#include "model/gguf_export.h"

#include "model/tensors.h"

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "formats/gguf.h"
#include "model/gguf_names.h"
#include "model/tensors.h"

namespace starling {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint32_t GgmlTypeOf(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32: return kGgmlF32;
    case WeightFormat::kF16: return kGgmlF16;
    case WeightFormat::kBF16: return kGgmlBF16;
    case WeightFormat::kQ8_0: return kGgmlQ8_0;
    case WeightFormat::kQ4_0: return kGgmlQ4_0;
    case WeightFormat::kQ4_K: return kGgmlQ4_K;
    case WeightFormat::kQ6_K: return kGgmlQ6_K;
  }
  return kGgmlF32;
}

}  // namespace

void EncodeWeightRow(WeightFormat f, const float* x, int64_t n, char* out) {
  switch (f) {
    case WeightFormat::kF32: std::memcpy(out, x, static_cast<size_t>(n) * 4); return;
    case WeightFormat::kF16:
    case WeightFormat::kBF16: {
      auto* o = reinterpret_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) {
        if (f == WeightFormat::kF16) {
          o[i] = FloatToHalf(x[i]);
        } else {  // round to nearest even
          uint32_t bits;
          std::memcpy(&bits, &x[i], 4);
          o[i] = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
        }
      }
      return;
    }
    case WeightFormat::kQ8_0: QuantizeRow(QuantType::kQ8_0, x, n, out); return;
    case WeightFormat::kQ4_0: QuantizeRow(QuantType::kQ4_0, x, n, out); return;
    case WeightFormat::kQ4_K: QuantizeRow(QuantType::kQ4_K, x, n, out); return;
    case WeightFormat::kQ6_K: QuantizeRow(QuantType::kQ6_K, x, n, out); return;
  }
}

QuantPreset QuantPresetFromName(const std::string& name) {
  for (const QuantPreset p : {QuantPreset::kF32, QuantPreset::kF16, QuantPreset::kBF16,
                              QuantPreset::kQ8_0, QuantPreset::kQ4_0, QuantPreset::kQ4_K_M}) {
    if (name == QuantPresetName(p)) return p;
  }
  Fail("unknown quantization type '", name, "' (known: f32, f16, bf16, q8_0, q4_0, q4_k_m)");
}

const char* QuantPresetName(QuantPreset preset) {
  switch (preset) {
    case QuantPreset::kF32: return "f32";
    case QuantPreset::kF16: return "f16";
    case QuantPreset::kBF16: return "bf16";
    case QuantPreset::kQ8_0: return "q8_0";
    case QuantPreset::kQ4_0: return "q4_0";
    case QuantPreset::kQ4_K_M: return "q4_k_m";
  }
  return "unknown";
}

WeightFormat FormatForTensor(QuantPreset preset, const std::string& name,
                             const std::vector<int64_t>& shape) {
  if (shape.size() != 2) return WeightFormat::kF32;
  const int64_t cols = shape[1];
  auto fits = [&](WeightFormat f) {
    return f == WeightFormat::kQ8_0 || f == WeightFormat::kQ4_0 ? cols % 32 == 0 : cols % 256 == 0;
  };
  auto or_fallback = [&](WeightFormat f) {
    if (fits(f)) return f;
    return fits(WeightFormat::kQ8_0) ? WeightFormat::kQ8_0 : WeightFormat::kF16;
  };
  switch (preset) {
    case QuantPreset::kF32: return WeightFormat::kF32;
    case QuantPreset::kF16: return WeightFormat::kF16;
    case QuantPreset::kBF16: return WeightFormat::kBF16;
    case QuantPreset::kQ8_0: return or_fallback(WeightFormat::kQ8_0);
    case QuantPreset::kQ4_0:
      // llama.cpp keeps the output head at Q6_K in Q4_0 files: it matters most for quality.
      if (name == "lm_head.weight") return or_fallback(WeightFormat::kQ6_K);
      return or_fallback(WeightFormat::kQ4_0);
    case QuantPreset::kQ4_K_M:
      if (name == "lm_head.weight" || EndsWith(name, "self_attn.v_proj.weight") ||
          EndsWith(name, "mlp.down_proj.weight")) {
        return or_fallback(WeightFormat::kQ6_K);
      }
      return or_fallback(WeightFormat::kQ4_K);
  }
  return WeightFormat::kF32;
}

void AddModelToGguf(const ModelConfig& c, const std::vector<ExportTensor>& tensors,
                    QuantPreset preset, GgufWriter* writer) {
  writer->AddString("general.architecture", "llama");
  writer->AddString("general.name", c.architecture);
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
  for (const ExportTensor& t : tensors) {
    const WeightFormat format = FormatForTensor(preset, t.name, t.shape);
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const int64_t cols = t.shape.back();
    const size_t row_bytes = WeightRowBytes(format, cols);
    int64_t heads = 0;
    if (permute && EndsWith(t.name, "self_attn.q_proj.weight")) heads = c.num_heads;
    if (permute && EndsWith(t.name, "self_attn.k_proj.weight")) heads = c.num_kv_heads;
    std::string bytes(row_bytes * static_cast<size_t>(rows), '\0');
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      int64_t source = r;
      if (heads > 0) {  // new row h*Dh + 2i + j comes from old row h*Dh + j*Dh/2 + i
        const int64_t dh = rows / heads, h = r / dh, within = r % dh;
        source = h * dh + (within % 2) * (dh / 2) + within / 2;
      }
      t.rows(source, row.data());
      EncodeWeightRow(format, row.data(), cols, bytes.data() + static_cast<size_t>(r) * row_bytes);
    }
    std::vector<uint64_t> dims;
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it)
      dims.push_back(static_cast<uint64_t>(*it));
    writer->AddTensor(GgufTensorName(t.name), dims, GgmlTypeOf(format), bytes);
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
