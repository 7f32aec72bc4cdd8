// Errors: one exception type for every failure that comes from outside the program
// (files, JSON, command-line values). Messages name the file, field or position.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
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

template <typename... Parts>
[[noreturn]] void Fail(Parts&&... parts) {
  throw Error(Concat(std::forward<Parts>(parts)...));
}

}  // namespace starling
