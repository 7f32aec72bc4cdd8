// Errors: one exception type for every failure that comes from outside the program
// (files, JSON, command-line values). Messages name the file, field or position.
#pragma once

#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace starling {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates any streamable values into one string: Concat("bad id ", 7, " at ", pos).
template <typename... Parts>
std::string Concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// Untrusted text (names from files) made safe for an error message: at most `max_bytes`
// (cut at a UTF-8 boundary, the full length noted), control bytes and backslashes escaped.
inline std::string PrintableForError(std::string_view s, size_t max_bytes = 96) {
  std::string out;
  size_t n = s.size();
  if (n > max_bytes) {
    n = max_bytes;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // UTF-8 boundary
  }
  for (size_t k = 0; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[k]);
    if (c < 0x20 || c == 0x7F || c == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += c == '\\' ? std::string("\\\\") : std::string{'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    } else {
      out += static_cast<char>(c);
    }
  }
  if (n < s.size()) out += Concat("...(", s.size(), " bytes)");
  return out;
}

// Inside a catch block: the message of the exception being handled (what() of a
// std::exception, else a fixed text). For the catch-all at a thread's entry point.
inline std::string CurrentExceptionMessage() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

template <typename... Parts>
[[noreturn]] void Fail(Parts&&... parts) {
  throw Error(Concat(std::forward<Parts>(parts)...));
}

}  // namespace starling
