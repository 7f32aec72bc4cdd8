// The default model compiled into the executable (stories260K, 1.2 MB), so that
// `starling generate` works with no model argument on a fresh machine.
#pragma once

#include <string>
#include <string_view>

#include "generate/loaded_model.h"

namespace starling::cli {

inline constexpr std::string_view kEmbeddedModelName = "stories260K (embedded)";

std::string_view EmbeddedModelBytes();

// `path` when given, else the embedded model.
LoadedModel LoadModelOrDefault(const std::string& path);

}  // namespace starling::cli
