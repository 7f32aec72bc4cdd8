#include "reward/ranking_data.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "formats/json.h"
#include "reward/nectar.h"

namespace starling {
namespace {

bool Blank(std::string_view s) {
  return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

std::vector<ChatMessage> Messages(const nlohmann::json& list, const std::string& where) {
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& m = list[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      Fail(where, "[", i, "] needs string \"role\" and \"content\"");
    }
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant") {
      Fail(where, "[", i, "]: unknown role '", PrintableForError(role),
           "' (system, user or assistant)");
    }
    out.push_back({role, m["content"].get<std::string>()});
  }
  return out;
}

// A pair's prompt: a Human/Assistant string, a plain string (one user turn) or messages.
std::vector<ChatMessage> PairPrompt(const nlohmann::json& p, const std::string& source) {
  if (p.is_string()) {
    const std::string& text = p.get_ref<const std::string&>();
    if (Blank(text)) Fail(source, ": \"prompt\" is empty");
    if (text.find("Human:") != std::string::npos) return ParseHumanAssistantPrompt(text, source);
    return {{"user", text}};
  }
  if (p.is_array()) return Messages(p, source + ": prompt");
  Fail(source, ": \"prompt\" must be a string or a list of messages");
}

// A pair's answer: a string, or messages whose last is the assistant's answer (the ones before
// it go into `before`).
std::string PairAnswer(const nlohmann::json& a, const std::string& where,
                       std::vector<ChatMessage>* before) {
  if (a.is_string()) return a.get<std::string>();
  if (!a.is_array() || a.empty()) Fail(where, " must be a string or a non-empty message list");
  std::vector<ChatMessage> m = Messages(a, where);
  if (m.back().role != "assistant") Fail(where, ": the last message must be the assistant's");
  std::string answer = std::move(m.back().content);
  m.pop_back();
  *before = std::move(m);
  return answer;
}

}  // namespace

std::vector<int32_t> RewardConversationIds(const Tokenizer& tokenizer,
                                           const ChatTemplate& chat_template,
                                           const std::vector<ChatMessage>& messages, bool add_bos) {
  std::vector<int32_t> ids;
  if (add_bos && tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  const RenderedChat rendered = chat_template.Render(tokenizer, messages, false);
  ids.insert(ids.end(), rendered.ids.begin(), rendered.ids.end());
  return ids;
}

RankingRecord ParseRankingRecord(std::string_view json_line, const std::string& source) {
  const nlohmann::json j = ParseStrictJson(json_line, source, "", true);
  if (!j.is_object()) Fail(source, ": expected a JSON object");
  RankingRecord r;
  if (j.contains("answers")) {
    const NectarRecord n = NectarRecordFromJson(j, source);
    if (n.answers.size() < 2) {
      Fail(source, ": a ranking needs at least 2 answers, this has ", n.answers.size());
    }
    std::set<double> ranks;
    for (size_t i = 0; i < n.answers.size(); ++i) {
      const double rank = n.answers[i].rank;
      if (rank != std::floor(rank) || std::abs(rank) > 1e9) {
        Fail(source, ": answers[", i, "].rank is ", rank, ", not an integer");
      }
      if (!ranks.insert(rank).second) {
        Fail(source, ": answers[", i, "].rank ", rank, " is given twice (ties are not allowed)");
      }
      if (Blank(n.answers[i].answer)) Fail(source, ": answers[", i, "].answer is empty");
    }
    std::vector<size_t> order(n.answers.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return n.answers[a].rank < n.answers[b].rank; });
    r.prompt = n.prompt;
    for (const size_t i : order) r.answers.push_back(n.answers[i].answer);
  } else if (j.contains("chosen") || j.contains("rejected")) {
    if (!j.contains("chosen") || !j.contains("rejected")) {
      Fail(source, ": a pair needs both \"chosen\" and \"rejected\"");
    }
    std::vector<ChatMessage> before_chosen, before_rejected;
    r.answers.push_back(PairAnswer(j["chosen"], source + ": chosen", &before_chosen));
    r.answers.push_back(PairAnswer(j["rejected"], source + ": rejected", &before_rejected));
    const auto same = [](const std::vector<ChatMessage>& a, const std::vector<ChatMessage>& b) {
      return a.size() == b.size() &&
             std::equal(a.begin(), a.end(), b.begin(), [](auto& x, auto& y) {
               return x.role == y.role && x.content == y.content;
             });
    };
    if (!same(before_chosen, before_rejected)) {
      Fail(source, ": chosen and rejected continue different conversations");
    }
    if (j.contains("prompt")) r.prompt = PairPrompt(j["prompt"], source);
    r.prompt.insert(r.prompt.end(), before_chosen.begin(), before_chosen.end());
    if (r.prompt.empty()) Fail(source, ": no prompt (give \"prompt\", or message lists)");
    for (size_t i = 0; i < 2; ++i) {
      if (Blank(r.answers[i])) Fail(source, ": ", i == 0 ? "chosen" : "rejected", " is empty");
    }
  } else {
    Fail(source, ": expected \"answers\" (Nectar) or \"chosen\" and \"rejected\" (pairs)");
  }
  if (r.prompt.empty() || r.prompt.back().role != "user") {
    Fail(source, ": the prompt must end with a user turn");
  }
  return r;
}

std::vector<RankingExample> ParseRankingData(std::string_view text, const std::string& source,
                                             const Tokenizer& tokenizer,
                                             const ChatTemplate& chat_template,
                                             const RankingDataOptions& options,
                                             RankingDataStats* stats) {
  std::istringstream in{std::string(text)};
  std::vector<RankingExample> out;
  RankingDataStats s;
  std::string line;
  while (std::getline(in, line)) {
    ++s.lines;
    if (Blank(line)) continue;
    RankingExample e;
    e.line = s.lines;
    const std::string where = Concat(source, ":", s.lines);
    try {
      const RankingRecord r = ParseRankingRecord(line, where);
      for (const std::string& answer : r.answers) {
        std::vector<ChatMessage> messages = r.prompt;
        messages.push_back({"assistant", answer});
        e.sequences.push_back(
            RewardConversationIds(tokenizer, chat_template, messages, options.add_bos));
      }
    } catch (const std::exception& err) {  // Fail and JSON errors alike
      if (!options.skip_bad_lines) {
        const std::string what = err.what();
        Fail(what.rfind(where, 0) == 0 ? what : where + ": " + what,
             " (--skip-bad-lines skips such lines)");
      }
      ++s.bad_lines;
      continue;
    }
    for (std::vector<int32_t>& ids : e.sequences) {
      if (options.ctx > 0 && static_cast<int64_t>(ids.size()) > options.ctx) {
        ids.erase(ids.begin(), ids.end() - options.ctx);  // keep the last ctx tokens
        ++s.truncated;
      }
    }
    s.answers += static_cast<int64_t>(e.sequences.size());
    out.push_back(std::move(e));
  }
  s.records = static_cast<int64_t>(out.size());
  if (stats != nullptr) *stats = s;
  return out;
}

std::vector<RankingExample> LoadRankingData(const std::string& path, const Tokenizer& tokenizer,
                                            const ChatTemplate& chat_template,
                                            const RankingDataOptions& options,
                                            RankingDataStats* stats) {
  RankingDataStats s;
  std::vector<RankingExample> out =
      ParseRankingData(ReadFile(path), path, tokenizer, chat_template, options, &s);
  if (out.empty()) Fail(path, ": no record to train on (", s.lines, " lines)");
  if (stats != nullptr) *stats = s;
  return out;
}

std::vector<ChatMessage> ParsePromptLine(std::string_view json_line, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_line);
  } catch (const nlohmann::json::exception& e) {
    Fail(source, ": not JSON (", e.what(), ")");
  }
  if (!j.is_object()) Fail(source, ": a prompt line is a JSON object");
  std::vector<ChatMessage> messages;
  if (j.contains("messages")) {
    messages = ParseChatMessages(j["messages"].dump(), source);
    if (!messages.empty() && messages.back().role == "assistant") messages.pop_back();
  } else if (j.contains("prompt")) {
    if (!j["prompt"].is_string()) Fail(source, ": \"prompt\" is not a string");
    const std::string text = j["prompt"].get<std::string>();
    if (text.find("Human:") != std::string::npos) {
      messages = ParseHumanAssistantPrompt(text, source);
    } else {
      messages.push_back({"user", text});
    }
  } else {
    Fail(source, ": a prompt line needs \"messages\" or \"prompt\"");
  }
  if (messages.empty() || messages.back().role != "user") {
    Fail(source, ": the prompt must end with a user turn");
  }
  return messages;
}

}  // namespace starling
