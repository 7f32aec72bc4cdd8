#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string_view>

#include "core/error.h"
#include "formats/json.h"

namespace starling {
namespace {

using Json = nlohmann::json;

[[noreturn]] void BadRequest(const std::string& message, const std::string& param) {
  throw ApiError(400, "invalid_request_error", message, param);
}

// What a wrong value was, for messages: a number as written, otherwise its JSON type.
std::string Describe(const Json& v) {
  if (v.is_number()) return v.dump();
  return v.type_name();
}

std::string Quoted(const std::string& s) {
  std::string out = "'";
  out += PrintableForError(s);
  out += '\'';
  return out;
}

Json ParseBody(std::string_view body) {
  Json j;
  try {
    // Python's json.loads keeps the last of a repeated key; so do we.
    j = ParseStrictJson(body, "request body", "", /*allow_duplicate_keys=*/true);
  } catch (const Error& e) {
    BadRequest(e.what(), "");
  }
  if (!j.is_object()) {
    BadRequest("request body must be a JSON object, got " + Describe(j), "");
  }
  return j;
}

// The value of `key`, or nullptr when it is absent or null (null means "not given").
const Json* Find(const Json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

const Json& Require(const Json& object, const char* key, const std::string& param) {
  const Json* v = Find(object, key);
  if (v == nullptr) BadRequest(param + " is required", param);
  return *v;
}

// The fields ParseSampling reads.
constexpr std::string_view kSamplingFields[] = {"model",
                                                "temperature",
                                                "top_p",
                                                "max_tokens",
                                                "max_completion_tokens",
                                                "stop",
                                                "seed",
                                                "n",
                                                "stream",
                                                "stream_options",
                                                "frequency_penalty",
                                                "presence_penalty",
                                                "logit_bias"};

// Refuses every non-null member of `object` that is neither in `known` nor (with
// `allow_ignored`) in kIgnoredFields: a field this server does not implement must not be
// dropped without a word. `prefix` is prepended to the key for the param ("messages[0].").
void CheckFields(const Json& object, std::initializer_list<std::string_view> known,
                 const std::string& prefix, bool allow_ignored,
                 std::span<const std::string_view> more_known = {}) {
  for (const auto& [key, value] : object.items()) {
    if (value.is_null()) continue;
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    if (std::find(more_known.begin(), more_known.end(), key) != more_known.end()) continue;
    if (allow_ignored && std::find(std::begin(kIgnoredFields), std::end(kIgnoredFields), key) !=
                             std::end(kIgnoredFields)) {
      continue;
    }
    const std::string param = prefix + PrintableForError(key, 64);
    BadRequest(Concat(param,
                      " is not supported by this server (docs/SERVER.md lists the fields "
                      "it implements and the ones it ignores)"),
               param);
  }
}

std::string StringValue(const Json& v, const std::string& param) {
  if (!v.is_string()) BadRequest(param + " must be a string, got " + Describe(v), param);
  return v.get<std::string>();
}

bool BoolValue(const Json& v, const std::string& param) {
  if (!v.is_boolean()) BadRequest(param + " must be a boolean, got " + Describe(v), param);
  return v.get<bool>();
}

// A finite number in [lo, hi]; `lo_open` makes the lower bound exclusive. Checked as a double
// before the narrowing to float.
float NumberValue(const Json& v, const std::string& param, double lo, double hi, bool lo_open) {
  if (!v.is_number()) BadRequest(param + " must be a number, got " + Describe(v), param);
  const double d = v.get<double>();
  const bool below = lo_open ? !(d > lo) : !(d >= lo);
  if (!std::isfinite(d) || below || d > hi) {
    BadRequest(Concat(param, " must be ", lo_open ? "> " : ">= ", lo, " and <= ", hi, ", got ",
                      Describe(v)),
               param);
  }
  return static_cast<float>(d);
}

// An integer in [lo, hi] (hi >= 0). A number with a fraction or exponent (3.5, and 3.0 too:
// OpenAI's schema says integer) is refused.
int64_t IntegerValue(const Json& v, const std::string& param, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) {
    BadRequest(param + " must be an integer, got " + Describe(v), param);
  }
  bool ok;
  int64_t value = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(hi) && (lo <= 0 || u >= static_cast<uint64_t>(lo));
    if (ok) value = static_cast<int64_t>(u);
  } else {
    value = v.get<int64_t>();
    ok = value >= lo && value <= hi;
  }
  if (!ok) {
    BadRequest(Concat(param, " must be between ", lo, " and ", hi, ", got ", v.dump()), param);
  }
  return value;
}

// Content: a string, or a list of {"type": "text", "text": ...} parts joined as they are.
std::string ContentValue(const Json& v, const std::string& param) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) {
    BadRequest(param + " must be a string or a list of text parts, got " + Describe(v), param);
  }
  std::string text;
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& part = v[i];
    const std::string p = Concat(param, "[", i, "]");
    if (!part.is_object()) BadRequest(p + " must be an object, got " + Describe(part), p);
    const std::string type = StringValue(Require(part, "type", p + ".type"), p + ".type");
    if (type != "text") {
      BadRequest(Concat(p, ".type ", Quoted(type), " is not supported; only 'text' parts are"),
                 p + ".type");
    }
    CheckFields(part, {"type", "text"}, p + ".", /*allow_ignored=*/false);
    text += StringValue(Require(part, "text", p + ".text"), p + ".text");
  }
  return text;
}

std::vector<ChatMessage> MessagesValue(const Json& v, const std::string& param) {
  if (!v.is_array()) BadRequest(param + " must be a list of messages, got " + Describe(v), param);
  if (v.empty()) BadRequest(param + " must not be empty", param);
  std::vector<ChatMessage> messages;
  messages.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& m = v[i];
    const std::string p = Concat(param, "[", i, "]");
    if (!m.is_object()) BadRequest(p + " must be an object, got " + Describe(m), p);
    // "name" (a participant's name) is accepted and ignored: the templates have no place for it.
    CheckFields(m, {"role", "content", "name"}, p + ".", /*allow_ignored=*/false);
    if (const Json* name = Find(m, "name")) StringValue(*name, p + ".name");
    ChatMessage message;
    message.role = StringValue(Require(m, "role", p + ".role"), p + ".role");
    if (message.role != "system" && message.role != "user" && message.role != "assistant") {
      BadRequest(
          Concat(p, ".role must be 'system', 'user' or 'assistant', got ", Quoted(message.role)),
          p + ".role");
    }
    message.content = ContentValue(Require(m, "content", p + ".content"), p + ".content");
    messages.push_back(std::move(message));
  }
  return messages;
}

std::vector<std::string> StopValue(const Json& v) {
  std::vector<std::string> stop;
  if (v.is_string()) {
    stop.push_back(v.get<std::string>());
    if (stop.back().empty()) BadRequest("stop must not be an empty string", "stop");
    return stop;
  }
  if (!v.is_array()) {
    BadRequest("stop must be a string or a list of strings, got " + Describe(v), "stop");
  }
  if (v.size() > kMaxStopStrings) {
    BadRequest(Concat("stop may hold at most ", kMaxStopStrings, " strings, got ", v.size()),
               "stop");
  }
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = Concat("stop[", i, "]");
    stop.push_back(StringValue(v[i], p));
    if (stop.back().empty()) BadRequest(p + " must not be an empty string", p);
  }
  return stop;
}

void ParseSampling(const Json& body, SamplingRequest& out) {
  if (const Json* v = Find(body, "model")) out.model = StringValue(*v, "model");
  if (const Json* v = Find(body, "temperature")) {
    out.temperature = NumberValue(*v, "temperature", 0.0, 2.0, /*lo_open=*/false);
  }
  if (const Json* v = Find(body, "top_p")) {
    out.top_p = NumberValue(*v, "top_p", 0.0, 1.0, /*lo_open=*/true);
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (const Json* v = Find(body, key)) {
      out.max_tokens = static_cast<int32_t>(IntegerValue(*v, key, 1, kMaxTokensLimit));
    }
  }
  if (const Json* v = Find(body, "stop")) out.stop = StopValue(*v);
  if (const Json* v = Find(body, "seed")) {
    if (!v->is_number_integer()) BadRequest("seed must be an integer, got " + Describe(*v), "seed");
    // "-0" parses as a signed integer.
    if (!v->is_number_unsigned() && v->get<int64_t>() < 0) {
      BadRequest("seed must be >= 0, got " + v->dump(), "seed");
    }
    out.seed =
        v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
  }
  if (const Json* v = Find(body, "n")) {
    out.n = static_cast<int32_t>(IntegerValue(*v, "n", 1, kMaxChoices));
  }
  if (const Json* v = Find(body, "stream")) out.stream = BoolValue(*v, "stream");
  if (const Json* v = Find(body, "stream_options")) {
    if (!v->is_object()) {
      BadRequest("stream_options must be an object, got " + Describe(*v), "stream_options");
    }
    CheckFields(*v, {"include_usage"}, "stream_options.", /*allow_ignored=*/false);
    if (const Json* u = Find(*v, "include_usage")) {
      out.include_usage = BoolValue(*u, "stream_options.include_usage");
    }
  }
  if (const Json* v = Find(body, "frequency_penalty")) {
    out.frequency_penalty = NumberValue(*v, "frequency_penalty", -2.0, 2.0, /*lo_open=*/false);
  }
  if (const Json* v = Find(body, "presence_penalty")) {
    out.presence_penalty = NumberValue(*v, "presence_penalty", -2.0, 2.0, /*lo_open=*/false);
  }
  if (const Json* v = Find(body, "logit_bias")) {
    if (!v->is_object()) {
      BadRequest("logit_bias must be an object of token ids to biases, got " + Describe(*v),
                 "logit_bias");
    }
    for (const auto& [key, bias] : v->items()) {
      const std::string param = "logit_bias." + PrintableForError(key, 32);
      // A decimal token id: digits only, no sign or leading zero, at most INT32_MAX.
      const bool digits = !key.empty() && key.size() <= 10 &&
                          key.find_first_not_of("0123456789") == std::string::npos &&
                          (key.size() == 1 || key[0] != '0');
      if (!digits || std::stoll(key) > std::numeric_limits<int32_t>::max()) {
        BadRequest(
            Concat("logit_bias keys must be token ids (decimal integers), got ", Quoted(key)),
            "logit_bias");
      }
      const auto id = static_cast<int32_t>(std::stoll(key));
      if (bias.is_null()) continue;
      const float value = NumberValue(bias, param, -kMaxLogitBias, kMaxLogitBias, false);
      std::erase_if(out.logit_bias, [&](const auto& entry) { return entry.first == id; });
      out.logit_bias.emplace_back(id, value);
    }
  }
}

Json UsageJson(Usage usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

Json Header(const std::string& id, const char* object, int64_t created, const std::string& model) {
  return {{"id", id}, {"object", object}, {"created", created}, {"model", model}};
}

Json OptionalString(const std::optional<std::string>& s) {
  return s ? Json(*s) : Json(nullptr);
}

}  // namespace

Json ErrorJson(const ApiError& error) {
  auto or_null = [](const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); };
  return {{"error",
           {{"message", error.what()},
            {"type", error.type},
            {"param", or_null(error.param)},
            {"code", or_null(error.code)}}}};
}

std::string ErrorBody(const ApiError& error) {
  return DumpJson(ErrorJson(error));
}

ChatCompletionRequest ParseChatCompletionRequest(std::string_view body) {
  const Json j = ParseBody(body);
  CheckFields(j, {"messages", "logprobs", "top_logprobs", "response_format"}, "",
              /*allow_ignored=*/true, kSamplingFields);
  // Plain text is what this server writes; JSON modes and schemas are not implemented.
  if (const Json* v = Find(j, "response_format")) {
    const Json* type = v->is_object() ? Find(*v, "type") : nullptr;
    if (type == nullptr || !type->is_string() || *type != "text" || v->size() != 1) {
      BadRequest("response_format other than {\"type\": \"text\"} is not supported",
                 "response_format");
    }
  }
  ChatCompletionRequest request;
  ParseSampling(j, request);
  // OpenAI's chat shape: "logprobs": true, then "top_logprobs" alternatives (0 .. 20).
  const Json* top = Find(j, "top_logprobs");
  if (const Json* v = Find(j, "logprobs"); v != nullptr && BoolValue(*v, "logprobs")) {
    request.logprobs =
        top != nullptr
            ? static_cast<int32_t>(IntegerValue(*top, "top_logprobs", 0, kMaxTopLogprobs))
            : 0;
  } else if (top != nullptr) {
    BadRequest("top_logprobs needs \"logprobs\": true", "top_logprobs");
  }
  request.messages = MessagesValue(Require(j, "messages", "messages"), "messages");
  return request;
}

CompletionRequest ParseCompletionRequest(std::string_view body) {
  const Json j = ParseBody(body);
  CheckFields(j, {"prompt", "logprobs", "echo", "best_of", "suffix"}, "", /*allow_ignored=*/true,
              kSamplingFields);
  CompletionRequest request;
  ParseSampling(j, request);
  // The legacy shape: "logprobs": the number of alternatives (0 .. 20; OpenAI allows 5).
  if (const Json* v = Find(j, "logprobs")) {
    request.logprobs = static_cast<int32_t>(IntegerValue(*v, "logprobs", 0, kMaxTopLogprobs));
  }
  // Accepted at the values that mean "off"; anything else is not implemented.
  if (const Json* v = Find(j, "echo"); v != nullptr && BoolValue(*v, "echo")) {
    BadRequest("echo is not supported: the response holds the generated text only", "echo");
  }
  if (const Json* v = Find(j, "best_of")) {
    if (IntegerValue(*v, "best_of", 1, kMaxChoices) != request.n) {
      BadRequest("best_of must equal n: choosing the best of more samples is not supported",
                 "best_of");
    }
  }
  if (const Json* v = Find(j, "suffix"); v != nullptr && !StringValue(*v, "suffix").empty()) {
    BadRequest("suffix is not supported (no fill-in-the-middle)", "suffix");
  }
  const Json& prompt = Require(j, "prompt", "prompt");
  if (prompt.is_string()) {
    request.prompt = prompt.get<std::string>();
  } else if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
    request.prompt = prompt[0].get<std::string>();
  } else if (prompt.is_array() && !prompt.empty() &&
             (prompt[0].is_number() || prompt[0].is_array())) {
    BadRequest("prompt as token ids is not supported; send text", "prompt");
  } else if (prompt.is_array()) {
    BadRequest(Concat("prompt must be a string or a list of exactly one string, got a list of ",
                      prompt.size()),
               "prompt");
  } else {
    BadRequest("prompt must be a string, got " + Describe(prompt), "prompt");
  }
  return request;
}

TokenizeRequest ParseTokenizeRequest(std::string_view body) {
  const Json j = ParseBody(body);
  CheckFields(j, {"content", "add_special"}, "", /*allow_ignored=*/false);
  TokenizeRequest request;
  request.content = StringValue(Require(j, "content", "content"), "content");
  if (const Json* v = Find(j, "add_special")) request.add_special = BoolValue(*v, "add_special");
  return request;
}

DetokenizeRequest ParseDetokenizeRequest(std::string_view body) {
  const Json j = ParseBody(body);
  CheckFields(j, {"tokens"}, "", /*allow_ignored=*/false);
  const Json& tokens = Require(j, "tokens", "tokens");
  if (!tokens.is_array())
    BadRequest("tokens must be a list of integers, got " + Describe(tokens), "tokens");
  DetokenizeRequest request;
  request.tokens.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    request.tokens.push_back(static_cast<int32_t>(IntegerValue(
        tokens[i], Concat("tokens[", i, "]"), 0, std::numeric_limits<int32_t>::max())));
  }
  return request;
}

namespace {

// A reward scores a reply: a conversation of system messages alone has nothing to score.
std::vector<ChatMessage> ConversationValue(const Json& v, const std::string& param) {
  std::vector<ChatMessage> messages = MessagesValue(v, param);
  if (std::none_of(messages.begin(), messages.end(), [](const ChatMessage& m) {
        return m.role == "user" || m.role == "assistant";
      })) {
    BadRequest(param + " has no user or assistant message", param);
  }
  return messages;
}

}  // namespace

RewardsRequest ParseRewardsRequest(std::string_view body) {
  const Json j = ParseBody(body);
  CheckFields(j, {"model", "conversations", "messages"}, "", /*allow_ignored=*/false);
  RewardsRequest request;
  if (const Json* v = Find(j, "model")) request.model = StringValue(*v, "model");
  const Json* conversations = Find(j, "conversations");
  const Json* messages = Find(j, "messages");
  if (conversations != nullptr && messages != nullptr) {
    BadRequest("give either conversations or messages, not both", "messages");
  }
  if (messages != nullptr) {
    request.conversations.push_back(ConversationValue(*messages, "messages"));
    return request;
  }
  if (conversations == nullptr) BadRequest("conversations is required", "conversations");
  if (!conversations->is_array()) {
    BadRequest("conversations must be a list of conversations, got " + Describe(*conversations),
               "conversations");
  }
  if (conversations->empty()) BadRequest("conversations must not be empty", "conversations");
  request.conversations.reserve(conversations->size());
  for (size_t i = 0; i < conversations->size(); ++i) {
    request.conversations.push_back(
        ConversationValue((*conversations)[i], Concat("conversations[", i, "]")));
  }
  return request;
}

namespace {

// OpenAI writes -9999.0 for a probability too small to be represented.
double FiniteLogprob(double logprob) {
  return std::isfinite(logprob) ? logprob : -9999.0;
}

Json Bytes(const std::string& text) {
  Json bytes = Json::array();
  for (const char c : text) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

}  // namespace

Json ChatLogprobs(const std::vector<TokenLogprob>& tokens) {
  Json content = Json::array();
  for (const TokenLogprob& t : tokens) {
    Json top = Json::array();
    for (const auto& [text, logprob] : t.top) {
      top.push_back({{"token", text}, {"logprob", FiniteLogprob(logprob)}, {"bytes", Bytes(text)}});
    }
    content.push_back({{"token", t.token},
                       {"logprob", FiniteLogprob(t.logprob)},
                       {"bytes", Bytes(t.token)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

Json CompletionLogprobs(const std::vector<TokenLogprob>& tokens, size_t text_offset) {
  Json texts = Json::array(), logprobs = Json::array(), tops = Json::array(),
       offsets = Json::array();
  for (const TokenLogprob& t : tokens) {
    texts.push_back(t.token);
    logprobs.push_back(FiniteLogprob(t.logprob));
    Json top = Json::object();
    for (const auto& [text, logprob] : t.top) {
      // Two tokens may have the same text (or the same U+FFFD once dumped): keep the likelier.
      if (!top.contains(text)) top[text] = FiniteLogprob(logprob);
    }
    tops.push_back(std::move(top));
    offsets.push_back(text_offset);
    text_offset += t.token.size();
  }
  return {{"tokens", std::move(texts)},
          {"token_logprobs", std::move(logprobs)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

Json ChatCompletionResponse(const std::string& id, const std::string& model, int64_t created,
                            const std::vector<Choice>& choices, Usage usage) {
  Json j = Header(id, "chat.completion", created, model);
  j["choices"] = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    j["choices"].push_back({{"index", i},
                            {"message", {{"role", "assistant"}, {"content", choices[i].text}}},
                            {"logprobs", choices[i].logprobs},
                            {"finish_reason", choices[i].finish_reason}});
  }
  j["usage"] = UsageJson(usage);
  return j;
}

Json ChatCompletionResponse(const std::string& id, const std::string& model, int64_t created,
                            const std::string& content, const std::string& finish_reason,
                            Usage usage, Json logprobs) {
  return ChatCompletionResponse(id, model, created, {{content, finish_reason, std::move(logprobs)}},
                                usage);
}

Json ChatCompletionChunk(const std::string& id, const std::string& model, int64_t created,
                         const std::optional<std::string>& role,
                         const std::optional<std::string>& content,
                         const std::optional<std::string>& finish_reason, Json logprobs,
                         int64_t index) {
  Json delta = Json::object();
  if (role) delta["role"] = *role;
  if (content) delta["content"] = *content;
  Json j = Header(id, "chat.completion.chunk", created, model);
  j["choices"] = Json::array({{{"index", index},
                               {"delta", std::move(delta)},
                               {"logprobs", std::move(logprobs)},
                               {"finish_reason", OptionalString(finish_reason)}}});
  return j;
}

Json UsageChunk(const std::string& id, const std::string& model, int64_t created, Usage usage,
                const std::string& object) {
  Json j = Header(id, object.c_str(), created, model);
  j["choices"] = Json::array();
  j["usage"] = UsageJson(usage);
  return j;
}

Json CompletionResponse(const std::string& id, const std::string& model, int64_t created,
                        const std::vector<Choice>& choices, Usage usage) {
  Json j = Header(id, "text_completion", created, model);
  j["choices"] = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    j["choices"].push_back({{"text", choices[i].text},
                            {"index", i},
                            {"logprobs", choices[i].logprobs},
                            {"finish_reason", choices[i].finish_reason}});
  }
  j["usage"] = UsageJson(usage);
  return j;
}

Json CompletionResponse(const std::string& id, const std::string& model, int64_t created,
                        const std::string& text, const std::string& finish_reason, Usage usage,
                        Json logprobs) {
  return CompletionResponse(id, model, created, {{text, finish_reason, std::move(logprobs)}},
                            usage);
}

Json CompletionChunk(const std::string& id, const std::string& model, int64_t created,
                     const std::string& text, const std::optional<std::string>& finish_reason,
                     Json logprobs, int64_t index) {
  Json j = Header(id, "text_completion", created, model);
  j["choices"] = Json::array({{{"text", text},
                               {"index", index},
                               {"logprobs", std::move(logprobs)},
                               {"finish_reason", OptionalString(finish_reason)}}});
  return j;
}

Json ModelObject(const std::string& id, int64_t created) {
  return {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "starling"}};
}

Json ModelsList(const std::vector<std::string>& ids, int64_t created) {
  Json data = Json::array();
  for (const std::string& id : ids) data.push_back(ModelObject(id, created));
  return {{"object", "list"}, {"data", std::move(data)}};
}

std::string DumpJson(const Json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

std::string SseEvent(const Json& j) {
  return "data: " + DumpJson(j) + "\n\n";
}

std::string SseDone() {
  return "data: [DONE]\n\n";
}

}  // namespace starling
