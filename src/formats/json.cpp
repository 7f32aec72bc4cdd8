#include "formats/json.h"

#include <set>
#include <vector>

#include "core/error.h"

namespace starling {

// Parses untrusted JSON. Unlike nlohmann's default (the last duplicate wins, as in Python and
// serde_json), a duplicate key anywhere is an error: two readers must not be able to disagree on
// which tensor a name means. Nesting is bounded by kMaxJsonDepth.
namespace {

using Json = nlohmann::json;

// nlohmann's DOM builder with the depth bound and the duplicate-key rule. (nlohmann's parse
// callbacks would do, but its callback parser scans the enclosing array at every object's
// end: quadratic, minutes of CPU for a list of a million small objects.)
class StrictSax {
 public:
  StrictSax(Json& out, const std::string& source, const std::string& name,
            bool allow_duplicate_keys)
      : dom_(out), source_(source), name_(name), allow_duplicate_keys_(allow_duplicate_keys) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(Json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(Json::number_float_t v, const Json::string_t& s) {
    return dom_.number_float(v, s);
  }
  bool string(Json::string_t& v) { return dom_.string(v); }
  bool binary(Json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) {
    Open();
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(Json::string_t& k) {
    if (!allow_duplicate_keys_ && !keys_.back().insert(k).second) {
      Fail(source_, ": ", name_, " has the key ", "'" + PrintableForError(k) + "'",
           " twice in one object");
    }
    return dom_.key(k);
  }
  bool end_object() {
    --depth_;
    keys_.pop_back();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    Open();
    return dom_.start_array(n);
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  template <class Exception>
  bool parse_error(std::size_t position, const std::string& token, const Exception& e) {
    return dom_.parse_error(position, token, e);
  }

 private:
  void Open() {
    if (depth_ >= kMaxJsonDepth) Fail(source_, ": ", name_, " nests deeper than ", kMaxJsonDepth);
    ++depth_;
  }

  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  const std::string& source_;
  const std::string& name_;
  const bool allow_duplicate_keys_;
  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // the keys seen in each open object
};

}  // namespace

nlohmann::json ParseStrictJson(std::string_view text, const std::string& source, const char* what,
                               bool allow_duplicate_keys) {
  const std::string name = what[0] != '\0' ? what : "JSON";
  const std::string prefix = what[0] != '\0' ? std::string(": ") + what + " is" : ":";
  // nlohmann stops at a NUL outside a string as if the text ended there, which would let bytes
  // after it (a second, hidden header) through. Valid JSON never holds a raw NUL.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    Fail(source, prefix, " not valid JSON: NUL byte at byte ", nul, " of ", text.size());
  }
  Json out;
  StrictSax sax(out, source, name, allow_duplicate_keys);
  try {
    Json::sax_parse(text.begin(), text.end(), &sax);
  } catch (const Json::exception& e) {
    Fail(source, prefix, " not valid JSON: ", e.what());
  }
  return out;
}

}  // namespace starling
