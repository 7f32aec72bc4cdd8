#include "core/utf8.h"

namespace starling {
namespace {

bool IsTrailByte(uint8_t byte) {
  return (byte & 0xC0) == 0x80;
}

bool IsValidCodePoint(char32_t c) {
  return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF);
}

}  // namespace

char32_t DecodeUtf8(std::string_view text, size_t* length) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  *length = 1;
  if (n == 0) return kReplacementChar;
  if (p[0] < 0x80) return p[0];
  if (n >= 2 && (p[0] & 0xE0) == 0xC0) {
    const char32_t c = (char32_t{p[0] & 0x1Fu} << 6) | (p[1] & 0x3Fu);
    if (IsTrailByte(p[1]) && c >= 0x80 && IsValidCodePoint(c)) {
      *length = 2;
      return c;
    }
  } else if (n >= 3 && (p[0] & 0xF0) == 0xE0) {
    const char32_t c =
        (char32_t{p[0] & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu);
    if (IsTrailByte(p[1]) && IsTrailByte(p[2]) && c >= 0x800 && IsValidCodePoint(c)) {
      *length = 3;
      return c;
    }
  } else if (n >= 4 && (p[0] & 0xF8) == 0xF0) {
    const char32_t c = (char32_t{p[0] & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) |
                       (char32_t{p[2] & 0x3Fu} << 6) | (p[3] & 0x3Fu);
    if (IsTrailByte(p[1]) && IsTrailByte(p[2]) && IsTrailByte(p[3]) && c >= 0x10000 &&
        IsValidCodePoint(c)) {
      *length = 4;
      return c;
    }
  }
  return kReplacementChar;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool IsWellFormedUtf8(std::string_view text) {
  while (!text.empty()) {
    size_t length = 0;
    if (!IsValidUtf8Prefix(text, &length)) return false;
    text.remove_prefix(length);
  }
  return true;
}

std::string SanitizeUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    size_t length = 0;
    if (IsValidUtf8Prefix(text, &length)) {
      out.append(text.substr(0, length));
    } else {
      out.append(kReplacementUtf8);
    }
    text.remove_prefix(length);
  }
  return out;
}

size_t IncompleteUtf8Tail(std::string_view text) {
  // Look back at most 3 bytes for a lead byte whose sequence is not yet complete.
  const size_t n = text.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto byte = static_cast<uint8_t>(text[n - back]);
    if (IsTrailByte(byte)) continue;
    const size_t need = (byte & 0xE0) == 0xC0   ? 2
                        : (byte & 0xF0) == 0xE0 ? 3
                        : (byte & 0xF8) == 0xF0 ? 4
                                                : 1;
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace starling
