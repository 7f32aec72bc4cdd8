// Small helpers the binary-format parsers share: quoting untrusted text in error messages,
// shapes as text, overflow-checked sizes and little-endian fields read from unaligned bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace starling {

// 'text' with unprintable bytes escaped and long text cut, for error messages.
inline std::string Quoted(std::string_view s) {
  return Concat("'", PrintableForError(s), "'");  // not operator+: GCC 12's false -Wrestrict
}

inline std::string Hex(uint64_t v) {
  return Concat("0x", std::hex, v);
}

// "[2, 3]"
inline std::string FormatShape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t k = 0; k < shape.size(); ++k) out += Concat(k ? ", " : "", shape[k]);
  return out + "]";
}

inline std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// Little-endian fields at any alignment (the parsers that use them assert a little-endian host).
inline uint16_t Le16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t Le32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Le64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace starling
