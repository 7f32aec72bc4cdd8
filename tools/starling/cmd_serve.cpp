// `starling serve`: the OpenAI-compatible server (src/server), thin.
#include <memory>
#include <optional>
#include <string>

#include "commands.h"
#include "embedded_model.h"
#include "hub/hf_cache.h"
#include "reward/reward.h"
#include "server/server.h"

namespace starling::cli {

void RegisterServe(CLI::App& app) {
  auto o = std::make_shared<ServerOptions>();
  auto model = std::make_shared<std::string>();
  auto reward = std::make_shared<std::string>();
  auto max_body = std::make_shared<int64_t>(static_cast<int64_t>(o->max_body_bytes));
  CLI::App* cmd = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server with batched streaming and a web chat page");
  cmd->add_option(
         "-m,--model", *model,
         "a Hugging Face directory, a GGUF file or a cached ORG/NAME (default: the embedded model)")
      ->check(NonEmpty());
  cmd->add_option("--rm", *reward, "a reward model directory: enables POST /v1/rewards")
      ->check(NonEmpty());
  cmd->add_option("--host", o->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "port (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1/*");
  cmd->add_option("--parallel", o->parallel, "requests decoded together (slots)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--queue", o->queue, "requests that may wait for a slot before 503")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  cmd->add_option("-c,--ctx", o->context, "positions per slot (prompt + max_tokens)")
      ->check(CLI::Range(16, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--template", o->template_name,
                  "chat template (default: the model's own known template)");
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
  AddThreadsOption(cmd);
  AddKvTypeOption(cmd, &o->kv_type);
  cmd->callback([=] {
    ServerOptions options = *o;
    options.max_body_bytes = static_cast<size_t>(*max_body);
    const LoadedModel loaded = LoadModelOrDefault(*model);
    CheckContext(loaded, options.context, options.parallel, options.kv_type);
    options.model_name =
        model->empty() ? std::string(kEmbeddedModelName) : ModelDisplayName(*model);
    std::optional<LoadedRewardModel> rm;
    if (!reward->empty()) {
      rm = LoadRewardModelAndTokenizer({.files = {.directory = *reward}});
      options.reward_model_name = ModelDisplayName(*reward);
    }
    Serve(loaded, rm ? &*rm : nullptr, options);
  });
}

}  // namespace starling::cli
