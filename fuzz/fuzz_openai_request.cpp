// libFuzzer target for the OpenAI-compatible server's request parsers. An ApiError is the
// expected answer to bad input; any other exception, a crash or a sanitizer report is a bug.
// A request that parses must hold what the parser promises (non-empty messages with known
// roles, values in range), and its text must survive the response builders and SSE framing.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "server/openai_api.h"

namespace {

void CheckSampling(const starling::SamplingRequest& r) {
  if (!(r.temperature >= 0.0f && r.temperature <= 2.0f)) __builtin_trap();
  if (!(r.top_p > 0.0f && r.top_p <= 1.0f)) __builtin_trap();
  if (r.max_tokens != -1 && (r.max_tokens < 1 || r.max_tokens > starling::kMaxTokensLimit)) {
    __builtin_trap();
  }
  if (r.stop.size() > starling::kMaxStopStrings) __builtin_trap();
  for (const std::string& s : r.stop) {
    if (s.empty()) __builtin_trap();
  }
  if (r.include_usage && starling::UsageChunk("id", r.model, 0, {1, 2}).empty()) __builtin_trap();
}

void CheckMessages(const std::vector<starling::ChatMessage>& messages) {
  if (messages.empty()) __builtin_trap();
  for (const starling::ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") __builtin_trap();
  }
}

// The response side: any text (including text cut mid-character) must serialize.
void CheckText(const std::string& model, const std::string& text) {
  const std::string event = starling::SseEvent(
      starling::ChatCompletionChunk("id", model, 0, "assistant", text, std::nullopt));
  if (event.rfind("data: ", 0) != 0 || event.size() < 8 ||
      event.substr(event.size() - 2) != "\n\n") {
    __builtin_trap();
  }
  starling::DumpJson(starling::CompletionResponse("id", model, 0, text, "stop", {1, 2}));
  // Half of the text: may end inside a UTF-8 sequence, as streamed pieces can.
  starling::DumpJson(
      starling::CompletionChunk("id", model, 0, text.substr(0, text.size() / 2), std::nullopt));
}

template <typename F>
void Try(F&& parse) {
  try {
    parse();
  } catch (const starling::ApiError& e) {
    if (e.status != 400 || e.type != "invalid_request_error") __builtin_trap();
    if (starling::ErrorBody(e).empty()) __builtin_trap();
  }
  // Anything else escapes to libFuzzer, which reports it as a crash.
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  Try([&] {
    const starling::ChatCompletionRequest r = starling::ParseChatCompletionRequest(body);
    CheckSampling(r);
    CheckMessages(r.messages);
    for (const starling::ChatMessage& m : r.messages) CheckText(r.model, m.content);
  });
  Try([&] {
    const starling::CompletionRequest r = starling::ParseCompletionRequest(body);
    CheckSampling(r);
    CheckText(r.model, r.prompt);
  });
  Try([&] {
    const starling::TokenizeRequest r = starling::ParseTokenizeRequest(body);
    CheckText("", r.content);
  });
  Try([&] {
    const starling::DetokenizeRequest r = starling::ParseDetokenizeRequest(body);
    for (int32_t id : r.tokens) {
      if (id < 0) __builtin_trap();
    }
  });
  Try([&] {
    const starling::RewardsRequest r = starling::ParseRewardsRequest(body);
    if (r.conversations.empty()) __builtin_trap();
    for (const auto& conversation : r.conversations) CheckMessages(conversation);
  });
  return 0;
}
