#include "reward/nectar.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "formats/json.h"

namespace starling {
namespace {

constexpr std::string_view kHuman = "Human:";
constexpr std::string_view kAssistant = "Assistant:";

std::string_view Trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<ChatMessage> ParseHumanAssistantPrompt(std::string_view prompt,
                                                   const std::string& source) {
  // Turn markers are "Human:" / "Assistant:" at the start of the prompt or after "\n\n".
  struct Marker {
    size_t at, content;
    bool human;
  };
  std::vector<Marker> markers;
  const std::string_view trimmed = Trim(prompt);
  const size_t offset = static_cast<size_t>(trimmed.data() - prompt.data());
  for (size_t pos = 0; pos < trimmed.size();) {
    const bool line_start = pos == 0 || (pos >= 2 && trimmed.substr(pos - 2, 2) == "\n\n");
    if (line_start && trimmed.substr(pos).starts_with(kHuman)) {
      markers.push_back({pos, pos + kHuman.size(), true});
      pos += kHuman.size();
    } else if (line_start && trimmed.substr(pos).starts_with(kAssistant)) {
      markers.push_back({pos, pos + kAssistant.size(), false});
      pos += kAssistant.size();
    } else {
      ++pos;
    }
  }
  if (markers.empty() || markers[0].at != 0 || !markers[0].human) {
    Fail(source, ": prompt must start with \"Human:\" (Nectar's \"\\n\\nHuman: ...\" format)");
  }
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < markers.size(); ++i) {
    const size_t end = i + 1 < markers.size() ? markers[i + 1].at : trimmed.size();
    const std::string_view content =
        Trim(trimmed.substr(markers[i].content, end - markers[i].content));
    const bool human = markers[i].human;
    if (human != (i % 2 == 0)) {
      Fail(source, ": prompt offset ", offset + markers[i].at, ": expected a ",
           i % 2 == 0 ? "Human" : "Assistant", " turn (turns must alternate)");
    }
    messages.push_back({human ? "user" : "assistant", std::string(content)});
  }
  if (messages.back().role == "assistant") {
    if (!messages.back().content.empty()) {
      Fail(source,
           ": prompt ends with a non-empty Assistant turn; expected a trailing "
           "\"Assistant:\" for the answer");
    }
    messages.pop_back();
  }
  return messages;
}

NectarRecord ParseNectarRecord(std::string_view json_line, const std::string& source) {
  return NectarRecordFromJson(ParseStrictJson(json_line, source, "", true), source);
}

NectarRecord NectarRecordFromJson(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) Fail(source, ": expected a JSON object (a Nectar record)");
  if (!j.contains("prompt") || !j["prompt"].is_string()) {
    Fail(source, ": \"prompt\" must be a string");
  }
  if (!j.contains("answers") || !j["answers"].is_array() || j["answers"].empty()) {
    Fail(source, ": \"answers\" must be a non-empty list");
  }
  NectarRecord record;
  record.prompt = ParseHumanAssistantPrompt(j["prompt"].get_ref<const std::string&>(), source);
  for (size_t i = 0; i < j["answers"].size(); ++i) {
    const nlohmann::json& a = j["answers"][i];
    const std::string where = Concat(source, ": answers[", i, "]");
    if (!a.is_object()) Fail(where, " must be an object");
    if (!a.contains("answer") || !a["answer"].is_string()) Fail(where, ".answer must be a string");
    if (!a.contains("rank") || !a["rank"].is_number()) Fail(where, ".rank must be a number");
    NectarAnswer answer;
    answer.answer = a["answer"].get<std::string>();
    answer.rank = a["rank"].get<double>();
    if (!std::isfinite(answer.rank)) Fail(where, ".rank must be finite");
    if (a.contains("model") && a["model"].is_string()) answer.model = a["model"].get<std::string>();
    record.answers.push_back(std::move(answer));
  }
  return record;
}

RankAgreement CompareRanking(const std::vector<double>& ranks, const std::vector<double>& scores) {
  if (ranks.size() != scores.size()) Fail("CompareRanking: ranks and scores differ in length");
  const size_t n = ranks.size();
  RankAgreement out;
  // Kendall's tau-b of (-rank, score): (C - D) / sqrt((P - T_rank) (P - T_score)).
  int64_t concordant = 0, discordant = 0, tied_rank = 0, tied_score = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      const double dr = ranks[j] - ranks[i];  // > 0: i is better
      const double ds = scores[i] - scores[j];
      if (dr == 0) ++tied_rank;
      if (ds == 0) ++tied_score;
      if (dr != 0 && ds != 0) ((dr > 0) == (ds > 0) ? concordant : discordant) += 1;
    }
  }
  const auto pairs = static_cast<int64_t>(n * (n - 1) / 2);
  const double denominator =
      std::sqrt(static_cast<double>(pairs - tied_rank) * static_cast<double>(pairs - tied_score));
  out.kendall_tau =
      denominator > 0 ? static_cast<double>(concordant - discordant) / denominator : 0.0;
  if (n > 0) {
    const size_t best =
        static_cast<size_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
    const double best_rank = *std::min_element(ranks.begin(), ranks.end());
    const bool unique_best = std::count(scores.begin(), scores.end(), scores[best]) == 1;
    out.top1_correct = unique_best && ranks[best] == best_rank;
  }
  // Consecutive distinct rank values r < r': every answer ranked r against every one ranked r'.
  const std::set<double> distinct(ranks.begin(), ranks.end());
  for (auto it = distinct.begin(); it != distinct.end() && std::next(it) != distinct.end(); ++it) {
    const double better = *it, worse = *std::next(it);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        if (ranks[i] == better && ranks[j] == worse) {
          ++out.adjacent_pairs;
          if (scores[i] > scores[j]) ++out.adjacent_correct;
        }
      }
    }
  }
  return out;
}

}  // namespace starling
