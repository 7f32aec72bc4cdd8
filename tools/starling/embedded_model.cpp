#include "embedded_model.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

// The GGUF bytes, placed in .rodata by the assembler; STARLING_EMBEDDED_MODEL and
// STARLING_EMBEDDED_CHAT_MODEL are the files' absolute paths (set by CMake, which also rebuilds
// this file when they change).
__asm__(
    ".section .rodata\n"
    ".global starling_embedded_model_begin\n"
    ".balign 64\n"
    "starling_embedded_model_begin:\n"
    ".incbin \"" STARLING_EMBEDDED_MODEL
    "\"\n"
    ".global starling_embedded_model_end\n"
    "starling_embedded_model_end:\n"
    ".global starling_embedded_chat_model_begin\n"
    ".balign 64\n"
    "starling_embedded_chat_model_begin:\n"
    ".incbin \"" STARLING_EMBEDDED_CHAT_MODEL
    "\"\n"
    ".global starling_embedded_chat_model_end\n"
    "starling_embedded_chat_model_end:\n"
    ".previous\n");

extern "C" const char starling_embedded_model_begin[];
extern "C" const char starling_embedded_model_end[];
extern "C" const char starling_embedded_chat_model_begin[];
extern "C" const char starling_embedded_chat_model_end[];

namespace starling::cli {

std::string_view EmbeddedModelBytes() {
  return {starling_embedded_model_begin,
          static_cast<size_t>(starling_embedded_model_end - starling_embedded_model_begin)};
}

std::string_view EmbeddedChatModelBytes() {
  return {
      starling_embedded_chat_model_begin,
      static_cast<size_t>(starling_embedded_chat_model_end - starling_embedded_chat_model_begin)};
}

namespace {

// "loading PATH: 45% (3.21 of 7.10 GiB, ETA 0:12)" on stderr, rewritten in place, for models of
// 100 MiB or more when stderr is a terminal (a log file gets no progress lines).
LoadProgress TerminalLoadProgress(const std::string& path) {
  if (isatty(fileno(stderr)) == 0) return {};
  const auto start = std::chrono::steady_clock::now();
  return [path, start, last = -1](uint64_t done, uint64_t total) mutable {
    if (total < (uint64_t{100} << 20)) return;
    const int percent = static_cast<int>(done * 100 / total);
    if (percent == last) return;
    last = percent;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double eta =
        done > 0 ? elapsed * static_cast<double>(total - done) / static_cast<double>(done) : 0.0;
    const auto gib = [](uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0); };
    std::fprintf(stderr, "\rloading %s: %3d%% (%.2f of %.2f GiB, ETA %d:%02d)%s", path.c_str(),
                 percent, gib(done), gib(total), static_cast<int>(eta) / 60,
                 static_cast<int>(eta) % 60, done == total ? "\n" : "");
    std::fflush(stderr);
  };
}

}  // namespace

LoadedModel LoadModelOrDefault(const std::string& path) {
  if (!path.empty()) return LoadModel(path, TerminalLoadProgress(path));
  return LoadModelFromGgufBytes(EmbeddedModelBytes(), std::string(kEmbeddedModelName));
}

LoadedModel LoadChatModelOrDefault(const std::string& path) {
  if (!path.empty()) return LoadModel(path, TerminalLoadProgress(path));
  return LoadModelFromGgufBytes(EmbeddedChatModelBytes(), std::string(kEmbeddedChatModelName));
}

}  // namespace starling::cli
