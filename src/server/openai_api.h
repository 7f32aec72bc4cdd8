// The request/response layer of the OpenAI-compatible HTTP server, as pure functions: request
// bodies (untrusted bytes) -> typed requests, and typed results -> OpenAI's response JSON and
// server-sent events. No networking, no model: the server glues these to generation.
//
// Every parser throws ApiError(400, "invalid_request_error", message, param) where `param`
// names the offending field the way OpenAI does ("max_tokens", "messages[2].content"). A field
// this server does not implement is refused with a 400 naming it, except the few that change
// nothing here and are documented as ignored (kIgnoredFields); a field set to null counts as
// not given, and a repeated key keeps its last value (as Python's json.loads does).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/chat_template.h"

namespace starling {

// An error with an HTTP status, rendered by ErrorBody as OpenAI's error JSON. `type` is
// "invalid_request_error" (400/404/413), "authentication_error" (401), "server_error"
// (500/503), ...; `param` and `code` may be empty (rendered as null).
struct ApiError : std::runtime_error {
  ApiError(int status_, std::string type_, const std::string& message, std::string param_ = {},
           std::string code_ = {})
      : std::runtime_error(message),
        status(status_),
        type(std::move(type_)),
        param(std::move(param_)),
        code(std::move(code_)) {}

  int status;
  std::string type;
  std::string param;
  std::string code;
};

// {"error": {"message", "type", "param" (null if empty), "code" (null if empty)}}.
nlohmann::json ErrorJson(const ApiError& error);
std::string ErrorBody(const ApiError& error);

inline constexpr int32_t kMaxTokensLimit = 1 << 20;
inline constexpr size_t kMaxStopStrings = 4;
inline constexpr int32_t kMaxTopLogprobs = 20;  // OpenAI's limit for chat's top_logprobs
inline constexpr int32_t kMaxChoices = 128;     // "n"; the server also bounds it by its slots
inline constexpr float kMaxLogitBias = 100.0f;  // |bias|, as OpenAI
// Fields accepted and ignored, as they change nothing here: "user", "metadata", "store",
// "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier" (both
// endpoints) and a message's "name". docs/SERVER.md lists them.
inline constexpr const char* kIgnoredFields[] = {"user",
                                                 "metadata",
                                                 "store",
                                                 "service_tier",
                                                 "parallel_tool_calls",
                                                 "prompt_cache_key",
                                                 "safety_identifier"};

// The sampling fields shared by /v1/chat/completions and /v1/completions, with OpenAI's
// defaults.
struct SamplingRequest {
  std::string model;         // may be empty
  float temperature = 1.0f;  // [0, 2]
  float top_p = 1.0f;        // (0, 1]
  int32_t max_tokens = -1;   // -1: not given; else 1 .. kMaxTokensLimit. "max_completion_tokens"
                             // is an alias and wins when both are given.
  std::vector<std::string> stop;  // "stop": a string or a list of up to 4, each non-empty
  std::optional<uint64_t> seed;   // an integer >= 0
  int32_t n = 1;                  // choices: 1 .. kMaxChoices
  bool stream = false;
  bool include_usage = false;      // stream_options.include_usage
  float frequency_penalty = 0.0f;  // [-2, 2]
  float presence_penalty = 0.0f;   // [-2, 2]
  // "logit_bias": {"token id": bias}: ids 0 .. INT32_MAX (the vocabulary bound is the caller's
  // to check), biases in [-100, 100]; in the order given, a repeated id keeps its last bias.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // -1: no log-probabilities; else each generated token's and its `logprobs` most likely
  // alternatives (0 .. kMaxTopLogprobs). Chat: "logprobs": true and "top_logprobs" (default
  // 0); completions: "logprobs": an integer.
  int32_t logprobs = -1;
};

struct ChatCompletionRequest : SamplingRequest {
  // Non-empty; roles system/user/assistant; content a string or a list of {"type": "text",
  // "text": ...} parts, concatenated. Content may be empty.
  std::vector<ChatMessage> messages;
};

struct CompletionRequest : SamplingRequest {
  std::string prompt;  // a string, or a list of exactly one string; token-id prompts refused
};

// llama.cpp's /tokenize: {"content": "...", "add_special": bool}.
struct TokenizeRequest {
  std::string content;
  bool add_special = true;
};

// llama.cpp's /detokenize: {"tokens": [ints]}; ids are 0 .. INT32_MAX here (the vocabulary
// bound is the caller's to check).
struct DetokenizeRequest {
  std::vector<int32_t> tokens;
};

// /v1/rewards: {"model"?: str, "conversations": [[{"role", "content"}, ...], ...]}, or
// {"messages": [...]} for a single conversation (not both). Each conversation is non-empty and
// has a user or assistant message.
struct RewardsRequest {
  std::string model;
  std::vector<std::vector<ChatMessage>> conversations;
};

ChatCompletionRequest ParseChatCompletionRequest(std::string_view body);
CompletionRequest ParseCompletionRequest(std::string_view body);
TokenizeRequest ParseTokenizeRequest(std::string_view body);
DetokenizeRequest ParseDetokenizeRequest(std::string_view body);
RewardsRequest ParseRewardsRequest(std::string_view body);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// One generated token's log-probability and its most likely alternatives (most likely first).
struct TokenLogprob {
  std::string token;  // the token's text: its bytes, which need not be whole UTF-8 characters
  double logprob = 0;
  std::vector<std::pair<std::string, double>> top;
};

// Chat's "logprobs" object: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
// "logprob", "bytes"}]}], "refusal": null}. A non-finite log-probability is written -9999.
nlohmann::json ChatLogprobs(const std::vector<TokenLogprob>& tokens);
// The legacy completions "logprobs" object: {"tokens", "token_logprobs", "top_logprobs" (one
// {token: logprob} object per token; of tokens with the same text, the likelier), "text_offset"}.
// Offsets count bytes of the tokens' texts from `text_offset` (where an earlier chunk ended).
nlohmann::json CompletionLogprobs(const std::vector<TokenLogprob>& tokens, size_t text_offset);

// One choice of a response: its text (chat: the message's content), finish_reason ("stop" or
// "length") and "logprobs" (null unless asked for).
struct Choice {
  std::string text;
  std::string finish_reason;
  nlohmann::json logprobs;
};

// Responses with choices 0, 1, ... in order.
nlohmann::json ChatCompletionResponse(const std::string& id, const std::string& model,
                                      int64_t created, const std::vector<Choice>& choices,
                                      Usage usage);
nlohmann::json CompletionResponse(const std::string& id, const std::string& model, int64_t created,
                                  const std::vector<Choice>& choices, Usage usage);

// Single-choice response builders. `id` and `created` (Unix seconds) come from the caller;
// finish_reason is "stop" or "length". A choice's "logprobs" is `logprobs` (null unless asked
// for). Chunks name their choice by `index`.
nlohmann::json ChatCompletionResponse(const std::string& id, const std::string& model,
                                      int64_t created, const std::string& content,
                                      const std::string& finish_reason, Usage usage,
                                      nlohmann::json logprobs = nullptr);
// object "chat.completion.chunk"; choices[0].delta holds role and content when given;
// finish_reason is null until the last chunk.
nlohmann::json ChatCompletionChunk(const std::string& id, const std::string& model, int64_t created,
                                   const std::optional<std::string>& role,
                                   const std::optional<std::string>& content,
                                   const std::optional<std::string>& finish_reason,
                                   nlohmann::json logprobs = nullptr, int64_t index = 0);
// The final chunk for stream_options.include_usage: "choices": [] and "usage". `object` is
// "chat.completion.chunk" for chat and "text_completion" for completions.
nlohmann::json UsageChunk(const std::string& id, const std::string& model, int64_t created,
                          Usage usage, const std::string& object = "chat.completion.chunk");
// object "text_completion"; choices[0].text.
nlohmann::json CompletionResponse(const std::string& id, const std::string& model, int64_t created,
                                  const std::string& text, const std::string& finish_reason,
                                  Usage usage, nlohmann::json logprobs = nullptr);
nlohmann::json CompletionChunk(const std::string& id, const std::string& model, int64_t created,
                               const std::string& text,
                               const std::optional<std::string>& finish_reason,
                               nlohmann::json logprobs = nullptr, int64_t index = 0);
// {"id", "object": "model", "created", "owned_by": "starling"}.
nlohmann::json ModelObject(const std::string& id, int64_t created);
// {"object": "list", "data": [ModelObject...]}.
nlohmann::json ModelsList(const std::vector<std::string>& ids, int64_t created);

// Compact JSON text; invalid UTF-8 (generated text cut mid-character) becomes U+FFFD instead of
// throwing.
std::string DumpJson(const nlohmann::json& j);
// Server-sent events: "data: <json>\n\n", and the stream's end "data: [DONE]\n\n".
std::string SseEvent(const nlohmann::json& j);
std::string SseDone();

}  // namespace starling
