// Writes a SentencePiece vocabulary into GGUF metadata with llama.cpp's conventions
// (tokenizer.ggml.*), so that a model converted or quantized by starling carries its
// tokenizer and loads in other GGUF readers too.
#pragma once

#include <string>

namespace starling {

class GgufWriter;

// `path`: a Hugging Face model directory (tokenizer.model + added-token files) or a bare
// tokenizer.model. Writes tokenizer.ggml.{model, tokens, scores, token_type, bos_token_id,
// eos_token_id, unknown_token_id, add_bos_token, add_eos_token} and tokenizer.chat_template
// when the directory has one. Added tokens are CONTROL when special, USER_DEFINED otherwise.
void WriteTokenizerToGguf(const std::string& path, GgufWriter* writer);

// As WriteTokenizerToGguf, and also from a GGUF file (its tokenizer.* keys, copied as they are).
void CopyTokenizerToGguf(const std::string& source, GgufWriter* writer);

}  // namespace starling
