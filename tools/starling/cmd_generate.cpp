// `starling generate`, `chat`, `perplexity` and `info`.
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/memory.h"
#include "core/signals.h"
#include "core/thread_pool.h"
#include "embedded_model.h"
#include "formats/gguf.h"
#include "generate/generate.h"
#include "line_reader.h"
#include "progress.h"
#include "quant/format.h"

namespace starling::cli {
namespace {

void Print(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

// A whole number of type T, at least `min`, else `message`: CLI11 took 2^64 silently (clamped).
template <typename T>
CLI::Validator WholeNumberFrom(T min, std::string message) {
  return CLI::Validator(
      [min, message](const std::string& value) {
        T parsed = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), parsed);
        return ec == std::errc() && end == value.data() + value.size() && parsed >= min
                   ? std::string()
                   : message;
      },
      "", "WholeNumber");
}

// Sampling and length flags shared by generate and chat, with llama.cpp's names.
struct SamplingFlags {
  int32_t n_predict = 256;
  float temperature = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  int64_t seed = -1;
  int32_t context = 0;
  DType kv_type = DType::kF32;
  std::vector<std::string> stop;

  void Add(CLI::App* cmd) {
    AddThreadsOption(cmd);
    AddKvTypeOption(cmd, &kv_type);
    cmd->add_option("-n,--n-predict", n_predict,
                    "most tokens to generate; -1: until the end of the reply (EOS) or a full "
                    "context")
        ->check(WholeNumberFrom<int32_t>(
            -1, "must be a number of tokens, or -1 (until EOS or a full context)"))
        ->capture_default_str();
    cmd->add_option(
           "--temp", temperature,
           "sampling temperature: higher is more varied; 0 always takes the likeliest token")
        ->capture_default_str();
    cmd->add_option("--top-k", top_k, "sample among the k likeliest tokens only; 0 is off")
        ->check(CLI::Range(0, std::numeric_limits<int32_t>::max()))
        ->capture_default_str();
    cmd->add_option("--top-p", top_p,
                    "sample among the likeliest tokens that make up this probability; 1 is off")
        ->capture_default_str();
    cmd->add_option("--min-p", min_p,
                    "drop tokens less likely than this fraction of the likeliest one; 0 is off")
        ->capture_default_str();
    cmd->add_option("--repeat-penalty", repeat_penalty,
                    "make tokens seen in the last --repeat-last-n less likely; 1 is off")
        ->capture_default_str();
    cmd->add_option("--repeat-last-n", repeat_last_n,
                    "how many recent tokens --repeat-penalty looks at")
        ->capture_default_str();
    cmd->add_option("-s,--seed", seed, "sampling seed (default: random, printed to stderr)")
        ->check(WholeNumberFrom<int64_t>(
            -1, "must be an integer from 0 to 9223372036854775807 (-1: random)"));
    cmd->add_option("-c,--ctx,--ctx-size", context,
                    "context length in tokens, prompt and reply together (default: the model's, "
                    "at most 4096)");
    cmd->add_option("--stop", stop,
                    "stop when the text produces this string, which is left out (repeatable)");
  }

  // `session_length`: the session's context, what -n -1 may fill.
  GenerationOptions Options(const LoadedModel& m, const ChatTemplate* chat_template,
                            int32_t session_length) const {
    GenerationOptions o;
    o.max_new_tokens = n_predict == -1 ? session_length : n_predict;
    o.sampling.temperature = temperature;
    o.sampling.top_k = top_k;
    o.sampling.top_p = top_p;
    o.sampling.min_p = min_p;
    o.sampling.repeat_penalty = repeat_penalty;
    o.sampling.repeat_last_n = repeat_last_n;
    if (seed >= 0) {
      o.sampling.seed = static_cast<uint64_t>(seed);
    } else {
      o.sampling.seed = std::random_device{}();
      if (temperature > 0) {
        std::fprintf(stderr, "seed: %llu\n", static_cast<unsigned long long>(o.sampling.seed));
      }
    }
    o.sampling.Validate();
    o.stop_token_ids = m.StopTokens(chat_template);
    o.stop_strings = stop;
    return o;
  }

  int32_t Context(const LoadedModel& m) const {
    const int32_t max = m.model->config().max_position_embeddings;
    if (context == 0) return std::min(max, 4096);
    CheckContext(m, context, 1, kv_type);
    return context;
  }
};

void PrintStats(const GenerationResult& r) {
  const double gen_tps =
      r.generate_seconds > 0 ? static_cast<double>(r.tokens.size()) / r.generate_seconds : 0.0;
  std::fprintf(stderr,
               "\n[%d prompt tokens in %.3f s (%.1f tok/s); %zu generated in %.3f s (%.1f "
               "tok/s); finish: %s]\n",
               r.prompt_tokens, r.prompt_seconds,
               r.prompt_seconds > 0 ? r.prompt_tokens / r.prompt_seconds : 0.0, r.tokens.size(),
               r.generate_seconds, gen_tps, FinishReasonName(r.finish));
}

struct GenerateFlags {
  std::string model;
  std::string prompt;
  bool prompt_given = false;
  std::string file;
  std::string template_name;
  std::string system;
  bool verbose = false;
  SamplingFlags sampling;
};

void RunGenerate(const GenerateFlags& f) {
  if (f.prompt_given && !f.file.empty()) Fail("give either -p or -f, not both");
  const LoadedModel m = LoadModelOrDefault(f.model);
  std::string prompt = f.prompt;
  if (!f.file.empty()) prompt = f.file == "-" ? ReadStdin() : ReadFile(f.file);
  std::vector<int32_t> ids;
  const ChatTemplate* chat_template = nullptr;
  if (!f.template_name.empty()) {
    chat_template = &ChatTemplate::ByName(f.template_name);
    std::vector<ChatMessage> messages;
    if (!f.system.empty()) messages.push_back({"system", f.system});
    messages.push_back({"user", prompt});
    ids = chat_template->Render(*m.tokenizer, messages, true).ids;
  } else {
    if (!f.system.empty()) Fail("--system needs --template");
    // Raw continuation: BOS first, special-token text recognised as in Hugging Face.
    ids = m.tokenizer->Encode(prompt, {.add_bos = m.tokenizer->add_bos_token()});
  }
  Session session(*m.model, f.sampling.Context(m), f.sampling.kv_type);
  const GenerationResult r = Generate(
      session, *m.tokenizer, ids, f.sampling.Options(m, chat_template, session.context_length()),
      [](std::string_view text) {
        Print(text);
        return true;
      });
  if (f.verbose) PrintStats(r);
}

struct ChatFlags {
  std::string model;
  std::string template_name;
  std::string system;
  std::string history = DefaultChatHistoryFile();
  SamplingFlags sampling;
};

constexpr const char* kChatHelp =
    "Type a message and press Enter; the reply streams back. Ctrl-C stops a reply (the "
    "conversation is kept); Ctrl-C on an empty line or Ctrl-D leaves.\n"
    "Several lines as one message: end each line but the last with \\, or put the message "
    "between two lines of \"\"\".\n"
    "Commands:\n"
    "  /help          this text\n"
    "  /reset         start a new conversation (/clear too)\n"
    "  /system TEXT   set the system message and start a new conversation (/system alone "
    "removes it)\n"
    "  /quit          leave (/exit too)\n"
    "A message that starts with / is written with //, e.g. //usr/bin is a path.\n";

// One message from the user: a line; lines ending in \ joined with the next; or the lines
// between two """ lines. Returns false at the end of input or on Ctrl-C at an empty prompt
// (`*leave`) and for Ctrl-C inside a message (`*leave` false: the message is dropped).
bool ReadMessage(LineReader& reader, std::string* message, bool* leave) {
  message->clear();
  *leave = false;
  bool block = false, first = true;
  std::string line;
  while (true) {
    const char* prompt = first ? "> " : "... ";
    switch (reader.Read(prompt, &line)) {
      case LineReader::Status::kEnd:
        if (reader.interactive()) std::fputc('\n', stdout);
        *leave = true;
        if (!first && !block) return true;  // a last line ending in '\' at the end of a pipe
        return false;
      case LineReader::Status::kInterruptedEmpty:
        std::fputc('\n', stdout);
        *leave = first;
        return false;
      case LineReader::Status::kInterrupted: std::fputc('\n', stdout); return false;
      case LineReader::Status::kLine: break;
    }
    reader.AddHistory(line);
    if (first && line == "\"\"\"") {
      block = true;
      first = false;
      continue;
    }
    if (block) {
      if (line == "\"\"\"") return true;
      *message += (message->empty() ? "" : "\n") + line;
      continue;
    }
    first = false;
    if (!line.empty() && line.back() == '\\') {
      *message += line.substr(0, line.size() - 1) + "\n";
      continue;
    }
    *message += line;
    return true;
  }
}

// Interactive chat; also works with a pipe (one user message per line). The KV cache is
// kept across turns: each turn renders the whole conversation and only the tokens after the
// longest prefix already in the cache are run. A conversation that outgrows the context
// loses its oldest turns (the system message stays).
void RunChat(const ChatFlags& f) {
  const LoadedModel m = LoadChatModelOrDefault(f.model);
  const ChatTemplate& chat_template = m.ChooseTemplate(f.template_name);
  // At start, not after the first message: the template's special tokens must be in the
  // vocabulary (openchat's <|end_of_turn|>).
  const std::vector<ChatMessage> probe = {
      {"system", "s"}, {"user", "u"}, {"assistant", "a"}, {"user", "u"}};
  chat_template.Render(*m.tokenizer, probe, true);
  Session session(*m.model, f.sampling.Context(m), f.sampling.kv_type);
  const GenerationOptions options = f.sampling.Options(m, &chat_template, session.context_length());
  const auto context = static_cast<size_t>(session.context_length());
  // The room kept free for a reply: -n, or with -n -1 (a reply until EOS or a full context) a
  // quarter of the context, as the conversation grows.
  const bool until_full = f.sampling.n_predict == -1;
  const size_t reply_room = until_full ? context / 4 : static_cast<size_t>(options.max_new_tokens);
  if (reply_room >= context) {
    Fail("-n ", options.max_new_tokens, " leaves no room for a message in the context of ", context,
         " tokens (-c)");
  }
  const size_t budget = context - reply_room;
  const bool interactive = ::isatty(STDIN_FILENO) != 0;
  LineReader reader(interactive, f.history);
  // Ctrl-C (SIGINT) stops a reply, or wakes the reader at a terminal's prompt. SIGTERM, and
  // Ctrl-C while a plain read of a pipe blocks, have their usual effect: the process ends by it.
  std::atomic<bool> generating{false}, stop_reply{false};
  SetSignalHandler([&](int signal) {
    if (signal == SIGINT && (interactive || generating)) {
      stop_reply = true;
      reader.Interrupt();
      return;
    }
    SetSignalHandler({});
    ::kill(::getpid(), signal);  // taken by the signal thread again, now without a handler
  });
  struct RestoreSignals {
    ~RestoreSignals() { SetSignalHandler({}); }
  } restore_signals;
  if (interactive) {
    std::fprintf(stderr, "chat with %s (template %s). /help for help, Ctrl-D to leave.\n",
                 m.source.c_str(), std::string(chat_template.name()).c_str());
  }
  std::string system = f.system;
  std::vector<ChatMessage> messages;  // user and assistant turns
  std::string text;
  while (true) {
    bool leave = false;
    if (!ReadMessage(reader, &text, &leave)) {
      if (leave) break;
      continue;
    }
    if (text.empty()) {
      if (leave) break;
      continue;
    }
    if (text[0] == '/' && text.rfind("//", 0) != 0) {
      const std::string command = text.substr(0, text.find_first_of(" \n"));
      if (command == "/quit" || command == "/exit") break;
      if (command == "/help") {
        std::fputs(kChatHelp, stderr);
      } else if (command == "/reset" || command == "/clear") {
        messages.clear();
        std::fprintf(stderr, "[conversation reset]\n");
      } else if (command == "/system") {
        system = text.size() > 8 ? text.substr(8) : "";
        messages.clear();
        std::fprintf(stderr, "[system message %s; conversation reset]\n",
                     system.empty() ? "removed" : "set");
      } else if (!interactive) {
        Fail("unknown command ", command, " (a message starting with / is written //...)");
      } else {
        std::fprintf(stderr, "error: unknown command %s; /help lists the commands\n",
                     command.c_str());
      }
      if (leave) break;
      continue;
    }
    if (text.rfind("//", 0) == 0) text.erase(0, 1);
    messages.push_back({"user", text});
    std::vector<ChatMessage> conversation;
    if (!system.empty()) conversation.push_back({"system", system});
    conversation.insert(conversation.end(), messages.begin(), messages.end());
    int dropped = 0;
    std::vector<int32_t> ids;
    try {
      ids = RenderWithin(chat_template, *m.tokenizer, &conversation, budget, &dropped).ids;
    } catch (const Error& e) {
      messages.pop_back();
      if (!interactive) throw;
      std::fprintf(stderr, "error: %s; nothing was sent\n", e.what());
      continue;
    }
    if (dropped > 0) {
      messages.erase(messages.begin(), messages.begin() + dropped);
      std::fprintf(stderr,
                   "[the conversation outgrew the context (%zu tokens, %zu kept free for the "
                   "reply): the oldest %d message(s) were dropped%s]\n",
                   context, reply_room, dropped, system.empty() ? "" : ", the system message kept");
    }
    const auto common = static_cast<size_t>(session.ReusePrefix(ids));
    stop_reply = false;
    generating = true;
    const GenerationResult r = Generate(session, *m.tokenizer, std::span(ids).subspan(common),
                                        options, [&](std::string_view piece) {
                                          if (stop_reply) return false;
                                          Print(piece);
                                          return true;
                                        });
    generating = false;
    Print("\n");
    if (r.finish == FinishReason::kCancelled) {
      std::fprintf(stderr, "[stopped]\n");
    } else if (r.finish == FinishReason::kLength) {
      if (until_full) {
        std::fprintf(stderr, "[the reply was cut: the context (%zu tokens, -c) is full]\n",
                     context);
      } else {
        std::fprintf(stderr, "[the reply was cut at -n %d tokens]\n", options.max_new_tokens);
      }
    }
    messages.push_back({"assistant", r.text});
    if (leave) break;
  }
}

void RunPerplexity(const std::string& model, const std::string& file, int32_t context,
                   DType kv_type) {
  const LoadedModel m = LoadModelOrDefault(model);
  CheckContext(m, context, 1, kv_type);
  const std::string text = file == "-" ? ReadStdin() : ReadFile(file);
  // As llama-perplexity: seconds per window and the ETA, with the running perplexity.
  std::unique_ptr<Progress> progress;
  const auto start = std::chrono::steady_clock::now();
  const PerplexityResult r = ComputePerplexity(
      *m.model, *m.tokenizer, text, context, kv_type, [&](int32_t c, int32_t n, double p) {
        if (!progress) progress = std::make_unique<Progress>("perplexity", n);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / c;
        char detail[128];
        std::snprintf(detail, sizeof detail, "[%d/%d] running perplexity %.4f, %.2f s per window",
                      c, n, p, seconds);
        progress->Update(c, detail);
      });
  if (progress) progress->Finish();
  std::printf(
      "chunks: %d of %d tokens, scored tokens: %lld\nmean NLL: %.6f +/- %.6f nats/token\n"
      "perplexity: %.4f +/- %.4f\n",
      r.chunks, context, static_cast<long long>(r.tokens_scored), r.mean_nll, r.nll_stderr,
      r.perplexity, r.perplexity_stderr);
}

std::string Bytes(uint64_t n) {
  char buf[64];
  if (n >= (1ull << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(n) / (1ull << 30));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(n) / (1ull << 20));
  }
  return buf;
}

bool LooksLikeGguf(const std::string& path) {
  try {
    return !IsDirectory(path) && ReadFilePrefix(path, 4) == "GGUF";
  } catch (const Error&) {
    return false;  // not a readable file: the load error says why
  }
}

// `info` on a GGUF file the loader refuses (e.g. tensor types this build cannot run): the file's
// own description, every tensor with its type, the ones we cannot run marked, then the error.
void DescribeGgufWeCannotLoad(const std::string& path, const Error& load_error) {
  GgufFile gguf = GgufFile::Open(path);  // throws its own error when the file does not parse
  std::printf("model: %s (GGUF v%u; it does not load here, see below)\n", path.c_str(),
              gguf.version());
  for (const char* key : {"general.architecture", "general.name", "general.file_type"}) {
    if (const GgufValue* v = gguf.Find(key)) {
      std::printf("%s: %s\n", key, GgufValueToString(*v).c_str());
    }
  }
  std::printf("tensors: %zu\n", gguf.tensors().size());
  size_t cannot = 0;
  for (const GgufTensorInfo& t : gguf.tensors()) {
    std::string shape;
    for (auto it = t.dims.rbegin(); it != t.dims.rend(); ++it) {
      shape += (shape.empty() ? "" : " x ") + std::to_string(*it);
    }
    const FormatTraits* f = FindFormatByGgmlType(t.ggml_type);
    const bool runs = f != nullptr && f->weight;
    cannot += runs ? 0 : 1;
    std::printf("  %-48s %-7s %s%s\n", t.name.c_str(), GgufTypeName(t.ggml_type).c_str(),
                shape.c_str(), runs ? "" : "   <- this build cannot run this type");
  }
  std::fflush(stdout);
  if (cannot > 0) {
    Fail(cannot, " of ", gguf.tensors().size(),
         " tensors have types this build cannot run (marked above); it runs ", WeightFormatList());
  }
  throw load_error;
}

void RunInfo(const std::string& path, int32_t context, DType kv_type) {
  std::optional<LoadedModel> loaded;
  try {
    loaded.emplace(LoadModelOrDefault(path));
  } catch (const Error& e) {
    if (!path.empty() && LooksLikeGguf(path)) DescribeGgufWeCannotLoad(path, e);
    throw;
  }
  const LoadedModel& m = *loaded;
  const ModelConfig& c = m.model->config();
  if (context < 0) Fail("--ctx ", context, " must be positive");
  const int32_t ctx = context > 0 ? context : std::min(c.max_position_embeddings, 4096);
  std::printf("model: %s\narchitecture: %s\n", m.source.c_str(), c.architecture.c_str());
  std::printf(
      "vocab %d, hidden %d, intermediate %d, layers %d, heads %d, kv heads %d, head dim %d, "
      "rope dim %d (%s), rope theta %g, rms eps %g, sliding window %d, max positions %d, "
      "tied embeddings %s\n",
      c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads,
      c.head_dim, c.rope_dim, c.rope_layout == RopeLayout::kHalves ? "halves" : "interleaved",
      c.rope_theta, c.rms_norm_eps, c.sliding_window, c.max_position_embeddings,
      c.tie_word_embeddings ? "yes" : "no");
  std::printf("bos %d, eos", c.bos_token_id);
  for (const int32_t e : c.eos_token_ids) std::printf(" %d", e);
  std::printf("\ntokenizer: %d tokens", m.tokenizer->vocab_size());
  const ChatTemplate* known =
      m.chat_template_jinja.empty() ? nullptr : ChatTemplate::FromJinja(m.chat_template_jinja);
  std::printf("; chat template: %s\n", m.chat_template_jinja.empty() ? "none"
                                       : known != nullptr ? std::string(known->name()).c_str()
                                                          : "unknown (use --template)");
  std::printf("tensors: %zu\n", m.model->tensors().size());
  for (const TensorRef& t : m.model->tensors()) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      shape += (i ? " x " : "") + std::to_string(t.shape[i]);
    }
    std::printf("  %-48s %-5s %s\n", t.name.c_str(), WeightFormatName(t.format), shape.c_str());
  }
  const uint64_t kv = uint64_t{2} * c.num_layers * static_cast<uint64_t>(ctx) * c.num_kv_heads *
                      c.head_dim * DTypeSize(kv_type);
  std::printf(
      "memory: weights %s (memory-mapped, read in place), KV cache %s for %d positions "
      "(%s)\n",
      Bytes(m.model->weight_bytes()).c_str(), Bytes(kv).c_str(), ctx,
      kv_type == DType::kF16 ? "float16" : "float32");
}

}  // namespace

void RegisterGenerate(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Continue a prompt (or answer it with --template), streaming the new text");
  cmd->add_option("-m,--model", f->model,
                  "a Hugging Face directory, a GGUF file or a cached ORG/NAME (default: the "
                  "embedded stories260K)")
      ->check(NonEmpty());
  cmd->add_option("-p,--prompt", f->prompt, "the prompt text (\"\" for BOS alone)");
  cmd->add_option("-f,--file", f->file, "read the prompt from FILE ('-': stdin)");
  cmd->add_option("--template,--chat-template", f->template_name,
                  "render the prompt as a user turn of this chat template (openchat, "
                  "openchat-code, llama-2, raw)");
  cmd->add_option("--system,--system-prompt", f->system,
                  "system message (with --template; llama.cpp's -sys works too)");
  cmd->add_flag("-v,--verbose", f->verbose, "print timings to stderr");
  f->sampling.Add(cmd);
  cmd->footer(
      "Examples:\n"
      "  starling generate -p \"Once upon a time\" -n 200          # the embedded stories260K\n"
      "  starling generate -m model.gguf -p \"The capital of France is\" --temp 0 -n 16\n"
      "  starling generate -m Starling-LM-7B-alpha/ --chat-template openchat -sys \"Be brief.\" "
      "-p \"Hello\" -n -1\n"
      "  starling generate -m model.gguf -f prompt.txt -s 7 -c 2048 -v\n"
      "Flags follow llama.cpp's (-n, -c/--ctx-size, -s, --temp, --top-k, --top-p, --min-p, "
      "-sys); llama.cpp-only flags such as -ngl are answered with what to do instead.");
  cmd->callback([f, cmd] {
    f->prompt_given = cmd->count("--prompt") > 0;
    RunGenerate(*f);
  });
}

void RegisterChat(CLI::App& app) {
  auto f = std::make_shared<ChatFlags>();
  CLI::App* cmd = app.add_subcommand(
      "chat",
      "Multi-turn chat on a terminal (line editing, history) or from a pipe (one message a line)");
  cmd->add_option("-m,--model", f->model,
                  "a Hugging Face directory, a GGUF file or a cached ORG/NAME (default: the "
                  "embedded tiny-chat, made by scripts/pipeline.sh)")
      ->check(NonEmpty());
  cmd->add_option("--template,--chat-template", f->template_name,
                  "chat template: openchat, openchat-code, llama-2 or raw (default: the model's "
                  "own, when it is a known one)");
  cmd->add_option("--system,--system-prompt", f->system,
                  "system message (llama.cpp's -sys works too)");
  cmd->add_option("--history", f->history,
                  "file that keeps the prompt's history between sessions ('': none)")
      ->capture_default_str();
  f->sampling.Add(cmd);
  cmd->footer(
      std::string(kChatHelp) +
      "Examples:\n"
      "  starling chat                                          # the embedded tiny-chat\n"
      "  starling chat -m Starling-LM-7B-alpha/                 # the model's own template\n"
      "  starling chat -m model.gguf --chat-template openchat -sys \"You are terse.\" "
      "--temp 0.7\n"
      "  printf 'Hi\\nAnd again?\\n' | starling chat -m model.gguf   # one message a "
      "line\n");
  cmd->callback([f] { RunChat(*f); });
}

void RegisterPerplexity(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto file = std::make_shared<std::string>();
  auto context = std::make_shared<int32_t>(512);
  CLI::App* cmd = app.add_subcommand(
      "perplexity", "Mean negative log-likelihood and perplexity of a text (llama.cpp's method)");
  cmd->add_option("-m,--model", *model,
                  "a Hugging Face directory, a GGUF file or a cached ORG/NAME")
      ->check(NonEmpty());
  cmd->add_option("-f,--file", *file, "the text ('-': stdin)")->required();
  cmd->add_option("-c,--ctx,--ctx-size", *context, "window length in tokens")
      ->capture_default_str();
  AddThreadsOption(cmd);
  cmd->footer(
      "Progress (seconds per window, ETA) goes to stderr; the result to stdout.\n"
      "Examples:\n"
      "  starling perplexity -m model.gguf -f wiki.test.raw -c 512\n"
      "  starling perplexity -m Starling-LM-7B-alpha/ -f text.txt -c 2048 --kv-type f16 -t 8");
  auto kv_type = std::make_shared<DType>(DType::kF32);
  AddKvTypeOption(cmd, kv_type.get());
  cmd->callback([=] { RunPerplexity(*model, *file, *context, *kv_type); });
}

void RegisterInfo(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto context = std::make_shared<int32_t>(0);
  CLI::App* cmd = app.add_subcommand(
      "info", "Show a model's config, tensors, dtypes and the memory it will use");
  cmd->add_option("-m,--model", *model,
                  "a Hugging Face directory, a GGUF file or a cached ORG/NAME")
      ->check(NonEmpty());
  cmd->add_option("-c,--ctx,--ctx-size", *context,
                  "context length for the KV cache estimate (default: the model's, at most "
                  "4096)");
  cmd->footer(
      "Examples:\n"
      "  starling info                                  # the embedded stories260K\n"
      "  starling info -m Starling-LM-7B-alpha/ -c 8192 --kv-type f16");
  auto kv_type = std::make_shared<DType>(DType::kF32);
  AddKvTypeOption(cmd, kv_type.get());
  cmd->callback([=] { RunInfo(*model, *context, *kv_type); });
}

// -t/--threads for the compute thread pool, set before any kernel runs. It once wrote the
// value through a pointer into a shared_ptr that `serve` and `perplexity` had already freed
// (valgrind: an invalid write of size 4): now nothing is stored.
void AddThreadsOption(CLI::App* cmd) {
  cmd->add_option_function<int>(
         "-t,--threads", [](int threads) { ThreadPool::SetGlobalThreads(threads); },
         "compute threads (default: one per core)")
      ->check(CLI::Range(0, 1024));
}

CLI::Validator NonEmpty() {
  return CLI::Validator(
      [](const std::string& value) {
        return value.empty() ? std::string("must not be empty") : std::string();
      },
      "", "NonEmpty");
}

void CheckContext(const LoadedModel& m, int64_t context, int64_t sequences, DType kv_type) {
  const ModelConfig& c = m.model->config();
  if (context <= 0) Fail("--ctx ", context, " must be positive");
  if (context > c.max_position_embeddings) {
    Fail("--ctx ", context, " exceeds the model's ", c.max_position_embeddings,
         " positions (max_position_embeddings)");
  }
  // Checked before allocating: a huge -c once ended in "internal error: std::bad_alloc" after
  // gigabytes were touched. What a session allocates: its KV cache, and working memory for a
  // chunk of rows (activations of up to 512 prompt rows, the logits, each thread's attention
  // scores over the context) - a lower bound, so the check never refuses what would fit.
  const auto n = static_cast<double>(sequences);
  const double kv = 2.0 * c.num_layers * static_cast<double>(context) * c.num_kv_heads *
                    c.head_dim * static_cast<double>(DTypeSize(kv_type)) * n;
  const double rows = static_cast<double>(std::min<int64_t>(context, 512));
  const double per_row = 2.0 * c.hidden_size + 2.0 * c.num_heads * c.head_dim +
                         2.0 * c.num_kv_heads * c.head_dim + 2.0 * c.intermediate_size;
  const double group = static_cast<double>(c.num_heads / std::max(1, c.num_kv_heads));
  const double scratch =
      4.0 * n *
      (rows * per_row + c.vocab_size +
       static_cast<double>(ThreadPool::Global().size()) * group * static_cast<double>(context));
  const MemoryBudget budget = AvailableMemory();
  if (budget.bytes > 0 && kv + scratch > static_cast<double>(budget.bytes)) {
    Fail("--ctx ", context, " needs ", Bytes(static_cast<uint64_t>(kv)), " of KV cache for ",
         sequences, " sequence(s) (--parallel) and at least ",
         Bytes(static_cast<uint64_t>(scratch)), " of working memory; ", Bytes(budget.bytes),
         " is available (", budget.source, "): lower -c or --parallel, or use --kv-type f16");
  }
}

void AddKvTypeOption(CLI::App* cmd, DType* kv_type) {
  *kv_type = DType::kF32;
  cmd->add_option_function<std::string>(
         "--kv-type",
         [kv_type](const std::string& value) {
           *kv_type = value == "f16" ? DType::kF16 : DType::kF32;
         },
         "KV cache element type: f32 (the default, for now: exact keys and values, what the "
         "numerics tests and the reward scorer rely on) or f16 (llama.cpp's default: half the "
         "cache memory and half the bytes attention reads; keys and values rounded to half)")
      ->check(CLI::IsMember({"f32", "f16"}))
      ->default_str("f32");
}

}  // namespace starling::cli
