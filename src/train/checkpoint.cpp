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

void SaveHuggingFace(const TrainModel& m, const std::string& dir,
                     const std::string& tokenizer_source) {
  const ModelConfig& c = m.config();
  for (const Parameter& p : m.parameters()) {
    for (size_t i = 0; i < p.value.size(); ++i) {
      if (!std::isfinite(p.value[i])) {
        Fail("not saving ", dir, ": parameter '", p.spec.name, "' element ", i, " is ",
             p.value[i]);
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
    int64_t heads = 0;  // Q/K of an interleaved model: rows go back to the halves layout
    if (interleaved && spec.role == TensorRole::kWq) heads = c.num_heads;
    if (interleaved && spec.role == TensorRole::kWk) heads = c.num_kv_heads;
    const auto p = params.find(spec.name);
    const TensorRef* t = p == params.end() ? stored.at(spec.name) : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t source = r;
      if (heads > 0) {  // HF row h*Dh + j*Dh/2 + i holds the interleaved row h*Dh + 2i + j
        const int64_t dh = rows / heads, h = r / dh, within = r % dh;
        source = h * dh + 2 * (within % (dh / 2)) + within / (dh / 2);
      }
      float* row = out + r * cols;
      if (t == nullptr) {
        std::memcpy(row, &p->second->value[static_cast<size_t>(source * cols)],
                    static_cast<size_t>(cols) * sizeof(float));
      } else {
        ReadRow(WeightMatrix{t->format, t->data, rows, cols}, source, row);
      }
    }
    writer.AddTensor(spec.name, DType::kF32, spec.shape, bytes);
  }
  writer.WriteTo(dir + "/model.safetensors");
  const std::string config = HuggingFaceConfigJson(c, "float32");
  WriteFileAtomically(dir + "/config.json", [&](const ByteSink& sink) { sink(config); });

  if (IsDirectory(tokenizer_source)) {
    for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                             "special_tokens_map.json", "added_tokens.json",
                             "generation_config.json", "tokenizer.gguf"}) {
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
