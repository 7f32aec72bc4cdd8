// llama.cpp's GGUF tensor names for the `llama` architecture and their Hugging Face
// (canonical) equivalents: one table, read in both directions.
#pragma once

#include <optional>
#include <string>

namespace starling {

// "blk.3.ffn_up.weight" -> "model.layers.3.mlp.up_proj.weight"; nullopt for names the model
// does not use.
std::optional<std::string> CanonicalFromGgufName(const std::string& gguf_name);
// The reverse; throws starling::Error for a name GGUF has no equivalent for.
std::string GgufTensorName(const std::string& canonical);

}  // namespace starling
