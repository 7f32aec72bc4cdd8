// The OpenAI-compatible server's request parsers (values, defaults, and a 400 naming the field
// for each kind of bad input) and response builders (exact JSON, SSE framing).
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "server/openai_api.h"

namespace starling {
namespace {

using Json = nlohmann::json;

// Runs `parse` and returns the ApiError it throws; fails the test if it throws nothing.
ApiError ErrorOf(const std::function<void()>& parse) {
  try {
    parse();
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no ApiError";
  return ApiError(0, "", "");
}

void ExpectChatError(const std::string& body, const std::string& param) {
  SCOPED_TRACE(body);
  const ApiError e = ErrorOf([&] { ParseChatCompletionRequest(body); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.param, param) << e.what();
}

// A valid chat body with one field added (or replaced).
std::string ChatWith(const std::string& field) {
  return R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], )" + field + "}";
}

TEST(OpenAiApi, ChatDefaults) {
  const ChatCompletionRequest r =
      ParseChatCompletionRequest(R"({"messages": [{"role": "user", "content": "Hello"}]})");
  EXPECT_EQ(r.model, "");
  EXPECT_EQ(r.temperature, 1.0f);
  EXPECT_EQ(r.top_p, 1.0f);
  EXPECT_EQ(r.max_tokens, -1);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "Hello");
}

TEST(OpenAiApi, ChatAllFields) {
  const ChatCompletionRequest r = ParseChatCompletionRequest(R"({
    "model": "starling-lm",
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": ""},
                 {"role": "user", "content": "caf\u00e9"}],
    "temperature": 0, "top_p": 0.5, "max_tokens": 16, "stop": ["\n", "User:"],
    "seed": 18446744073709551615, "stream": true, "stream_options": {"include_usage": true},
    "n": 1, "presence_penalty": 0.5, "logit_bias": {"1": 2}, "user": "x", "tools": null,
    "frequency_penalty": null})");
  EXPECT_EQ(r.model, "starling-lm");
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_p, 0.5f);
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "User:"}));
  ASSERT_TRUE(r.seed.has_value());
  EXPECT_EQ(*r.seed, 18446744073709551615ull);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[3].content, "caf\xc3\xa9");
}

TEST(OpenAiApi, ChatAliasesNullsAndDuplicates) {
  ChatCompletionRequest r = ParseChatCompletionRequest(ChatWith(R"("max_completion_tokens": 7)"));
  EXPECT_EQ(r.max_tokens, 7);
  // Both given: max_completion_tokens, the newer name, wins.
  r = ParseChatCompletionRequest(ChatWith(R"("max_tokens": 3, "max_completion_tokens": 7)"));
  EXPECT_EQ(r.max_tokens, 7);
  r = ParseChatCompletionRequest(ChatWith(R"("stop": "END")"));
  EXPECT_EQ(r.stop, std::vector<std::string>{"END"});
  r = ParseChatCompletionRequest(ChatWith(R"("stop": [])"));
  EXPECT_TRUE(r.stop.empty());
  // null is "not given".
  r = ParseChatCompletionRequest(ChatWith(
      R"("max_tokens": null, "stop": null, "seed": null, "temperature": null, "stream": null,
         "stream_options": null, "n": null, "model": null)"));
  EXPECT_EQ(r.max_tokens, -1);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_EQ(r.temperature, 1.0f);
  EXPECT_EQ(r.model, "");
  // Integral numbers in float fields; the edges of the ranges.
  r = ParseChatCompletionRequest(ChatWith(R"("temperature": 2, "top_p": 1, "seed": 0)"));
  EXPECT_EQ(r.temperature, 2.0f);
  EXPECT_EQ(r.top_p, 1.0f);
  EXPECT_EQ(r.seed, 0u);
  EXPECT_EQ(r.n, 1);
  r = ParseChatCompletionRequest(ChatWith(R"("seed": -0, "max_tokens": 1048576, "n": 128)"));
  EXPECT_EQ(r.n, kMaxChoices);
  EXPECT_EQ(r.seed, 0u);
  EXPECT_EQ(r.max_tokens, kMaxTokensLimit);
  // A repeated key keeps its last value, as in Python.
  r = ParseChatCompletionRequest(ChatWith(R"("max_tokens": 3, "max_tokens": 5)"));
  EXPECT_EQ(r.max_tokens, 5);
}

TEST(OpenAiApi, ChatContentParts) {
  const ChatCompletionRequest r = ParseChatCompletionRequest(R"({"messages": [
    {"role": "user", "content": [{"type": "text", "text": "Hello, "},
                                 {"type": "text", "text": "world"}]},
    {"role": "assistant", "content": []}]})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].content, "Hello, world");
  EXPECT_EQ(r.messages[1].content, "");
  ExpectChatError(R"({"messages": [{"role": "user", "content": [
    {"type": "text", "text": "a"},
    {"type": "image_url", "image_url": {"url": "http://x"}}]}]})",
                  "messages[0].content[1].type");
  ExpectChatError(R"({"messages": [{"role": "user", "content": ["text"]}]})",
                  "messages[0].content[0]");
  ExpectChatError(R"({"messages": [{"role": "user", "content": [{"text": "a"}]}]})",
                  "messages[0].content[0].type");
  ExpectChatError(R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
                  "messages[0].content[0].text");
  ExpectChatError(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})",
                  "messages[0].content[0].text");
}

TEST(OpenAiApi, ChatBadBodies) {
  for (const char* body : {"", "{", "not json", "{\"messages\": [}", "{\"a\": 1} x", "[1, 2]",
                           "\"text\"", "null", "42"}) {
    ExpectChatError(body, "");
  }
  // Raw NUL and too-deep nesting: ParseStrictJson's refusals become 400s.
  ExpectChatError(std::string("{\"messages\": []}\0", 17), "");
  ExpectChatError(std::string(100, '[') + std::string(100, ']'), "");
  // nlohmann refuses a float that overflows a double, so no infinity reaches the checks.
  ExpectChatError(ChatWith(R"("temperature": 1e999)"), "");
  const ApiError e = ErrorOf([] { ParseChatCompletionRequest("{"); });
  EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
}

TEST(OpenAiApi, ChatBadMessages) {
  ExpectChatError(R"({"model": "m"})", "messages");
  ExpectChatError(R"({"messages": null})", "messages");
  ExpectChatError(R"({"messages": []})", "messages");
  ExpectChatError(R"({"messages": "hi"})", "messages");
  ExpectChatError(R"({"messages": {"role": "user", "content": "hi"}})", "messages");
  ExpectChatError(R"({"messages": ["hi"]})", "messages[0]");
  ExpectChatError(R"({"messages": [{"content": "hi"}]})", "messages[0].role");
  ExpectChatError(R"({"messages": [{"role": 1, "content": "hi"}]})", "messages[0].role");
  ExpectChatError(R"({"messages": [{"role": "user", "content": "a"},
                                   {"role": "tool", "content": "b"}]})",
                  "messages[1].role");
  ExpectChatError(R"({"messages": [{"role": "User", "content": "a"}]})", "messages[0].role");
  ExpectChatError(R"({"messages": [{"role": "user"}]})", "messages[0].content");
  ExpectChatError(R"({"messages": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"},
                                   {"role": "user", "content": 3}]})",
                  "messages[2].content");
  ExpectChatError(R"({"messages": [{"role": "user", "content": {"text": "a"}}]})",
                  "messages[0].content");
  ExpectChatError(R"({"messages": [{"role": "user", "content": null}]})", "messages[0].content");
}

TEST(OpenAiApi, ChatBadSampling) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("model": 5)", "model"},
      {R"("temperature": "0.7")", "temperature"},
      {R"("temperature": -0.1)", "temperature"},
      {R"("temperature": 2.01)", "temperature"},
      {R"("temperature": true)", "temperature"},
      {R"("top_p": 0)", "top_p"},
      {R"("top_p": -1)", "top_p"},
      {R"("top_p": 1.5)", "top_p"},
      {R"("top_p": [1])", "top_p"},
      {R"("max_tokens": 3.5)", "max_tokens"},
      {R"("max_tokens": 3.0)", "max_tokens"},
      {R"("max_tokens": "16")", "max_tokens"},
      {R"("max_tokens": 0)", "max_tokens"},
      {R"("max_tokens": -1)", "max_tokens"},
      {R"("max_tokens": 1048577)", "max_tokens"},
      {R"("max_tokens": 18446744073709551615)", "max_tokens"},
      {R"("max_tokens": 99999999999999999999999)", "max_tokens"},
      {R"("max_tokens": -9223372036854775808)", "max_tokens"},
      {R"("max_completion_tokens": 0)", "max_completion_tokens"},
      {R"("stop": 5)", "stop"},
      {R"("stop": "")", "stop"},
      {R"("stop": ["a", "b", "c", "d", "e"])", "stop"},
      {R"("stop": ["a", 1])", "stop[1]"},
      {R"("stop": ["a", ""])", "stop[1]"},
      {R"("seed": -1)", "seed"},
      {R"("seed": 1.5)", "seed"},
      {R"("seed": "42")", "seed"},
      {R"("seed": 18446744073709551616)", "seed"},
      {R"("stream": "yes")", "stream"},
      {R"("stream": 1)", "stream"},
      {R"("stream_options": true)", "stream_options"},
      {R"("stream_options": {"include_usage": "true"})", "stream_options.include_usage"},
      {R"("n": 129)", "n"},
      {R"("n": 0)", "n"},
      {R"("n": 1.0)", "n"},
      {R"("frequency_penalty": 2.5)", "frequency_penalty"},
      {R"("frequency_penalty": "1")", "frequency_penalty"},
      {R"("presence_penalty": -2.01)", "presence_penalty"},
      {R"("logit_bias": [1])", "logit_bias"},
      {R"("logit_bias": {"x": 1})", "logit_bias"},
      {R"("logit_bias": {"-1": 1})", "logit_bias"},
      {R"("logit_bias": {"01": 1})", "logit_bias"},
      {R"("logit_bias": {"2147483648": 1})", "logit_bias"},
      {R"("logit_bias": {"5": 101})", "logit_bias.5"},
      {R"("logit_bias": {"5": "1"})", "logit_bias.5"},
      {R"("logprobs": 1)", "logprobs"},
      {R"("logprobs": true, "top_logprobs": 21)", "top_logprobs"},
      {R"("logprobs": true, "top_logprobs": -1)", "top_logprobs"},
      {R"("top_logprobs": 2)", "top_logprobs"},
      {R"("logprobs": false, "top_logprobs": 2)", "top_logprobs"},
      {R"("response_format": {"type": "json_object"})", "response_format"},
      {R"("response_format": "text")", "response_format"},
      {R"("stream_options": {"include_usage": true, "chunk_size": 3})",
       "stream_options.chunk_size"},
  };
  for (const auto& [field, param] : cases) ExpectChatError(ChatWith(field), param);
}

// A field that is not implemented is refused by name, never dropped without a word; the
// documented ignored ones and nulls pass.
TEST(OpenAiApi, UnimplementedFieldsAreRefusedByName) {
  for (const char* field :
       {"tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction",
        "reasoning_effort", "top_k", "min_p", "repeat_penalty", "echo", "best_of", "suffix"}) {
    SCOPED_TRACE(field);
    ExpectChatError(ChatWith(Concat("\"", field, "\": 1")), field);
  }
  ExpectChatError(R"({"messages": [{"role": "user", "content": "a", "tool_calls": []}]})",
                  "messages[0].tool_calls");
  ExpectChatError(
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]})",
      "messages[0].content[0].x");
  const ChatCompletionRequest r = ParseChatCompletionRequest(ChatWith(
      R"("user": "u", "metadata": {"a": "b"}, "store": false, "service_tier": "auto",
         "parallel_tool_calls": true, "prompt_cache_key": "k", "safety_identifier": "s",
         "tools": null, "response_format": {"type": "text"},
         "messages": [{"role": "user", "content": "hi", "name": "Ann"}])"));
  EXPECT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.logprobs, -1);
  // The error names the field, bounded and printable whatever the client sent.
  const ApiError e = ErrorOf(
      [] { ParseChatCompletionRequest(ChatWith("\"" + std::string(1000, 'k') + "\x01\": 1")); });
  EXPECT_LT(e.param.size(), 80u);
  EXPECT_EQ(e.param.find('\x01'), std::string::npos);
}

TEST(OpenAiApi, PenaltiesBiasAndLogprobs) {
  ChatCompletionRequest r = ParseChatCompletionRequest(ChatWith(
      R"("frequency_penalty": 0.5, "presence_penalty": -2, "logit_bias": {"7": -100, "0": 2.5,
         "7": 100}, "logprobs": true, "top_logprobs": 20)"));
  EXPECT_EQ(r.frequency_penalty, 0.5f);
  EXPECT_EQ(r.presence_penalty, -2.0f);
  // A repeated key keeps its last value, here as everywhere.
  EXPECT_EQ(r.logit_bias, (std::vector<std::pair<int32_t, float>>{{0, 2.5f}, {7, 100.0f}}));
  EXPECT_EQ(r.logprobs, 20);
  r = ParseChatCompletionRequest(ChatWith(R"("logprobs": true, "logit_bias": {})"));
  EXPECT_EQ(r.logprobs, 0);
  EXPECT_TRUE(r.logit_bias.empty());
  r = ParseChatCompletionRequest(ChatWith(R"("logprobs": false)"));
  EXPECT_EQ(r.logprobs, -1);

  CompletionRequest c = ParseCompletionRequest(R"({"prompt": "a", "logprobs": 5, "echo": false,
    "best_of": 1, "suffix": "", "frequency_penalty": 1})");
  EXPECT_EQ(c.logprobs, 5);
  EXPECT_EQ(c.frequency_penalty, 1.0f);
  c = ParseCompletionRequest(R"({"prompt": "a", "logprobs": 0, "n": 3, "best_of": 3})");
  EXPECT_EQ(c.logprobs, 0);
  EXPECT_EQ(c.n, 3);
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"prompt": "a", "logprobs": true})", "logprobs"},
           {R"({"prompt": "a", "logprobs": 21})", "logprobs"},
           {R"({"prompt": "a", "echo": true})", "echo"},
           {R"({"prompt": "a", "best_of": 2})", "best_of"},
           {R"({"prompt": "a", "n": 2, "best_of": 3})", "best_of"},
           {R"({"prompt": "a", "suffix": "x"})", "suffix"},
           {R"({"prompt": "a", "top_logprobs": 1})", "top_logprobs"}}) {
    SCOPED_TRACE(body);
    EXPECT_EQ(ErrorOf([&] { ParseCompletionRequest(body); }).param, param);
  }
}

TEST(OpenAiApi, LogprobsShapes) {
  // A byte token's text is one byte of a character: "bytes" keeps it; the JSON text cannot.
  const std::vector<TokenLogprob> tokens = {
      {.token = " Hi", .logprob = -0.25, .top = {{" Hi", -0.25}, {" Hello", -1.5}}},
      {.token = "\xe2", .logprob = -std::numeric_limits<double>::infinity(), .top = {}}};
  // As the server sends them (DumpJson): the lone byte becomes U+FFFD in "token".
  EXPECT_EQ(Json::parse(DumpJson(ChatLogprobs(tokens))), Json::parse(R"({"content": [
      {"token": " Hi", "logprob": -0.25, "bytes": [32, 72, 105],
       "top_logprobs": [{"token": " Hi", "logprob": -0.25, "bytes": [32, 72, 105]},
                        {"token": " Hello", "logprob": -1.5, "bytes": [32, 72, 101, 108, 108, 111]}]},
      {"token": "\ufffd", "logprob": -9999.0, "bytes": [226], "top_logprobs": []}],
      "refusal": null})"));
  EXPECT_EQ(Json::parse(DumpJson(CompletionLogprobs(tokens, 10))), Json::parse(R"({
      "tokens": [" Hi", "\ufffd"], "token_logprobs": [-0.25, -9999.0],
      "top_logprobs": [{" Hi": -0.25, " Hello": -1.5}, {}], "text_offset": [10, 13]})"));
  EXPECT_EQ(ChatCompletionResponse("c", "m", 1, "x", "stop", {1, 1},
                                   ChatLogprobs({}))["choices"][0]["logprobs"],
            Json::parse(R"({"content": [], "refusal": null})"));
}

TEST(OpenAiApi, Completions) {
  CompletionRequest r = ParseCompletionRequest(R"({"model": "m", "prompt": "Once upon",
    "max_tokens": 32, "temperature": 0.2, "echo": false, "stream": true})");
  EXPECT_EQ(r.prompt, "Once upon");
  EXPECT_EQ(r.max_tokens, 32);
  EXPECT_EQ(r.temperature, 0.2f);
  EXPECT_TRUE(r.stream);
  r = ParseCompletionRequest(R"({"prompt": ["only one"]})");
  EXPECT_EQ(r.prompt, "only one");
  EXPECT_EQ(r.top_p, 1.0f);
  r = ParseCompletionRequest(R"({"prompt": ""})");
  EXPECT_EQ(r.prompt, "");
  auto expect_error = [](const std::string& body, const std::string& param) {
    SCOPED_TRACE(body);
    const ApiError e = ErrorOf([&] { ParseCompletionRequest(body); });
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, param) << e.what();
  };
  expect_error(R"({"model": "m"})", "prompt");
  expect_error(R"({"prompt": null})", "prompt");
  expect_error(R"({"prompt": 5})", "prompt");
  expect_error(R"({"prompt": [1, 2, 3]})", "prompt");
  expect_error(R"({"prompt": [[1, 2], [3]]})", "prompt");
  expect_error(R"({"prompt": ["a", "b"]})", "prompt");
  expect_error(R"({"prompt": []})", "prompt");
  expect_error(R"({"prompt": "a", "max_tokens": -5})", "max_tokens");
  expect_error(R"({"prompt": "a", "top_p": 0})", "top_p");
  expect_error("[]", "");
}

TEST(OpenAiApi, TokenizeAndDetokenize) {
  TokenizeRequest t = ParseTokenizeRequest(R"({"content": "Hello world"})");
  EXPECT_EQ(t.content, "Hello world");
  EXPECT_TRUE(t.add_special);
  t = ParseTokenizeRequest(R"({"content": "", "add_special": false, "with_pieces": null})");
  EXPECT_EQ(t.content, "");
  EXPECT_FALSE(t.add_special);
  // llama.cpp's with_pieces is not implemented: refused by name, not ignored.
  EXPECT_EQ(ErrorOf([] { ParseTokenizeRequest(R"({"content": "a", "with_pieces": true})"); }).param,
            "with_pieces");
  EXPECT_EQ(ErrorOf([] { ParseTokenizeRequest("{}"); }).param, "content");
  EXPECT_EQ(ErrorOf([] { ParseTokenizeRequest(R"({"content": [1]})"); }).param, "content");
  EXPECT_EQ(ErrorOf([] { ParseTokenizeRequest(R"({"content": "a", "add_special": 1})"); }).param,
            "add_special");

  DetokenizeRequest d = ParseDetokenizeRequest(R"({"tokens": [1, 22, 0, 2147483647]})");
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{1, 22, 0, 2147483647}));
  d = ParseDetokenizeRequest(R"({"tokens": []})");
  EXPECT_TRUE(d.tokens.empty());
  EXPECT_EQ(ErrorOf([] { ParseDetokenizeRequest("{}"); }).param, "tokens");
  EXPECT_EQ(ErrorOf([] { ParseDetokenizeRequest(R"({"tokens": "1 2"})"); }).param, "tokens");
  EXPECT_EQ(ErrorOf([] { ParseDetokenizeRequest(R"({"tokens": [1, -1]})"); }).param, "tokens[1]");
  EXPECT_EQ(ErrorOf([] { ParseDetokenizeRequest(R"({"tokens": [1.5]})"); }).param, "tokens[0]");
  EXPECT_EQ(ErrorOf([] { ParseDetokenizeRequest(R"({"tokens": [2147483648]})"); }).param,
            "tokens[0]");
  EXPECT_EQ(ErrorOf([] { ParseDetokenizeRequest(R"({"tokens": ["a"]})"); }).param, "tokens[0]");
}

TEST(OpenAiApi, Rewards) {
  RewardsRequest r = ParseRewardsRequest(R"({"model": "rm", "conversations": [
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"}],
    [{"role": "user", "content": "Q"},
     {"role": "assistant", "content": [{"type": "text", "text": "A2"}]}]]})");
  EXPECT_EQ(r.model, "rm");
  ASSERT_EQ(r.conversations.size(), 2u);
  ASSERT_EQ(r.conversations[1].size(), 2u);
  EXPECT_EQ(r.conversations[1][1].role, "assistant");
  EXPECT_EQ(r.conversations[1][1].content, "A2");
  r = ParseRewardsRequest(R"({"messages": [{"role": "user", "content": "Q"}]})");
  EXPECT_EQ(r.model, "");
  ASSERT_EQ(r.conversations.size(), 1u);
  EXPECT_EQ(r.conversations[0][0].content, "Q");
  auto param_of = [](const std::string& body) {
    return ErrorOf([&] { ParseRewardsRequest(body); }).param;
  };
  EXPECT_EQ(param_of("{}"), "conversations");
  EXPECT_EQ(param_of(R"({"conversations": []})"), "conversations");
  EXPECT_EQ(param_of(R"({"conversations": {}})"), "conversations");
  EXPECT_EQ(param_of(R"({"conversations": [[]]})"), "conversations[0]");
  EXPECT_EQ(param_of(R"({"conversations": [[{"role": "user", "content": "a"}],
                                          [{"role": "bot", "content": "b"}]]})"),
            "conversations[1][0].role");
  EXPECT_EQ(param_of(R"({"conversations": [[{"role": "user", "content": 1}]]})"),
            "conversations[0][0].content");
  EXPECT_EQ(param_of(R"({"messages": []})"), "messages");
  EXPECT_EQ(param_of(R"({"messages": [{"role": "user", "content": "a"}],
                        "conversations": [[{"role": "user", "content": "a"}]]})"),
            "messages");
  EXPECT_EQ(param_of(R"({"model": 1, "messages": [{"role": "user", "content": "a"}]})"), "model");
}

TEST(OpenAiApi, ErrorBody) {
  EXPECT_EQ(ErrorBody(ApiError(400, "invalid_request_error", "max_tokens must be an integer",
                               "max_tokens")),
            R"({"error":{"code":null,"message":"max_tokens must be an integer",)"
            R"("param":"max_tokens","type":"invalid_request_error"}})");
  EXPECT_EQ(Json::parse(ErrorBody(
                ApiError(401, "authentication_error", "Incorrect API key", "", "invalid_api_key"))),
            Json::parse(R"({"error": {"message": "Incorrect API key", "type":
              "authentication_error", "param": null, "code": "invalid_api_key"}})"));
  // A message carrying invalid UTF-8 still renders.
  const std::string body = ErrorBody(ApiError(500, "server_error", "bad \xff byte"));
  EXPECT_EQ(Json::parse(body)["error"]["message"], "bad \xef\xbf\xbd byte");
  // The parsers' messages name the field.
  const ApiError e = ErrorOf([] { ParseChatCompletionRequest(ChatWith(R"("stream": "yes")")); });
  EXPECT_EQ(std::string(e.what()), "stream must be a boolean, got string");
}

TEST(OpenAiApi, ChatResponses) {
  EXPECT_EQ(
      ChatCompletionResponse("chatcmpl-1", "starling", 1700000000, "Hi there", "stop", {5, 2}),
      Json::parse(R"({
              "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
              "model": "starling",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                           "logprobs": null, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})"));
  EXPECT_EQ(ChatCompletionChunk("c", "m", 7, "assistant", "", std::nullopt), Json::parse(R"({
              "id": "c", "object": "chat.completion.chunk", "created": 7, "model": "m",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                           "logprobs": null, "finish_reason": null}]})"));
  EXPECT_EQ(ChatCompletionChunk("c", "m", 7, std::nullopt, "lo", std::nullopt), Json::parse(R"({
              "id": "c", "object": "chat.completion.chunk", "created": 7, "model": "m",
              "choices": [{"index": 0, "delta": {"content": "lo"},
                           "logprobs": null, "finish_reason": null}]})"));
  EXPECT_EQ(ChatCompletionChunk("c", "m", 7, std::nullopt, std::nullopt, "length"), Json::parse(R"({
              "id": "c", "object": "chat.completion.chunk", "created": 7, "model": "m",
              "choices": [{"index": 0, "delta": {}, "logprobs": null,
                           "finish_reason": "length"}]})"));
  EXPECT_EQ(UsageChunk("c", "m", 7, {3, 4}), Json::parse(R"({
              "id": "c", "object": "chat.completion.chunk", "created": 7, "model": "m",
              "choices": [],
              "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})"));
  EXPECT_EQ(UsageChunk("c", "m", 7, {3, 4}, "text_completion")["object"], "text_completion");
}

TEST(OpenAiApi, CompletionResponsesAndModels) {
  EXPECT_EQ(CompletionResponse("cmpl-1", "m", 9, " a time", "length", {2, 16}), Json::parse(R"({
              "id": "cmpl-1", "object": "text_completion", "created": 9, "model": "m",
              "choices": [{"text": " a time", "index": 0, "logprobs": null,
                           "finish_reason": "length"}],
              "usage": {"prompt_tokens": 2, "completion_tokens": 16, "total_tokens": 18}})"));
  EXPECT_EQ(CompletionChunk("cmpl-1", "m", 9, " a", std::nullopt), Json::parse(R"({
              "id": "cmpl-1", "object": "text_completion", "created": 9, "model": "m",
              "choices": [{"text": " a", "index": 0, "logprobs": null,
                           "finish_reason": null}]})"));
  EXPECT_EQ(CompletionChunk("cmpl-1", "m", 9, "", "stop")["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(ModelsList({"starling-lm", "starling-rm"}, 11), Json::parse(R"({
              "object": "list", "data": [
                {"id": "starling-lm", "object": "model", "created": 11, "owned_by": "starling"},
                {"id": "starling-rm", "object": "model", "created": 11, "owned_by": "starling"}
              ]})"));
  EXPECT_EQ(ModelsList({}, 11), Json::parse(R"({"object": "list", "data": []})"));
  // n choices, in order; chunks name theirs.
  const Json two = ChatCompletionResponse(
      "c", "m", 1, {{"a", "stop", nullptr}, {"b", "length", nullptr}}, {3, 5});
  ASSERT_EQ(two["choices"].size(), 2u);
  EXPECT_EQ(two["choices"][1], Json::parse(R"({"index": 1, "message": {"role": "assistant",
      "content": "b"}, "logprobs": null, "finish_reason": "length"})"));
  EXPECT_EQ(CompletionResponse("c", "m", 1, {{"a", "stop", nullptr}, {"b", "stop", nullptr}},
                               {3, 5})["choices"][1]["text"],
            "b");
  EXPECT_EQ(CompletionChunk("c", "m", 1, "x", std::nullopt, nullptr, 4)["choices"][0]["index"], 4);
  EXPECT_EQ(ChatCompletionChunk("c", "m", 1, std::nullopt, "x", std::nullopt, nullptr,
                                2)["choices"][0]["index"],
            2);
}

TEST(OpenAiApi, SseFraming) {
  EXPECT_EQ(SseEvent(Json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(SseDone(), "data: [DONE]\n\n");
  // Generated text cut inside a UTF-8 sequence: replaced, never thrown.
  const std::string event =
      SseEvent(ChatCompletionChunk("c", "m", 1, std::nullopt, "caf\xc3", std::nullopt));
  ASSERT_EQ(event.substr(0, 6), "data: ");
  ASSERT_EQ(event.substr(event.size() - 2), "\n\n");
  EXPECT_EQ(event.find('\n'), event.size() - 2);  // one line of JSON: newlines are escaped
  const Json parsed = Json::parse(event.substr(6, event.size() - 8));
  EXPECT_EQ(parsed["choices"][0]["delta"]["content"], "caf\xef\xbf\xbd");
  const std::string newline = SseEvent(CompletionChunk("c", "m", 1, "a\nb\n\n", std::nullopt));
  EXPECT_EQ(newline.find('\n'), newline.size() - 2);
}

}  // namespace
}  // namespace starling
