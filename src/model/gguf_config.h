// The ModelConfig of a GGUF "llama" file (llama.cpp writes Llama and Mistral checkpoints as
// "llama").
#pragma once

#include <string>

#include "formats/gguf.h"
#include "model/config.h"

namespace starling {

// Reads the llama.* hyperparameters and the tokenizer.ggml.* special token ids. `source` names
// the file in error messages. The rotary layout is kInterleaved (llama.cpp's converter permutes
// the Q/K rows), and the embeddings are tied when the file has no "output.weight" tensor. Refused:
// another general.architecture, mixture-of-experts files (llama.expert_count > 0) and rope
// scaling. The result has passed ModelConfig::Validate.
ModelConfig ModelConfigFromGguf(const GgufFile& gguf, const std::string& source);

}  // namespace starling
