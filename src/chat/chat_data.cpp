#include "chat/chat_data.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file.h"

namespace starling {
namespace {

// The conversation of one JSON line, or throws Error with what is wrong.
std::vector<ChatMessage> Messages(const nlohmann::json& j, double* weight) {
  if (!j.is_object()) Fail("expected a JSON object");
  *weight = 1.0;
  if (j.contains("weight")) {
    if (!j["weight"].is_number()) Fail("\"weight\" must be a number");
    *weight = j["weight"].get<double>();
    if (!std::isfinite(*weight) || *weight < 0) Fail("\"weight\" must be finite and >= 0");
  }
  std::vector<ChatMessage> out;
  if (j.contains("messages")) {
    const nlohmann::json& list = j["messages"];
    if (!list.is_array()) Fail("\"messages\" must be a list");
    for (size_t i = 0; i < list.size(); ++i) {
      const nlohmann::json& m = list[i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
          !m.contains("content") || !m["content"].is_string()) {
        Fail("message ", i, " needs string \"role\" and \"content\"");
      }
      out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
  } else if (j.contains("conversations")) {
    const nlohmann::json& list = j["conversations"];
    if (!list.is_array()) Fail("\"conversations\" must be a list");
    for (size_t i = 0; i < list.size(); ++i) {
      const nlohmann::json& m = list[i];
      if (!m.is_object() || !m.contains("from") || !m["from"].is_string() || !m.contains("value") ||
          !m["value"].is_string()) {
        Fail("turn ", i, " needs string \"from\" and \"value\"");
      }
      const std::string from = m["from"].get<std::string>();
      const std::string role = from == "human" || from == "user"      ? "user"
                               : from == "gpt" || from == "assistant" ? "assistant"
                               : from == "system"                     ? "system"
                                                                      : "";
      if (role.empty()) Fail("turn ", i, ": unknown \"from\" '", from, "' (human, gpt or system)");
      out.push_back({role, m["value"].get<std::string>()});
    }
  } else {
    Fail("expected \"messages\" (or ShareGPT's \"conversations\")");
  }
  if (out.empty()) Fail("the conversation is empty");
  return out;
}

}  // namespace

ChatExample RenderChatExample(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                              const std::vector<ChatMessage>& messages, double weight) {
  const RenderedChat r = chat_template.Render(tokenizer, messages, false);
  ChatExample e;
  e.ids = r.ids;
  e.weights.resize(r.ids.size() - 1);
  for (size_t i = 0; i + 1 < r.ids.size(); ++i) {
    e.weights[i] = r.assistant[i + 1] ? static_cast<float>(weight) : 0.0f;
  }
  return e;
}

int64_t ChatExample::trained_tokens() const {
  int64_t n = 0;
  for (const float w : weights) n += w != 0.0f;
  return n;
}

std::vector<ChatExample> LoadChatData(const std::string& path, const Tokenizer& tokenizer,
                                      const ChatTemplate& chat_template,
                                      const ChatDataOptions& options, ChatDataStats* stats) {
  ChatDataStats s;
  std::vector<ChatExample> out =
      ParseChatData(ReadFile(path), path, tokenizer, chat_template, options, &s);
  if (stats != nullptr) *stats = s;
  if (out.empty()) Fail(path, ": no conversation to train on (", s.lines, " lines)");
  return out;
}

std::vector<ChatExample> ParseChatData(std::string_view text, const std::string& path,
                                       const Tokenizer& tokenizer,
                                       const ChatTemplate& chat_template,
                                       const ChatDataOptions& options, ChatDataStats* stats) {
  std::istringstream in{std::string(text)};
  std::vector<ChatExample> out;
  ChatDataStats s;
  std::string line;
  while (std::getline(in, line)) {
    ++s.lines;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ChatExample e;
    e.line = s.lines;
    double weight = 1.0;
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      const std::vector<ChatMessage> messages = Messages(j, &weight);
      e = RenderChatExample(tokenizer, chat_template, messages, weight);
      e.line = s.lines;
    } catch (const std::exception& err) {  // JSON syntax errors and Fail alike
      if (!options.skip_bad_lines) {
        Fail(path, ":", s.lines, ": ", err.what(), " (--skip-bad-lines skips such lines)");
      }
      ++s.bad_lines;
      continue;
    }
    bool any_assistant = false;
    for (const float w : e.weights) any_assistant |= w != 0.0f;
    if (!any_assistant) {  // no assistant turn, or weight 0: nothing to train
      ++s.no_assistant;
      continue;
    }
    if (options.ctx > 0 && static_cast<int64_t>(e.ids.size()) > options.ctx + 1) {
      if (options.long_conversations == LongConversations::kSkip) {
        ++s.too_long_skipped;
        continue;
      }
      // Keep the last ctx + 1 tokens: the earliest turns go first.
      const auto drop = static_cast<int64_t>(e.ids.size()) - (options.ctx + 1);
      e.ids.erase(e.ids.begin(), e.ids.begin() + drop);
      e.weights.erase(e.weights.begin(), e.weights.begin() + drop);
      ++s.truncated;
    }
    s.trained_tokens += e.trained_tokens();
    out.push_back(std::move(e));
  }
  s.conversations = static_cast<int64_t>(out.size());
  if (stats != nullptr) *stats = s;
  return out;
}

}  // namespace starling
