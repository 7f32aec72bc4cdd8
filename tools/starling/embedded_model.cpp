#include "embedded_model.h"

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

LoadedModel LoadModelOrDefault(const std::string& path) {
  if (!path.empty()) return LoadModel(path);
  return LoadModelFromGgufBytes(EmbeddedModelBytes(), std::string(kEmbeddedModelName));
}

LoadedModel LoadChatModelOrDefault(const std::string& path) {
  if (!path.empty()) return LoadModel(path);
  return LoadModelFromGgufBytes(EmbeddedChatModelBytes(), std::string(kEmbeddedChatModelName));
}

}  // namespace starling::cli
