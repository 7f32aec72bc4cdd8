// llama.cpp's flags on starling's command line (llama_flags.h).
#include "llama_flags.h"

#include <cctype>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace starling::cli {
namespace {

// llama.cpp spellings CLI11 cannot take (a single dash before several letters), and the long
// option each is. The rewrite happens only where the subcommand has that long option.
struct Spelling {
  std::string_view llama, starling;
};
constexpr Spelling kSpellings[] = {
    {"-np", "--parallel"},  // llama-server's slots
    {"-sys", "--system"},   // llama-cli's system prompt
};

// llama.cpp flags with no starling counterpart, and what to do instead.
struct Refused {
  std::vector<std::string_view> names;
  std::string_view advice;
};

const std::vector<Refused>& RefusedFlags() {
  static const std::vector<Refused> refused = {
      {{"-ngl", "--n-gpu-layers", "--gpu-layers", "-ngld", "--n-gpu-layers-draft"},
       "starling.cpp runs on the CPU; there are no GPU layers to offload (drop the flag)"},
      {{"-mg", "--main-gpu", "-ts", "--tensor-split", "-sm", "--split-mode", "-dev", "--device",
        "-nkvo", "--no-kv-offload", "-kvo", "--kv-offload", "-ot", "--override-tensor"},
       "starling.cpp runs on the CPU; there is no GPU to choose or split across (drop the flag)"},
      {{"-fa", "--flash-attn", "--no-flash-attn"},
       "starling.cpp has one attention kernel, always on, that never builds the full score "
       "matrix; there is nothing to switch (drop the flag)"},
      {{"-ctk", "--cache-type-k", "-ctv", "--cache-type-v"},
       "use --kv-type f16 or --kv-type f32: one type for both keys and values"},
      {{"-cnv", "--conversation", "-i", "--interactive", "-if", "--interactive-first", "-ins",
        "--instruct", "-st", "--single-turn"},
       "the conversation is its own subcommand: starling chat -m MODEL"},
      {{"-no-cnv", "--no-conversation"},
       "starling generate never starts a conversation (that is starling chat); drop the flag"},
      {{"-tb", "--threads-batch"},
       "one thread pool serves the prompt and generation: use -t/--threads"},
      {{"-b", "--batch-size", "-ub", "--ubatch-size"},
       "the whole prompt is run as one batch; there is no batch size to set (drop the flag)"},
      {{"--mlock", "--no-mmap", "--mmap"},
       "weights are always memory-mapped and read in place; there is nothing to set (drop the "
       "flag)"},
      {{"-cb", "--cont-batching", "-nocb", "--no-cont-batching"},
       "serve always batches continuously; there is nothing to set (drop the flag)"},
      {{"-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url"},
       "download with starling pull ORG/NAME [--include PATTERN], then pass -m ORG/NAME"},
      {{"--jinja", "--chat-template-file"},
       "chat templates are built in and chosen by name: --chat-template (or --template) "
       "openchat, openchat-code, llama-2 or raw"},
      {{"-r", "--reverse-prompt"}, "use --stop STRING (repeatable)"},
      {{"-to", "--timeout"}, "serve takes --read-timeout SECONDS"},
      {{"--lora",
        "--lora-scaled",
        "--control-vector",
        "--grammar",
        "--grammar-file",
        "--json-schema",
        "-j",
        "--mirostat",
        "--mirostat-lr",
        "--mirostat-ent",
        "--rope-scaling",
        "--rope-scale",
        "--rope-freq-base",
        "--rope-freq-scale",
        "--yarn-orig-ctx",
        "--numa",
        "--embedding",
        "--embeddings",
        "--reranking",
        "--rerank",
        "--spm-infill",
        "-md",
        "--model-draft",
        "--draft",
        "--typical",
        "--dry-multiplier",
        "--xtc-probability"},
       "starling.cpp does not implement this llama.cpp feature"},
      {{"--color", "--no-warmup", "--no-display-prompt", "--verbose-prompt", "--log-disable",
        "--metrics", "--slots", "--no-slots", "--no-perf", "--prio", "--poll"},
       "starling.cpp has no such setting; drop the flag"},
  };
  return refused;
}

// The subcommand args name (`train sft` is two deep), and the index of its first argument.
const CLI::App* ChosenSubcommand(const CLI::App& app, const std::vector<std::string>& args,
                                 size_t* first) {
  const CLI::App* current = &app;
  size_t i = 0;
  for (bool descended = true; descended && i < args.size();) {
    descended = false;
    for (const CLI::App* sub : current->get_subcommands({})) {
      if (sub->get_name() == args[i]) {
        current = sub;
        ++i;
        descended = true;
        break;
      }
    }
  }
  *first = i;
  return current;
}

std::string CommandName(const CLI::App& app) {
  std::string name;
  for (const CLI::App* a = &app; a != nullptr && a->get_parent() != nullptr; a = a->get_parent()) {
    name = a->get_name() + (name.empty() ? "" : " " + name);
  }
  return "starling " + name;
}

bool AllLetters(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (!std::isalpha(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

void TranslateLlamaCppFlags(const CLI::App& app, std::vector<std::string>* args) {
  size_t first = 0;
  const CLI::App* sub = ChosenSubcommand(app, *args, &first);
  if (sub == &app) return;
  const std::string command = CommandName(*sub);
  for (size_t i = first; i < args->size(); ++i) {
    std::string& arg = (*args)[i];
    if (arg == "--") break;  // what follows is positional, whatever it looks like
    if (arg.size() < 2 || arg[0] != '-') continue;
    // `--flag=value` is looked up as `--flag`.
    const std::string name = arg.substr(0, arg.rfind("--", 0) == 0 ? arg.find('=') : arg.size());
    if (sub->get_option_no_throw(name) != nullptr) continue;  // the subcommand's own
    bool rewritten = false;
    for (const Spelling& s : kSpellings) {
      if (name != s.llama) continue;
      if (sub->get_option_no_throw(std::string(s.starling)) == nullptr) {
        Fail(name, " (llama.cpp's ", s.starling, "): ", command, " has no ", s.starling);
      }
      arg = std::string(s.starling);
      rewritten = true;
    }
    if (rewritten) continue;
    for (const Refused& r : RefusedFlags()) {
      for (const std::string_view n : r.names) {
        if (name == n) Fail(name, ": ", r.advice);
      }
    }
    // A single dash before several letters: CLI11 reads `-xyz` as `-x yz` when -x takes a
    // value. Nothing in starling is written that way on purpose, so it is refused.
    const std::string_view letters = std::string_view(name).substr(1);
    if (name[1] != '-' && letters.size() >= 2 && AllLetters(letters)) {
      const CLI::Option* head = sub->get_option_no_throw(std::string("-") + letters[0]);
      if (head != nullptr && head->get_items_expected_min() > 0) {
        Fail(name, ": not an option of ", command, " (long options take two dashes, --", letters,
             "; -", letters[0], " takes its value after a space: -", letters[0], " VALUE). ",
             command, " --help lists the options");
      }
    }
  }
}

}  // namespace starling::cli
