// `starling serve`: the OpenAI-compatible server (src/server), thin.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "commands.h"
#include "core/error.h"
#include "embedded_model.h"
#include "hub/hf_cache.h"
#include "reward/reward.h"
#include "server/server.h"

namespace starling::cli {
namespace {

// Printable ASCII or UTF-8, without spaces or control characters.
bool IsModelId(const std::string& id) {
  return !id.empty() && std::none_of(id.begin(), id.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= ' ' || u == 0x7f;
  });
}

// A model's name as an id: each run of spaces or control characters becomes one '-'
// ("My Model.gguf" -> "My-Model.gguf").
std::string WithoutSpaces(std::string_view name) {
  std::string id;
  bool gap = false;
  for (const char c : name) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      gap = !id.empty();
      continue;
    }
    if (gap) id += '-';
    gap = false;
    id += c;
  }
  return id.empty() ? std::string("model") : id;
}

}  // namespace

void RegisterServe(CLI::App& app) {
  auto o = std::make_shared<ServerOptions>();
  auto model = std::make_shared<std::string>();
  auto reward = std::make_shared<std::string>();
  auto max_body = std::make_shared<int64_t>(static_cast<int64_t>(o->max_body_bytes));
  auto alias = std::make_shared<std::string>();
  auto log_level = std::make_shared<std::string>("info");
  auto log_format = std::make_shared<std::string>("text");
  CLI::App* cmd = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server with batched streaming and a web chat page");
  cmd->add_option("-m,--model", *model,
                  "a Hugging Face directory, a GGUF file or a cached ORG/NAME (default: the "
                  "embedded tiny-chat)")
      ->check(NonEmpty());
  cmd->add_option("--rm", *reward, "a reward model directory: enables POST /v1/rewards")
      ->check(NonEmpty());
  cmd->add_option("--host", o->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "port (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1/*");
  cmd->add_option("--parallel", o->parallel,
                  "requests decoded together (slots; llama.cpp's -np works too)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--queue", o->queue, "requests that may wait for a slot before 503")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  cmd->add_option("-c,--ctx,--ctx-size", o->context,
                  "context length per slot in tokens: prompt and reply together")
      ->check(CLI::Range(16, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--template,--chat-template", o->template_name,
                  "chat template: openchat, openchat-code, llama-2 or raw (default: the model's "
                  "own, when it is a known one)");
  cmd->add_option("--max-body", *max_body,
                  "largest request body in bytes, as received and after inflation")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  cmd->add_option("--max-connections", o->max_connections,
                  "connections open at once; one more gets 503 at once")
      ->check(CLI::Range(1, 16384))
      ->capture_default_str();
  cmd->add_option("--read-timeout", o->read_timeout_seconds,
                  "seconds a client may take to send a request's headers, and may pause in a body")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  cmd->add_option("--allowed-host", o->allowed_hosts,
                  "a Host header name to accept beyond --host (and the loopback names on "
                  "loopback); '*' accepts any (behind a proxy that checks it)");
  cmd->add_option("--drain-timeout", o->drain_seconds,
                  "seconds that running requests may take to finish after SIGINT/SIGTERM")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  cmd->add_option("-a,--alias", *alias,
                  "the model's id in /v1/models and in responses (default: the model's name, "
                  "spaces removed)")
      ->check(NonEmpty());
  cmd->add_flag("--strict-model", o->strict_model,
                "refuse a request whose \"model\" is not the served id (404); by default any "
                "value is answered by the one model");
  cmd->add_option("--cors-origin", o->cors_origins,
                  "an origin (scheme://host[:port]) whose web pages may call the API: CORS "
                  "headers and preflights for it; repeat for more; '*' allows any");
  cmd->add_option("--log-level", *log_level, "error, warn, info (a line per request) or debug")
      ->check(CLI::IsMember({"error", "warn", "info", "debug"}))
      ->capture_default_str();
  cmd->add_option("--log-format", *log_format, "text, or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  AddThreadsOption(cmd);
  AddKvTypeOption(cmd, &o->kv_type);
  cmd->footer(
      "Examples:\n"
      "  starling serve -m Starling-LM-7B-alpha/ --port 8080 -np 8   # then open "
      "http://127.0.0.1:8080/\n"
      "  starling serve -m model.gguf --host 0.0.0.0 --api-key KEY --alias starling\n"
      "  starling serve --rm Starling-RM-7B-alpha/                   # + POST /v1/rewards\n"
      "The API, the logs and the flags in full: docs/SERVER.md.");
  cmd->callback([=] {
    ServerOptions options = *o;
    options.max_body_bytes = static_cast<size_t>(*max_body);
    options.log_level = *ParseLogLevel(*log_level);
    options.log_format = *log_format == "json" ? LogFormat::kJson : LogFormat::kText;
    for (std::string& origin : options.cors_origins) origin = NormalizeCorsOrigin(origin);
    if (!alias->empty() && (alias->size() > 256 || !IsModelId(*alias))) {
      Fail("--alias '", PrintableForError(*alias),
           "': a model id is 1 to 256 printable characters without spaces");
    }
    const LoadedModel loaded = LoadChatModelOrDefault(*model);
    CheckContext(loaded, options.context, options.parallel, options.kv_type);
    options.model_name =
        !alias->empty() ? *alias
        : model->empty()
            // "tiny-chat (embedded)" -> "tiny-chat"
            ? std::string(kEmbeddedChatModelName.substr(0, kEmbeddedChatModelName.find(' ')))
            : WithoutSpaces(ModelDisplayName(*model));
    std::optional<LoadedRewardModel> rm;
    if (!reward->empty()) {
      rm = LoadRewardModelAndTokenizer({.files = {.directory = *reward}});
      options.reward_model_name = ModelDisplayName(*reward);
    }
    Serve(loaded, rm ? &*rm : nullptr, options);
  });
}

}  // namespace starling::cli
