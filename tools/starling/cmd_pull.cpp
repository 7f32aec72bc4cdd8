// `starling pull ORG/NAME`: a model from the Hugging Face Hub into the local Hugging Face
// cache (src/hub), and `-m ORG/NAME` resolved in that cache for every subcommand.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "core/error.h"
#include "hub/hf_cache.h"
#include "hub/pull.h"

namespace starling::cli {
namespace {

std::string Size(double bytes) {
  char buf[32];
  if (bytes >= 1 << 30) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1 << 30));
  } else if (bytes >= 1 << 20) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1 << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024);
  }
  return buf;
}

std::string Duration(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

// A progress bar on stderr, redrawn at most 10 times a second on a terminal; elsewhere one
// line per finished file.
class ProgressBar {
 public:
  void operator()(const PullProgress& p) {
    using Clock = std::chrono::steady_clock;
    const auto now = Clock::now();
    if (p.file != file_) {
      file_ = p.file;
      start_ = now;
      start_bytes_ = p.done;
      last_draw_ = {};
    }
    if (p.finished) {
      const double seconds = std::chrono::duration<double>(now - start_).count();
      if (tty_) std::fprintf(stderr, "\r\033[K");
      std::fprintf(
          stderr, "[%d/%d] %s  %s  %s\n", p.file_index, p.file_count, p.file.c_str(),
          Size(static_cast<double>(p.total)).c_str(),
          p.already_present ? "(already in the cache)" : ("in " + Duration(seconds)).c_str());
      return;
    }
    if (!tty_ || now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(p.done - start_bytes_) / seconds : 0;
    std::string line = "[" + std::to_string(p.file_index) + "/" + std::to_string(p.file_count) +
                       "] " + p.file + " ";
    if (p.total > 0) {
      const double fraction = static_cast<double>(p.done) / static_cast<double>(p.total);
      const int width = 24;
      const int filled = static_cast<int>(fraction * width);
      line += "[" + std::string(static_cast<size_t>(filled), '=') +
              std::string(static_cast<size_t>(width - filled), ' ') + "] ";
      char pct[16];
      std::snprintf(pct, sizeof pct, "%3.0f%% ", 100 * fraction);
      line += pct + Size(static_cast<double>(p.done)) + " / " + Size(static_cast<double>(p.total));
      if (rate > 0) {
        line +=
            "  " + Size(rate) + "/s  ETA " + Duration(static_cast<double>(p.total - p.done) / rate);
      }
    } else {
      line += Size(static_cast<double>(p.done));
    }
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    std::fflush(stderr);
  }

 private:
  bool tty_ = ::isatty(STDERR_FILENO) != 0;
  std::string file_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  uint64_t start_bytes_ = 0;
};

void RunPull(const PullOptions& options) {
  ProgressBar bar;
  const PullResult r = Pull(options, [&](const PullProgress& p) { bar(p); });
  if (!r.skipped.empty()) {
    std::fprintf(stderr,
                 "skipped %zu file(s) of other weight formats that the safetensors files "
                 "duplicate (--include '*' takes everything)\n",
                 r.skipped.size());
  }
  std::fprintf(stderr, "%s at %s: %d file(s), %d downloaded (%s)\n", options.repo.c_str(),
               r.commit.c_str(), r.files, r.downloaded,
               Size(static_cast<double>(r.bytes_downloaded)).c_str());
  std::printf("%s\n", r.snapshot.c_str());
}

}  // namespace

void AddModelResolution(CLI::Option* option) {
  option->transform(CLI::Validator(
      [](std::string& value) {
        if (!value.empty()) value = ResolveModelPath(value);
        return std::string();
      },
      "", "ModelPath"));
}

void RegisterPull(CLI::App& app) {
  auto o = std::make_shared<PullOptions>();
  CLI::App* cmd = app.add_subcommand(
      "pull",
      "Download a model from the Hugging Face Hub into the local Hugging Face cache, where "
      "-m ORG/NAME finds it");
  cmd->add_option("repo", o->repo,
                  "repository id, ORG/NAME (e.g. berkeley-nest/Starling-LM-7B-alpha)")
      ->required();
  cmd->add_option("--revision", o->revision, "branch, tag or commit")->capture_default_str();
  cmd->add_option("--include", o->include,
                  "download only files matching this glob (repeatable), e.g. '*Q4_K_M.gguf' "
                  "(default: every file, less PyTorch weights that safetensors duplicate)");
  cmd->footer(
      "Environment: HF_TOKEN (gated or private repositories), HF_ENDPOINT (another hub or a "
      "mirror), HF_HOME / HF_HUB_CACHE (where the cache is). An interrupted pull resumes.\n"
      "Example: starling pull berkeley-nest/Starling-LM-7B-alpha && starling chat -m "
      "berkeley-nest/Starling-LM-7B-alpha");
  cmd->callback([o] { RunPull(*o); });
}

void ResolveModelOptions(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands({})) {
    for (CLI::Option* option : sub->get_options()) {
      if (option->check_lname("model") || option->check_lname("rm") ||
          option->check_lname("tokenizer")) {
        AddModelResolution(option);
      }
    }
    ResolveModelOptions(*sub);
  }
}

}  // namespace starling::cli
