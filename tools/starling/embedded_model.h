// The default models compiled into the executable, so that starling works with no model
// argument on a fresh machine: stories260K (1.2 MB) continues text (`generate`, `perplexity`,
// `bench`, ...); tiny-chat (1.2 MB), stories260K tuned by this project's own RLAIF pipeline
// (scripts/pipeline.sh: SFT, a reward model, APA; docs/PIPELINE.md), answers `chat` and `serve`.
#pragma once

#include <string>
#include <string_view>

#include "generate/loaded_model.h"

namespace starling::cli {

inline constexpr std::string_view kEmbeddedModelName = "stories260K (embedded)";
inline constexpr std::string_view kEmbeddedChatModelName = "tiny-chat (embedded)";

std::string_view EmbeddedModelBytes();
std::string_view EmbeddedChatModelBytes();

// `path` when given, else the embedded stories260K.
LoadedModel LoadModelOrDefault(const std::string& path);
// `path` when given, else the embedded chat model.
LoadedModel LoadChatModelOrDefault(const std::string& path);

}  // namespace starling::cli
