// `starling quantize` (any model -> GGUF in a chosen format) and `starling make-model`
// (random weights of a given shape, as GGUF or a Hugging Face directory, for benchmarks).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "generate/loaded_model.h"
#include "model/gguf_export.h"
#include "model/hf_config.h"
#include "tokenizer/gguf_export.h"
#include "tokenizer/load.h"

namespace starling::cli {
namespace {

void RunQuantize(const std::string& in, const std::string& out, const std::string& type) {
  const QuantPreset preset = QuantPresetFromName(type);
  const Model model = Model::Load(in);
  GgufWriter writer;
  AddModelToGguf(model.config(), ExportTensorsOf(model), preset, &writer);
  writer.AddUint32("general.quantization_version", 2);
  CopyTokenizerToGguf(in, &writer);
  writer.WriteTo(out);
  std::fprintf(stderr, "wrote %s (%s)\n", out.c_str(), QuantPresetName(preset));
}

ModelConfig Preset(const std::string& name) {
  ModelConfig c;
  c.architecture = "MistralForCausalLM";
  c.vocab_size = 32002;  // OpenChat / Starling vocabulary, shipped in models/
  c.rope_theta = 10000.0f;
  c.rms_norm_eps = 1e-5f;
  c.bos_token_id = 1;
  c.eos_token_ids = {32000};
  if (name == "7b") {  // Mistral-7B / Starling-LM-7B-alpha
    c.hidden_size = 4096, c.intermediate_size = 14336, c.num_layers = 32, c.num_heads = 32;
    c.num_kv_heads = 8, c.head_dim = 128, c.sliding_window = 4096, c.max_position_embeddings = 8192;
  } else if (name == "1b") {  // TinyLlama-1.1B's shape
    c.architecture = "LlamaForCausalLM";
    c.hidden_size = 2048, c.intermediate_size = 5632, c.num_layers = 22, c.num_heads = 32;
    c.num_kv_heads = 4, c.head_dim = 64, c.max_position_embeddings = 2048;
  } else if (name == "tiny") {
    c.hidden_size = 256, c.intermediate_size = 768, c.num_layers = 4, c.num_heads = 8;
    c.num_kv_heads = 4, c.head_dim = 32, c.max_position_embeddings = 2048;
  } else {
    Fail("unknown preset '", name, "' (known: 7b, 1b, tiny; or give --config)");
  }
  c.rope_dim = c.head_dim;
  return c;
}

struct MakeModelFlags {
  std::string preset = "tiny";
  std::string config;
  std::string type = "f16";
  std::string format = "gguf";
  std::string vocab = "models/openchat-3.5-tokenizer";
  uint64_t seed = 1;
  std::string out;
};

void WriteHuggingFaceDirectory(const ModelConfig& c, const std::vector<ExportTensor>& tensors,
                               QuantPreset preset, const MakeModelFlags& f) {
  if (preset != QuantPreset::kF32 && preset != QuantPreset::kF16 && preset != QuantPreset::kBF16) {
    Fail("Hugging Face directories hold f32, f16 or bf16 weights, not ", QuantPresetName(preset));
  }
  std::filesystem::create_directories(f.out);
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  const DType dtype = preset == QuantPreset::kF32   ? DType::kF32
                      : preset == QuantPreset::kF16 ? DType::kF16
                                                    : DType::kBF16;
  const WeightFormat format = preset == QuantPreset::kF32   ? WeightFormat::kF32
                              : preset == QuantPreset::kF16 ? WeightFormat::kF16
                                                            : WeightFormat::kBF16;
  for (const ExportTensor& t : tensors) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const int64_t cols = t.shape.back();
    std::vector<float> row(static_cast<size_t>(cols));
    std::string bytes;
    const size_t row_bytes = WeightRowBytes(format, cols);
    bytes.resize(row_bytes * static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      t.rows(r, row.data());
      EncodeWeightRow(format, row.data(), cols, bytes.data() + static_cast<size_t>(r) * row_bytes);
    }
    writer.AddTensor(t.name, dtype, t.shape, bytes);
  }
  writer.WriteTo(f.out + "/model.safetensors");
  const std::string config = HuggingFaceConfigJson(c, preset == QuantPreset::kBF16  ? "bfloat16"
                                                      : preset == QuantPreset::kF16 ? "float16"
                                                                                    : "float32");
  WriteFileAtomically(f.out + "/config.json", [&](const ByteSink& sink) { sink(config); });
  auto copy = [&](const std::string& from, const char* name) {
    std::filesystem::copy_file(from, f.out + "/" + name,
                               std::filesystem::copy_options::overwrite_existing);
  };
  if (!IsDirectory(f.vocab)) {  // a bare tokenizer.model (RunMakeModel refused a GGUF)
    copy(f.vocab, "tokenizer.model");
    return;
  }
  for (const char* name : {"tokenizer.model", "added_tokens.json", "special_tokens_map.json",
                           "tokenizer_config.json"}) {
    const std::string from = f.vocab + "/" + name;
    if (FileExists(from)) copy(from, name);
  }
}

void RunMakeModel(const MakeModelFlags& f) {
  ModelConfig c = f.config.empty() ? Preset(f.preset)
                                   : ParseHuggingFaceConfig(ReadFile(f.config), "", f.config);
  const std::string config_source = f.config.empty() ? "preset " + f.preset : f.config;
  c.Validate(config_source);
  // What starling would refuse to load is refused here, before anything is written: a
  // tokenizer with more tokens than the model has rows.
  const Tokenizer tokenizer = LoadTokenizer(f.vocab);
  CheckTokenizerFitsModel(tokenizer, c,
                          Concat("make-model: --vocab ", f.vocab, " with ", config_source));
  if (f.format == "hf" && !IsDirectory(f.vocab) && ReadFilePrefix(f.vocab, 4) == "GGUF") {
    Fail("make-model: --format hf needs --vocab as a Hugging Face directory or a tokenizer.model, ",
         "not a GGUF file (", f.vocab, ")");
  }
  const QuantPreset preset = QuantPresetFromName(f.type);
  const std::vector<ExportTensor> tensors = RandomTensors(c, f.seed);
  if (f.format == "hf") {
    WriteHuggingFaceDirectory(c, tensors, preset, f);
  } else if (f.format == "gguf") {
    GgufWriter writer;
    AddModelToGguf(c, tensors, preset, &writer);
    CopyTokenizerToGguf(f.vocab, &writer);
    writer.WriteTo(f.out);
  } else {
    Fail("--format must be gguf or hf, not '", f.format, "'");
  }
  std::fprintf(stderr, "wrote %s: random %s weights, %d layers, hidden %d\n", f.out.c_str(),
               QuantPresetName(preset), c.num_layers, c.hidden_size);
}

}  // namespace

void RegisterConvert(CLI::App& app) {
  auto in = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto type = std::make_shared<std::string>();
  CLI::App* q = app.add_subcommand(
      "quantize", "Convert a model (HF directory or GGUF) to a GGUF file of the given type");
  AddModelResolution(
      q->add_option("input", *in, "a Hugging Face directory, a GGUF file or a cached ORG/NAME")
          ->required());
  q->add_option("output", *out, "the GGUF file to write")->required();
  q->add_option("--type", *type, "f32, f16, bf16, q8_0, q4_0 or q4_k_m")->required();
  q->callback([=] { RunQuantize(*in, *out, *type); });

  auto f = std::make_shared<MakeModelFlags>();
  CLI::App* m = app.add_subcommand(
      "make-model", "Write a model with random weights of a given shape (for benchmarks)");
  m->add_option("output", f->out, "GGUF file or directory (--format hf)")->required();
  m->add_option("--preset", f->preset, "7b (Mistral-7B shape), 1b (TinyLlama-1.1B), tiny")
      ->capture_default_str();
  m->add_option("--config", f->config, "a Hugging Face config.json instead of a preset");
  m->add_option("--type", f->type, "f32, f16, bf16, q8_0, q4_0, q4_k_m")->capture_default_str();
  m->add_option("--format", f->format, "gguf or hf")->capture_default_str();
  m->add_option("--vocab", f->vocab, "tokenizer source: HF directory, tokenizer.model or GGUF")
      ->capture_default_str();
  m->add_option("--seed", f->seed, "weights seed")->capture_default_str();
  m->callback([f] { RunMakeModel(*f); });
}

}  // namespace starling::cli
