// Model::Load: from a Hugging Face directory or a GGUF file to named tensors and a config.
// Both sources are mapped to the same canonical (Hugging Face) tensor names, so one binding
// step in model.cpp serves both.
#include <memory>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/gguf_config.h"
#include "model/gguf_names.h"
#include "model/hf_config.h"
#include "model/model.h"

namespace starling {
namespace {

ModelFiles GgufFiles(std::shared_ptr<const GgufFile> gguf) {
  const std::string& path = gguf->source();
  const ModelConfig config = ModelConfigFromGguf(*gguf, path);
  std::vector<TensorRef> tensors;
  std::vector<std::string> unsupported;  // every tensor whose type we cannot run, for the error
  for (const GgufTensorInfo& info : gguf->tensors()) {
    TensorRef t;
    t.name = CanonicalFromGgufName(info.name).value_or(info.name);  // unknown: kept for info
    t.file = path;
    const FormatTraits* format = FindFormatByGgmlType(info.ggml_type);
    if (format == nullptr || !format->weight) {
      unsupported.push_back(Concat("'", info.name, "' (", GgufTypeName(info.ggml_type), ")"));
      continue;
    }
    t.format = format->format;
    // GGUF lists dimensions fastest-varying first; ours are outermost first.
    for (auto it = info.dims.rbegin(); it != info.dims.rend(); ++it) {
      t.shape.push_back(static_cast<int64_t>(*it));
    }
    const std::string_view data = gguf->TensorData(info);
    t.data = data.data();
    t.size_bytes = data.size();
    if (gguf->mapping().size() > 0) t.mapping = &gguf->mapping();
    tensors.push_back(std::move(t));
  }
  if (!unsupported.empty()) {
    std::string list;
    for (size_t i = 0; i < unsupported.size() && i < 8; ++i)
      list += (i > 0 ? ", " : "") + unsupported[i];
    if (unsupported.size() > 8) list += Concat(" and ", unsupported.size() - 8, " more");
    Fail(path, ": ", unsupported.size(), " tensor",
         unsupported.size() == 1 ? " has a type" : "s have types", " this build cannot run: ", list,
         "; supported: ", WeightFormatList(), " (`starling info` lists every tensor's type)");
  }
  return {config, std::move(tensors), path, gguf};
}

ModelFiles HuggingFaceFiles(const std::string& dir) {
  const ModelConfig config = LoadHuggingFaceConfig(dir);
  auto weights = std::make_shared<SafetensorsModel>(SafetensorsModel::OpenDirectory(dir));
  std::vector<TensorRef> tensors;
  for (const SafetensorsModel::Entry& entry : weights->tensors()) {
    TensorRef t;
    t.name = entry.tensor->name;
    t.file = entry.file->source();
    switch (entry.tensor->dtype) {
      case DType::kF32: t.format = WeightFormat::kF32; break;
      case DType::kF16: t.format = WeightFormat::kF16; break;
      case DType::kBF16: t.format = WeightFormat::kBF16; break;
      default:
        if (t.name.find("weight") != std::string::npos) {
          Fail(t.file, ": tensor '", t.name, "' has dtype ", DTypeName(entry.tensor->dtype),
               "; supported: F32, F16, BF16");
        }
        continue;  // e.g. an integer buffer the model does not use
    }
    t.shape = entry.tensor->shape;
    const std::string_view data = weights->Data(entry);
    t.data = data.data();
    t.size_bytes = data.size();
    tensors.push_back(std::move(t));
  }
  return {config, std::move(tensors), dir, weights};
}

}  // namespace

Model Model::LoadGgufBytes(std::string_view bytes, const std::string& source) {
  return LoadGguf(std::make_shared<const GgufFile>(GgufFile::Parse(bytes, source)));
}

Model Model::LoadGguf(std::shared_ptr<const GgufFile> gguf, const LoadProgress& progress) {
  ModelFiles files = GgufFiles(std::move(gguf));
  return Model(std::move(files.config), files.tensors, files.source, files.storage, progress);
}

ModelFiles OpenModelFiles(const std::string& path) {
  if (IsDirectory(path)) return HuggingFaceFiles(path);
  if (ReadFilePrefix(path, 4) == "GGUF") {
    return GgufFiles(std::make_shared<const GgufFile>(GgufFile::Open(path)));
  }
  Fail(path,
       ": not a model (expected a Hugging Face directory with config.json and "
       "*.safetensors, or a GGUF file)");
}

Model Model::Load(const std::string& path, const LoadProgress& progress) {
  ModelFiles files = OpenModelFiles(path);
  return Model(std::move(files.config), files.tensors, files.source, files.storage, progress);
}

}  // namespace starling
