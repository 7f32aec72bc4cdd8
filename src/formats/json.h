// Parsing untrusted JSON (HF config and tokenizer files, safetensors headers, chat
// messages): every nlohmann exception becomes a starling::Error naming the source, nesting
// is bounded, duplicate keys and raw NUL bytes are refused.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace starling {

inline constexpr int kMaxJsonDepth = 32;

// `what` names the document in messages ("header", ...); empty for the whole file. Files
// written for Python readers (config.json, tokenizer files) keep Python's json.load rule for
// a repeated key, the last one wins (`allow_duplicate_keys`); binary headers refuse them.
nlohmann::json ParseStrictJson(std::string_view text, const std::string& source,
                               const char* what = "", bool allow_duplicate_keys = false);

}  // namespace starling
