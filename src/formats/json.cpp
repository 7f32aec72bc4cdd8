#include "formats/json.h"

#include <set>
#include <vector>

#include "core/error.h"

namespace starling {

// Parses untrusted JSON. Unlike nlohmann's default (the last duplicate wins, as in Python and
// serde_json), a duplicate key anywhere is an error: two readers must not be able to disagree on
// which tensor a name means. Nesting is bounded by kMaxJsonDepth.
nlohmann::json ParseStrictJson(std::string_view text, const std::string& source, const char* what,
                               bool allow_duplicate_keys) {
  using Json = nlohmann::json;
  const std::string name = what[0] != '\0' ? what : "JSON";
  const std::string prefix = what[0] != '\0' ? std::string(": ") + what + " is" : ":";
  std::vector<std::set<std::string>> keys;  // the keys seen in each open object
  auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) Fail(source, ": ", name, " nests deeper than ", kMaxJsonDepth);
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!allow_duplicate_keys && !keys.empty() &&
            !keys.back().insert(parsed.get<std::string>()).second) {
          Fail(source, ": ", name, " has the key ",
               "'" + PrintableForError(parsed.get_ref<const std::string&>()) + "'",
               " twice in one object");
        }
        break;
      default: break;
    }
    return true;
  };
  // nlohmann stops at a NUL outside a string as if the text ended there, which would let bytes
  // after it (a second, hidden header) through. Valid JSON never holds a raw NUL.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    Fail(source, prefix, " not valid JSON: NUL byte at byte ", nul, " of ", text.size());
  }
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::exception& e) {
    Fail(source, prefix, " not valid JSON: ", e.what());
  }
}

}  // namespace starling
