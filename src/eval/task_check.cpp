#include "eval/task_check.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "core/utf8.h"

namespace starling {
namespace {

bool Digit(char c) {
  return c >= '0' && c <= '9';
}
bool Letter(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// A token of -?[0-9]+ (int) or [A-Za-z]+ (word) starting at or after `from`: [begin, end).
struct Span {
  size_t begin = 0, end = 0;
};
std::optional<Span> NextToken(std::string_view s, size_t from, bool integers) {
  for (size_t i = from; i < s.size(); ++i) {
    if (integers) {
      // Leftmost match of -?[0-9]+: a '-' followed by a digit starts one at the '-'.
      if (Digit(s[i]) || (s[i] == '-' && i + 1 < s.size() && Digit(s[i + 1]))) {
        size_t j = s[i] == '-' ? i + 1 : i;
        while (j < s.size() && Digit(s[j])) ++j;
        return Span{i, j};
      }
    } else if (Letter(s[i])) {
      size_t j = i;
      while (j < s.size() && Letter(s[j])) ++j;
      return Span{i, j};
    }
  }
  return std::nullopt;
}

// Sign kept, leading zeros removed, "-0" -> "0".
std::string NormalizeInteger(std::string_view token) {
  const bool negative = !token.empty() && token[0] == '-';
  std::string_view digits = negative ? token.substr(1) : token;
  while (digits.size() > 1 && digits[0] == '0') digits.remove_prefix(1);
  if (digits == "0" || digits.empty()) return "0";
  std::string out = negative ? "-" : "";
  out += digits;
  return out;
}

bool IsInteger(std::string_view s) {
  const size_t start = !s.empty() && s[0] == '-' ? 1 : 0;
  if (start >= s.size()) return false;
  return std::all_of(s.begin() + static_cast<ptrdiff_t>(start), s.end(), Digit);
}

std::optional<std::string> FirstInteger(std::string_view response) {
  const auto t = NextToken(response, 0, true);
  if (!t) return std::nullopt;
  return NormalizeInteger(response.substr(t->begin, t->end - t->begin));
}

std::string_view Strip(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::string_view NormalizedText(std::string_view response) {
  std::string_view s = Strip(response);
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return s;
}

// The answer's items and whether they are integers.
std::vector<std::string> ExpectedItems(const std::string& answer, bool* integers) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t comma = answer.find(", ", start);
    items.push_back(answer.substr(start, comma == std::string::npos ? comma : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 2;
  }
  *integers =
      std::all_of(items.begin(), items.end(), [](const std::string& x) { return IsInteger(x); });
  if (*integers) {
    for (std::string& x : items) x = NormalizeInteger(x);
  }
  return items;
}

std::vector<std::string> FirstRun(std::string_view response, bool integers) {
  std::vector<std::string> run;
  size_t from = 0;
  std::optional<size_t> end;
  while (const auto t = NextToken(response, from, integers)) {
    if (end) {
      const std::string_view gap = response.substr(*end, t->begin - *end);
      if (gap.empty() || gap.find_first_not_of(" ,") != std::string_view::npos) break;
    }
    const std::string_view token = response.substr(t->begin, t->end - t->begin);
    run.push_back(integers ? NormalizeInteger(token) : std::string(token));
    end = t->end;
    from = t->end;
  }
  return run;
}

template <typename T>
size_t Levenshtein(const std::vector<T>& a, const std::vector<T>& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::vector<char32_t> CodePoints(std::string_view s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    out.push_back(DecodeUtf8(s.substr(i), &n));
    i += std::max<size_t>(n, 1);
  }
  return out;
}

}  // namespace

TaskRecord ParseTaskRecord(std::string_view json_line, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_line);
  } catch (const nlohmann::json::exception& e) {
    Fail(source, ": not JSON (", e.what(), ")");
  }
  if (!j.is_object() || !j.contains("messages")) Fail(source, ": a task record needs \"messages\"");
  TaskRecord r;
  r.messages = ParseChatMessages(j["messages"].dump(), source);
  if (!r.messages.empty() && r.messages.back().role == "assistant") r.messages.pop_back();
  if (r.messages.empty() || r.messages.back().role != "user") {
    Fail(source, ": the prompt must end with a user turn");
  }
  for (auto [key, into] : {std::pair<const char*, std::string*>{"task", &r.task},
                           {"difficulty", &r.difficulty},
                           {"answer", &r.answer},
                           {"check", &r.check}}) {
    if (!j.contains(key) || !j[key].is_string()) Fail(source, ": \"", key, "\" must be a string");
    *into = j[key].get<std::string>();
  }
  if (r.check != "integer" && r.check != "text" && r.check != "list" && r.check != "none") {
    Fail(source, ": unknown check rule \"", r.check, "\" (integer, text, list or none)");
  }
  return r;
}

bool CheckAnswer(std::string_view response, const TaskRecord& r) {
  if (r.check == "integer") {
    const auto got = FirstInteger(response);
    return got && *got == NormalizeInteger(r.answer);
  }
  if (r.check == "text") return NormalizedText(response) == r.answer;
  if (r.check == "list") {
    bool integers = false;
    const std::vector<std::string> items = ExpectedItems(r.answer, &integers);
    return FirstRun(response, integers) == items;
  }
  return false;
}

double TrueReward(std::string_view response, const TaskRecord& r) {
  if (r.check == "none") return 0.0;
  if (CheckAnswer(response, r)) return 1.0;
  double e = 1.0;
  if (r.check == "integer") {
    if (const auto got = FirstInteger(response)) {
      const double want = std::strtod(NormalizeInteger(r.answer).c_str(), nullptr);
      e = std::fabs(std::strtod(got->c_str(), nullptr) - want) / std::max(1.0, std::fabs(want));
    }
  } else if (r.check == "text") {
    const std::vector<char32_t> got = CodePoints(NormalizedText(response));
    const std::vector<char32_t> want = CodePoints(r.answer);
    e = static_cast<double>(Levenshtein(got, want)) /
        static_cast<double>(std::max<size_t>(1, want.size()));
  } else {
    bool integers = false;
    const std::vector<std::string> items = ExpectedItems(r.answer, &integers);
    const std::vector<std::string> run = FirstRun(response, integers);
    if (!run.empty()) {
      e = static_cast<double>(Levenshtein(run, items)) /
          static_cast<double>(std::max<size_t>(1, items.size()));
    }
  }
  return -std::max(0.01, std::min(1.0, e));
}

}  // namespace starling
