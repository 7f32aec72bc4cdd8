// Finds and loads a tokenizer from what users hold: a `tokenizer.model`, a Hugging Face
// model directory (tokenizer.model plus its added-token files), or a GGUF file.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace starling {

class GgufFile;

// Dispatches on what `path` is: a directory, a GGUF file (by its magic), or a
// SentencePiece model.
Tokenizer LoadTokenizer(const std::string& path);

// A bare `tokenizer.model`: its CONTROL and UNKNOWN pieces (<unk>, <s>, </s>) become the
// special added tokens, as Hugging Face's LlamaTokenizer treats them.
Tokenizer LoadSentencePieceTokenizer(const std::string& path);

// A Hugging Face directory: `tokenizer.model` plus the added tokens of `added_tokens.json`,
// `tokenizer_config.json` (added_tokens_decoder; bos/eos/unk token names) and
// `tokenizer.json` (added_tokens), and `special_tokens_map.json`.
Tokenizer LoadHuggingFaceTokenizer(const std::string& directory);

// The vocabulary that a GGUF file carries (tokenizer.ggml.*; model "llama").
Tokenizer LoadGgufTokenizer(const GgufFile& gguf, const std::string& source);

// The chat template a model ships, verbatim (Hugging Face: tokenizer_config.json's
// "chat_template"; GGUF: tokenizer.chat_template); empty when it has none.
std::string LoadChatTemplateJinja(const std::string& path);

// Where a model's tokenizer is GGUF metadata: `path` itself when it is a GGUF file, or the
// tokenizer.gguf a trainer writes into a directory made from a GGUF model (one without a
// tokenizer.model); empty otherwise.
std::string GgufTokenizerFile(const std::string& path);

// Parses the added tokens of the Hugging Face JSON files (contents given, not paths, so
// the parser can be tested and fuzzed). Each name is used in error messages. Empty
// strings mean the file is absent. Later files add to, and must agree with, earlier ones.
struct HuggingFaceTokenizerFiles {
  std::string added_tokens_json = {};
  std::string tokenizer_config_json = {};
  std::string tokenizer_json = {};
  std::string special_tokens_map_json = {};
};
struct HuggingFaceTokenizerInfo {
  std::vector<AddedToken> added_tokens;
  std::string bos_token, eos_token, unk_token;  // contents; empty when not given
  bool legacy = true;                           // tokenizer_config.json "legacy"
  bool add_bos_token = true;                    // tokenizer_config.json "add_bos_token"
  std::string chat_template;                    // tokenizer_config.json "chat_template"
};
HuggingFaceTokenizerInfo ParseHuggingFaceTokenizerFiles(const HuggingFaceTokenizerFiles& files,
                                                        const std::string& directory);

}  // namespace starling
