// `starling quantize` (any model -> GGUF in a chosen format) and `starling make-model`
// (random weights of a given shape, as GGUF or a Hugging Face directory, for benchmarks).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "commands.h"
#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "generate/loaded_model.h"
#include "model/gguf_export.h"
#include "model/hf_config.h"
#include "progress.h"
#include "tokenizer/gguf_export.h"
#include "tokenizer/load.h"

namespace starling::cli {
namespace {

// The same tensors, each row counted into `progress` (by elements) as it is read: every
// converter reads each row once, in one thread.
std::vector<ExportTensor> Counted(std::vector<ExportTensor> tensors, Progress* progress) {
  struct Shared {
    std::mutex mutex;  // rows are produced on several threads (AddModelToGguf)
    double done = 0;
  };
  auto shared = std::make_shared<Shared>();
  for (ExportTensor& t : tensors) {
    const auto cols = static_cast<double>(t.shape.back());
    t.rows = [rows = std::move(t.rows), shared, cols, progress, name = t.name](int64_t r,
                                                                               float* out) {
      rows(r, out);
      const std::lock_guard<std::mutex> lock(shared->mutex);
      shared->done += cols;
      progress->Update(shared->done, name);
    };
  }
  return tensors;
}

double Elements(const std::vector<ExportTensor>& tensors) {
  double n = 0;
  for (const ExportTensor& t : tensors) {
    double e = 1;
    for (const int64_t d : t.shape) e *= static_cast<double>(d);
    n += e;
  }
  return n;
}

std::string Mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1 << 20));
  return buf;
}

void RunQuantize(const std::string& in, const std::string& out, const std::string& type) {
  const QuantPreset preset = QuantPresetFromName(type);
  const auto start = std::chrono::steady_clock::now();
  const Model model = Model::Load(in);
  GgufWriter writer;
  std::vector<ExportTensor> tensors = ExportTensorsOf(model);
  const size_t count = tensors.size();
  Progress progress(std::string("quantize to ") + QuantPresetName(preset), Elements(tensors));
  // One line per tensor, as llama-quantize prints: its name, shape, format, and its size as
  // float32 against its size as written; a preset format that did not fit is said.
  size_t index = 0;
  double f32_total = 0;
  double written_total = 0;
  size_t fallbacks = 0;
  const auto report = [&](const TensorWritten& t) {
    double elements = 1;
    std::string shape;
    for (const int64_t d : t.shape) {
      elements *= static_cast<double>(d);
      shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    }
    f32_total += 4 * elements;
    written_total += static_cast<double>(t.bytes);
    fallbacks += t.fallback ? 1 : 0;
    progress.Clear();
    std::fprintf(stderr, "[%4zu/%4zu] %-32s [%s] -> %-5s %10s -> %10s%s\n", ++index, count,
                 t.gguf_name.c_str(), shape.c_str(), WeightFormatName(t.format),
                 Mib(4 * elements).c_str(), Mib(static_cast<double>(t.bytes)).c_str(),
                 t.fallback ? "  (rows too short for the preset's format: fallback)" : "");
  };
  AddModelToGguf(model.config(), Counted(std::move(tensors), &progress), preset, &writer, report);
  progress.Finish();
  writer.AddUint32("general.quantization_version", 2);
  CopyTokenizerToGguf(in, &writer);
  writer.WriteTo(out);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr,
               "wrote %s (%s): %zu tensors, %s as float32 -> %s (%.2f bits per weight on "
               "average), %zu fallback(s), %.1f s\n",
               out.c_str(), QuantPresetName(preset), count, Mib(f32_total).c_str(),
               Mib(written_total).c_str(), f32_total > 0 ? 32.0 * written_total / f32_total : 0.0,
               fallbacks, seconds);
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
  std::string vocab;  // empty: DefaultVocab()
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

// The OpenChat/Starling tokenizer shipped in the source tree's models/, wherever make-model is
// run from: under the working directory, or beside or above the executable (build/starling
// finds ../models). Not found: an error that says to pass --vocab.
std::string DefaultVocab() {
  constexpr const char* kVocab = "models/openchat-3.5-tokenizer";
  std::vector<std::filesystem::path> candidates = {kVocab};
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / kVocab);
    candidates.push_back(exe.parent_path().parent_path() / kVocab);
  }
  std::string looked;
  for (const std::filesystem::path& dir : candidates) {
    if (FileExists((dir / "tokenizer.model").string())) return dir.lexically_normal().string();
    looked += (looked.empty() ? "" : ", ") + dir.lexically_normal().string();
  }
  Fail("make-model: the default vocabulary (", kVocab, ") is not in ", looked,
       "; pass --vocab DIR (a Hugging Face directory, a tokenizer.model or a GGUF file)");
}

void RunMakeModel(MakeModelFlags f) {
  if (f.vocab.empty()) f.vocab = DefaultVocab();
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
  if (f.format != "hf" && f.format != "gguf") {
    Fail("--format must be gguf or hf, not '", f.format, "'");
  }
  std::vector<ExportTensor> random = RandomTensors(c, f.seed);
  Progress progress("make-model", Elements(random));
  const std::vector<ExportTensor> tensors = Counted(std::move(random), &progress);
  if (f.format == "hf") {
    WriteHuggingFaceDirectory(c, tensors, preset, f);
  } else {
    GgufWriter writer;
    AddModelToGguf(c, tensors, preset, &writer);
    CopyTokenizerToGguf(f.vocab, &writer);
    writer.WriteTo(f.out);
  }
  progress.Finish();
  std::fprintf(stderr, "wrote %s: random %s weights, %d layers, hidden %d\n", f.out.c_str(),
               QuantPresetName(preset), c.num_layers, c.hidden_size);
}

struct AddTokensFlags {
  std::string in, out;
  std::vector<std::string> tokens;
  std::string eos;
  std::string chat_template;  // a template name
  std::string type = "f32";
};

// Hugging Face's add_special_tokens + resize_token_embeddings, written as a new GGUF file: the
// tokens are appended after the last id, and their embedding and output rows are the mean of
// the existing rows (as resize_token_embeddings initializes them), so that a new token starts
// as an average token rather than as noise that dominates the logits.
void RunAddTokens(const AddTokensFlags& f) {
  const Model model = Model::Load(f.in);
  ModelConfig c = model.config();
  if (c.head != ModelHead::kLanguageModel) Fail("add-tokens: ", f.in, " is not a language model");
  TokenizerAdditions additions;
  additions.special_tokens = f.tokens;
  additions.eos_token = f.eos;
  if (!f.chat_template.empty()) {
    const ChatTemplate& t = ChatTemplate::ByName(f.chat_template);
    if (t.jinja().empty()) {
      Fail("add-tokens: the '", f.chat_template,
           "' template has no Hugging Face chat_template to write; known with one: openchat");
    }
    additions.chat_template = std::string(t.jinja());
  }
  GgufWriter tokenizer;
  const int32_t vocab = CopyTokenizerToGguf(f.in, additions, &tokenizer);
  const auto old_tokens = static_cast<int64_t>(vocab) - static_cast<int64_t>(f.tokens.size());
  if (old_tokens != c.vocab_size) {
    Fail("add-tokens: the tokenizer of ", f.in, " has ", old_tokens, " tokens but the model ",
         c.vocab_size, " embedding rows; tokens can be added only when the two agree");
  }
  const int64_t old_rows = c.vocab_size;
  c.vocab_size = vocab;
  std::vector<ExportTensor> tensors = ExportTensorsOf(model);
  for (ExportTensor& t : tensors) {
    if (t.name != "model.embed_tokens.weight" && t.name != "lm_head.weight") continue;
    const int64_t cols = t.shape.back();
    auto mean = std::make_shared<std::vector<float>>(static_cast<size_t>(cols), 0.0f);
    std::vector<double> sum(static_cast<size_t>(cols), 0.0);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < old_rows; ++r) {
      t.rows(r, row.data());
      for (int64_t i = 0; i < cols; ++i) sum[static_cast<size_t>(i)] += row[static_cast<size_t>(i)];
    }
    for (int64_t i = 0; i < cols; ++i) {
      (*mean)[static_cast<size_t>(i)] =
          static_cast<float>(sum[static_cast<size_t>(i)] / static_cast<double>(old_rows));
    }
    t.shape[0] = vocab;
    t.rows = [rows = std::move(t.rows), mean, old_rows, cols](int64_t r, float* out) {
      if (r < old_rows) return rows(r, out);
      std::copy(mean->begin(), mean->end(), out);
    };
  }
  const QuantPreset preset = QuantPresetFromName(f.type);
  GgufWriter writer;
  AddModelToGguf(c, tensors, preset, &writer);
  const std::string tokenizer_bytes = tokenizer.Finish();
  const GgufFile tokenizer_keys = GgufFile::Parse(tokenizer_bytes, f.in);
  for (const GgufKeyValue& kv : tokenizer_keys.metadata()) {
    writer.AddValue(kv.key, kv.value);
  }
  writer.WriteTo(f.out);
  std::fprintf(stderr, "wrote %s: %lld -> %d tokens (%s)\n", f.out.c_str(),
               static_cast<long long>(old_rows), vocab, QuantPresetName(preset));
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
  q->add_option(
      "type", *type,
      "the file type, as llama-quantize names them (case-insensitive): " + QuantPresetList());
  q->add_option("--type", *type, "the same, as an option");
  q->footer(
      "Progress and an ETA go to stderr.\n"
      "Examples:\n"
      "  starling quantize Starling-LM-7B-alpha/ starling-q4_k_m.gguf Q4_K_M\n"
      "  starling quantize Starling-LM-7B-alpha/ starling-q5_k_m.gguf --type q5_k_m\n"
      "  starling quantize berkeley-nest/Starling-LM-7B-alpha starling-q8_0.gguf --type q8_0");
  AddThreadsOption(q);
  q->callback([=] {
    if (type->empty()) Fail("quantize: give the type (e.g. q4_k_m) after OUTPUT or as --type");
    RunQuantize(*in, *out, *type);
  });

  auto f = std::make_shared<MakeModelFlags>();
  CLI::App* m = app.add_subcommand(
      "make-model", "Write a model with random weights of a given shape (for benchmarks)");
  m->add_option("output", f->out, "GGUF file or directory (--format hf)")->required();
  m->add_option("--preset", f->preset, "7b (Mistral-7B shape), 1b (TinyLlama-1.1B), tiny")
      ->capture_default_str();
  m->add_option("--config", f->config, "a Hugging Face config.json instead of a preset");
  m->add_option("--type", f->type, "any quantize type (" + QuantPresetList() + ")")
      ->capture_default_str();
  AddThreadsOption(m);
  m->add_option("--format", f->format, "gguf or hf")->capture_default_str();
  m->add_option("--vocab", f->vocab,
                "the tokenizer to ship in the model: a Hugging Face directory, a tokenizer.model "
                "or a GGUF file (default: the OpenChat/Starling tokenizer in models/, found from "
                "the executable's place)");
  m->add_option("--seed", f->seed, "weights seed")->capture_default_str();
  m->footer(
      "Progress and an ETA go to stderr.\n"
      "Examples:\n"
      "  starling make-model /tmp/mistral7b-q4_0.gguf --preset 7b --type q4_0\n"
      "  starling make-model /tmp/tiny-hf --preset tiny --type bf16 --format hf\n"
      "  starling make-model /tmp/mine.gguf --config config.json --vocab tokenizer.model");
  m->callback([f] { RunMakeModel(*f); });

  auto a = std::make_shared<AddTokensFlags>();
  CLI::App* at = app.add_subcommand(
      "add-tokens",
      "Add special tokens to a model's vocabulary (new embedding and output rows: the mean of the "
      "old ones) and optionally set its EOS token and chat template; writes a GGUF file");
  AddModelResolution(
      at->add_option("input", a->in, "a Hugging Face directory, a GGUF file or a cached ORG/NAME")
          ->required());
  at->add_option("output", a->out, "the GGUF file to write")->required();
  at->add_option("--token", a->tokens, "a special token to append (repeatable)")->required();
  at->add_option("--eos", a->eos, "make this token (old or added) the EOS token");
  at->add_option("--chat-template", a->chat_template,
                 "write this template's Hugging Face chat_template, so that chat, serve, eval "
                 "and train use it by default (openchat)");
  at->add_option("--type", a->type, "f32, f16, bf16, q8_0, q4_0 or q4_k_m")->capture_default_str();
  at->footer(
      "Example: give stories260K OpenChat's turn token and template, for chat fine-tuning:\n"
      "  starling add-tokens models/stories260K.gguf base.gguf --token '<|end_of_turn|>' \\\n"
      "      --eos '<|end_of_turn|>' --chat-template openchat");
  at->callback([a] { RunAddTokens(*a); });
}

}  // namespace starling::cli
