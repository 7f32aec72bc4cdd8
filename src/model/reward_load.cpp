#include "model/reward_load.h"

#include <map>
#include <memory>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "model/hf_config.h"

namespace starling {
namespace {

std::string Join(const std::string& dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  return dir.back() == '/' ? dir + std::string(name) : dir + "/" + std::string(name);
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

WeightFormat FormatOf(DType dtype, const std::string& file, const std::string& name) {
  switch (dtype) {
    case DType::kF32: return WeightFormat::kF32;
    case DType::kF16: return WeightFormat::kF16;
    case DType::kBF16: return WeightFormat::kBF16;
    default:
      Fail(file, ": tensor '", name, "' has dtype ", DTypeName(dtype),
           "; supported: F32, F16, BF16");
  }
}

// Everything the tensors point into, kept alive by the Model.
struct RewardStorage {
  std::vector<TorchCheckpoint> torch;
  std::unique_ptr<SafetensorsModel> safetensors;
};

// The shard names of a pytorch_model.bin.index.json, each checked to be a plain file name.
std::vector<std::string> TorchShards(const std::string& index_path) {
  const nlohmann::json index = ParseStrictJson(ReadFile(index_path), index_path, "", true);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    Fail(index_path, ": expected an object with a \"weight_map\" object");
  }
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) Fail(index_path, ": weight_map[\"", tensor, "\"] must be a string");
    const std::string& name = shard.get_ref<const std::string&>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      Fail(index_path, ": weight_map[\"", tensor, "\"] = \"", PrintableForError(name),
           "\" is not a file name in the index's directory");
    }
    shards.insert(name);
  }
  if (shards.empty()) Fail(index_path, ": weight_map is empty");
  return {shards.begin(), shards.end()};
}

std::string FindCheckpoint(const std::string& dir) {
  for (const char* name : {"model.safetensors.index.json", "model.safetensors",
                           "pytorch_model.bin.index.json", "pytorch_model.bin"}) {
    if (FileExists(Join(dir, name))) return Join(dir, name);
  }
  Fail(dir,
       ": no reward checkpoint (looked for model.safetensors[.index.json] and "
       "pytorch_model.bin[.index.json])");
}

}  // namespace

std::optional<std::string> CanonicalRewardTensorName(std::string_view name,
                                                     bool has_transformer_prefix) {
  if (name == "v_head.weight" || name == "score.weight") return "score.weight";
  if (name.starts_with("transformer.")) {
    return "model." + std::string(name.substr(std::string_view("transformer.").size()));
  }
  if (name.starts_with("model.model.")) {
    if (has_transformer_prefix) return std::nullopt;  // the same decoder under a second name
    return std::string(name.substr(std::string_view("model.").size()));
  }
  if (name.starts_with("model.")) {
    if (name == "model.lm_head.weight") return std::nullopt;
    return std::string(name);
  }
  return std::nullopt;  // lm_head.weight, buffers, anything else the reward does not read
}

ModelFiles OpenRewardModelFiles(const RewardModelFiles& files) {
  const std::string config_path =
      files.config.empty() ? Join(files.directory, "config.json") : files.config;
  ModelConfig config = ParseHuggingFaceConfig(ReadFile(config_path), "", DirectoryOf(config_path));
  config.head = ModelHead::kReward;

  const std::string checkpoint =
      files.checkpoint.empty() ? FindCheckpoint(files.directory) : files.checkpoint;
  auto storage = std::make_shared<RewardStorage>();
  struct Named {
    std::string name;
    TensorRef ref;
  };
  std::vector<Named> raw;  // as stored
  if (checkpoint.ends_with(".safetensors") ||
      checkpoint.ends_with("model.safetensors.index.json")) {
    storage->safetensors = std::make_unique<SafetensorsModel>(
        SafetensorsModel::OpenDirectory(DirectoryOf(checkpoint)));
    for (const SafetensorsModel::Entry& entry : storage->safetensors->tensors()) {
      const std::string_view data = storage->safetensors->Data(entry);
      TensorRef t{entry.tensor->name,  entry.file->source(), WeightFormat::kF32,
                  entry.tensor->shape, data.data(),          data.size()};
      if (entry.tensor->dtype != DType::kF32 && entry.tensor->dtype != DType::kF16 &&
          entry.tensor->dtype != DType::kBF16) {
        if (!CanonicalRewardTensorName(t.name, true)) continue;  // an unused integer buffer
      }
      t.format = FormatOf(entry.tensor->dtype, t.file, t.name);
      raw.push_back({entry.tensor->name, std::move(t)});
    }
  } else {
    std::vector<std::string> paths = {checkpoint};
    if (checkpoint.ends_with(".index.json")) {
      paths.clear();
      for (const std::string& shard : TorchShards(checkpoint)) {
        paths.push_back(Join(DirectoryOf(checkpoint), shard));
      }
    }
    for (const std::string& path : paths) {
      storage->torch.push_back(TorchCheckpoint::Open(path));
      for (const TorchTensor& tensor : storage->torch.back().tensors()) {
        raw.push_back(
            {tensor.name, TensorRef{tensor.name, path, FormatOf(tensor.dtype, path, tensor.name),
                                    tensor.shape, tensor.data, tensor.size_bytes}});
      }
    }
  }

  bool has_transformer = false;
  for (const Named& n : raw) has_transformer |= n.name.starts_with("transformer.");
  std::vector<TensorRef> tensors;
  std::map<std::string, std::string> origin;  // canonical name -> stored name
  for (Named& n : raw) {
    const std::optional<std::string> canonical = CanonicalRewardTensorName(n.name, has_transformer);
    if (!canonical) continue;
    const auto [it, inserted] = origin.emplace(*canonical, n.name);
    if (!inserted) {
      Fail(n.ref.file, ": tensors '", it->second, "' and '", n.name, "' both map to '", *canonical,
           "'");
    }
    n.ref.name = *canonical;
    tensors.push_back(std::move(n.ref));
  }
  if (origin.count("score.weight") == 0) {
    Fail(checkpoint, ": no reward head (expected v_head.weight or score.weight)");
  }
  return {std::move(config), std::move(tensors), checkpoint, std::move(storage)};
}

bool IsRewardCheckpoint(const std::string& directory) {
  if (!IsDirectory(directory) || !FileExists(Join(directory, "config.json"))) return false;
  const std::string checkpoint = FindCheckpoint(directory);
  if (checkpoint.ends_with(".index.json")) {
    const std::string text = ReadFile(checkpoint);
    return text.find("\"v_head.weight\"") != std::string::npos ||
           text.find("\"score.weight\"") != std::string::npos;
  }
  if (checkpoint.ends_with(".safetensors")) {
    const SafetensorsFile f = SafetensorsFile::Open(checkpoint);
    return f.Find("v_head.weight") != nullptr || f.Find("score.weight") != nullptr;
  }
  const TorchCheckpoint torch = TorchCheckpoint::Open(checkpoint);
  for (const TorchTensor& t : torch.tensors()) {
    if (t.name == "v_head.weight" || t.name == "score.weight") return true;
  }
  return false;
}

Model LoadRewardModel(const RewardModelFiles& files) {
  ModelFiles f = OpenRewardModelFiles(files);
  return Model(std::move(f.config), f.tensors, f.source, f.storage);
}

}  // namespace starling
