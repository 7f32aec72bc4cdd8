// libFuzzer target for the OpenAI-compatible server's request path: a JSON body through the
// request parsers, then what the server does with what parses: chat messages rendered by
// every chat template (as /v1/chat/completions does, with the open assistant turn, and as
// /v1/rewards does, without), prompts and /tokenize content encoded, with the OpenChat
// tokenizer. An ApiError is the expected answer to a bad body and a starling::Error to a
// conversation a template refuses (the server turns both into a 400); any other exception, a
// crash or a sanitizer report is a bug. What parses must hold what the parser promises
// (non-empty messages with known roles, values in range), renderings and encodings must hold
// only ids of the vocabulary (with one mask entry per id), and text must survive the
// response builders and SSE framing.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "chat/chat_template.h"
#include "core/error.h"
#include "server/openai_api.h"
#include "tokenizer/load.h"

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
  if (!(r.frequency_penalty >= -2.0f && r.frequency_penalty <= 2.0f)) __builtin_trap();
  if (!(r.presence_penalty >= -2.0f && r.presence_penalty <= 2.0f)) __builtin_trap();
  if (r.logprobs < -1 || r.logprobs > starling::kMaxTopLogprobs) __builtin_trap();
  if (r.n < 1 || r.n > starling::kMaxChoices) __builtin_trap();
  for (const auto& [id, bias] : r.logit_bias) {
    if (id < 0 || !(bias >= -starling::kMaxLogitBias && bias <= starling::kMaxLogitBias)) {
      __builtin_trap();
    }
  }
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
  // Any text as a token of a logprobs entry (a byte token is not a whole character).
  const std::vector<starling::TokenLogprob> tokens = {
      {.token = text, .logprob = -1.0, .top = {{text, -1.0}, {text.substr(0, 1), -2.0}}}};
  starling::DumpJson(starling::ChatLogprobs(tokens));
  starling::DumpJson(starling::CompletionLogprobs(tokens, 0));
  // Half of the text: may end inside a UTF-8 sequence, as streamed pieces can.
  starling::DumpJson(
      starling::CompletionChunk("id", model, 0, text.substr(0, text.size() / 2), std::nullopt));
}

const starling::Tokenizer& OpenChat() {
  static const starling::Tokenizer tokenizer =
      starling::LoadTokenizer(STARLING_MODELS_DIR "/openchat-3.5-tokenizer");
  return tokenizer;
}

void CheckIds(const std::vector<int32_t>& ids) {
  for (const int32_t id : ids) {
    if (id < 0 || id >= OpenChat().vocab_size()) __builtin_trap();
  }
}

// The template renderer over parsed messages, as the server calls it.
void CheckRender(const std::vector<starling::ChatMessage>& messages, bool generation_prompt) {
  for (const std::string_view name : starling::ChatTemplate::Names()) {
    try {
      const starling::RenderedChat chat =
          starling::ChatTemplate::ByName(name).Render(OpenChat(), messages, generation_prompt);
      if (chat.ids.empty() || chat.assistant.size() != chat.ids.size()) __builtin_trap();
      CheckIds(chat.ids);
      // The server decodes what it generates after these ids; the ids themselves must too.
      OpenChat().Decode(chat.ids);
    } catch (const starling::Error&) {
      // A role out of order and the like: the server's 400.
    }
  }
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
    CheckRender(r.messages, /*generation_prompt=*/true);
  });
  Try([&] {
    const starling::CompletionRequest r = starling::ParseCompletionRequest(body);
    CheckSampling(r);
    CheckText(r.model, r.prompt);
    CheckIds(OpenChat().Encode(r.prompt, {.add_bos = true}));
  });
  Try([&] {
    const starling::TokenizeRequest r = starling::ParseTokenizeRequest(body);
    CheckText("", r.content);
    CheckIds(OpenChat().Encode(r.content, {.add_bos = false, .parse_special = false}));
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
    for (const auto& conversation : r.conversations) {
      CheckMessages(conversation);
      CheckRender(conversation, /*generation_prompt=*/false);
    }
  });
  return 0;
}
