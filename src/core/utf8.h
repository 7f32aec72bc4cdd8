// UTF-8 helpers with SentencePiece's exact notion of validity, so that our tokenizer
// treats malformed input byte for byte as the reference does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace starling {

inline constexpr char32_t kReplacementChar = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

// Decodes the first character of `text` (must be non-empty). On success returns the code
// point and sets *length to 1..4. A malformed sequence (bad lead or trail byte, truncated,
// overlong, surrogate, above U+10FFFF) yields kReplacementChar with *length = 1.
char32_t DecodeUtf8(std::string_view text, size_t* length);

// True when the first character of `text` is well formed. An encoded U+FFFD is well
// formed (length 3); a malformed byte is not (length 1).
inline bool IsValidUtf8Prefix(std::string_view text, size_t* length) {
  return DecodeUtf8(text, length) != kReplacementChar || *length == 3;
}

// Length in bytes that a UTF-8 lead byte announces (1 for ASCII, stray trail bytes and
// invalid leads). SentencePiece splits normalized text into characters with this.
inline size_t Utf8LeadLength(uint8_t lead) {
  return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[lead >> 4];
}

void AppendUtf8(char32_t code_point, std::string* out);

// True when every character of `text` is well formed (as IsValidUtf8Prefix).
bool IsWellFormedUtf8(std::string_view text);

// Replaces every malformed byte by U+FFFD, as SentencePiece's decoder does for byte pieces.
std::string SanitizeUtf8(std::string_view text);

// Number of bytes at the end of `text` that form an incomplete (but so far well-formed)
// UTF-8 character, 0..3. Streaming decoders hold these back until the character completes.
size_t IncompleteUtf8Tail(std::string_view text);

}  // namespace starling
