// Writes a SentencePiece vocabulary into GGUF metadata with llama.cpp's conventions
// (tokenizer.ggml.*), so that a model converted or quantized by starling carries its
// tokenizer and loads in other GGUF readers too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace starling {

class GgufWriter;

// `path`: a Hugging Face model directory (tokenizer.model + added-token files) or a bare
// tokenizer.model. Writes tokenizer.ggml.{model, tokens, scores, token_type, bos_token_id,
// eos_token_id, unknown_token_id, add_bos_token, add_eos_token} and tokenizer.chat_template
// when the directory has one. Added tokens are CONTROL when special, USER_DEFINED otherwise.
void WriteTokenizerToGguf(const std::string& path, GgufWriter* writer);

// As WriteTokenizerToGguf, and also from a GGUF file (its tokenizer.* keys, copied as they are).
void CopyTokenizerToGguf(const std::string& source, GgufWriter* writer);

// What Hugging Face's `tokenizer.add_special_tokens` and a chat-format setup change.
struct TokenizerAdditions {
  std::vector<std::string> special_tokens;  // appended after the last id, in order, as CONTROL
  std::string eos_token;                    // when set: the EOS token (an old or added piece)
  std::string chat_template;                // when set: tokenizer.chat_template
};

// As CopyTokenizerToGguf, with `additions` applied. Throws Error when a token to add is empty
// or already a piece, or when eos_token is not a piece. Returns the new vocabulary size.
int32_t CopyTokenizerToGguf(const std::string& source, const TokenizerAdditions& additions,
                            GgufWriter* writer);

}  // namespace starling
