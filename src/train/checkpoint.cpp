#include "train/checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/hf_config.h"
#include "tokenizer/gguf_export.h"

namespace starling {
namespace {

// Rows of Q/K heads in Hugging Face's halves layout versus GGUF's interleaved one: HF row
// h*Dh + j*Dh/2 + i holds the interleaved row h*Dh + 2i + j. `heads` 0: not a Q/K matrix.
int64_t InterleavedRow(int64_t hf_row, int64_t rows, int64_t heads) {
  if (heads == 0) return hf_row;
  const int64_t dh = rows / heads, h = hf_row / dh, within = hf_row % dh;
  return h * dh + 2 * (within % (dh / 2)) + within / (dh / 2);
}

int64_t QkHeads(const ModelConfig& c, const TensorSpec& spec) {
  if (c.rope_layout != RopeLayout::kInterleaved) return 0;
  if (spec.role == TensorRole::kWq) return c.num_heads;
  if (spec.role == TensorRole::kWk) return c.num_kv_heads;
  return 0;
}

// The name a tensor is saved under: Hugging Face's for a language model; for a reward model,
// Starling-RM's published layout (GPTRewardModel's transformer.* and v_head.weight), which
// `score`, `rank` and `serve --rm` load.
std::string SavedName(const ModelConfig& c, const std::string& name) {
  if (c.head != ModelHead::kReward) return name;
  if (name == "score.weight") return "v_head.weight";
  if (name.rfind("model.", 0) == 0) return "transformer." + name.substr(6);
  return name;
}

}  // namespace

void LoadParameters(TrainModel& m, const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::Open(path);
  for (Parameter& p : m.parameters()) {
    const std::string name = SavedName(m.config(), p.spec.name);
    const SafetensorsTensor* t = f.Find(name);
    if (t == nullptr || t->dtype != DType::kF32 || t->shape != p.spec.shape) {
      Fail(path, ": no float32 tensor '", name, "' of the model's shape");
    }
    const char* data = f.Data(*t).data();
    const int64_t rows = p.spec.shape.size() == 2 ? p.spec.shape[0] : 1;
    const int64_t cols = p.spec.shape.back();
    const int64_t heads = QkHeads(m.config(), p.spec);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(&p.value[static_cast<size_t>(InterleavedRow(r, rows, heads) * cols)],
                  data + static_cast<size_t>(r * cols) * sizeof(float),
                  static_cast<size_t>(cols) * sizeof(float));
    }
  }
}

void SaveHuggingFace(const TrainModel& m, const std::string& dir,
                     const std::string& tokenizer_source) {
  const ModelConfig& c = m.config();
  for (const Parameter& p : m.parameters()) {
    for (size_t i = 0; i < p.value.size(); ++i) {
      if (!std::isfinite(p.value[i])) {
        Fail("not saving ", dir, ": parameter '", p.spec.name, "' element ", i, " is ", p.value[i]);
      }
    }
  }
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
  if (interleaved && c.rope_dim != c.head_dim) {
    Fail("not saving ", dir, ": RoPE over ", c.rope_dim, " of ", c.head_dim,
         " head dimensions has no Hugging Face Llama/Mistral equivalent");
  }
  std::map<std::string, const Parameter*> params;
  for (const Parameter& p : m.parameters()) params.emplace(p.spec.name, &p);
  std::map<std::string, const TensorRef*> stored;
  for (const TensorRef& t : m.files().tensors) stored.emplace(t.name, &t);

  std::filesystem::create_directories(dir);
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  for (const TensorSpec& spec : ModelTensors(c)) {
    const int64_t rows = spec.shape.size() == 2 ? spec.shape[0] : 1;
    const int64_t cols = spec.shape.back();
    std::string bytes(static_cast<size_t>(rows * cols) * sizeof(float), '\0');
    auto* out = reinterpret_cast<float*>(bytes.data());
    const int64_t heads = QkHeads(c, spec);  // Q/K rows go back to the halves layout
    const auto p = params.find(spec.name);
    const TensorRef* t = p == params.end() ? stored.at(spec.name) : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t source = InterleavedRow(r, rows, heads);
      float* row = out + r * cols;
      if (t == nullptr) {
        std::memcpy(row, &p->second->value[static_cast<size_t>(source * cols)],
                    static_cast<size_t>(cols) * sizeof(float));
      } else {
        ReadRow(WeightMatrix{t->format, t->data, rows, cols}, source, row);
      }
    }
    writer.AddTensor(SavedName(c, spec.name), DType::kF32, spec.shape, bytes);
  }
  writer.WriteTo(dir + "/model.safetensors");
  const std::string config = HuggingFaceConfigJson(c, "float32");
  WriteFileAtomically(dir + "/config.json", [&](const ByteSink& sink) { sink(config); });

  if (IsDirectory(tokenizer_source)) {
    for (const char* name :
         {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "generation_config.json", "tokenizer.gguf"}) {
      const std::string from = tokenizer_source + "/" + name;
      if (!FileExists(from)) continue;
      const std::string bytes = ReadFile(from);
      WriteFileAtomically(dir + "/" + name, [&](const ByteSink& sink) { sink(bytes); });
    }
  } else if (!tokenizer_source.empty() && ReadFilePrefix(tokenizer_source, 4) != "GGUF") {
    const std::string bytes = ReadFile(tokenizer_source);  // a bare tokenizer.model
    WriteFileAtomically(dir + "/tokenizer.model", [&](const ByteSink& sink) { sink(bytes); });
  } else if (!tokenizer_source.empty()) {
    GgufWriter tokenizer;
    CopyTokenizerToGguf(tokenizer_source, &tokenizer);
    tokenizer.WriteTo(dir + "/tokenizer.gguf");
  }
}

}  // namespace starling
