// `starling serve`: an OpenAI-compatible HTTP server (cpp-httplib) over the Engine, with
// /v1/rewards for a reward model and the web chat page at /. API in docs/SERVER.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "generate/loaded_model.h"
#include "reward/reward.h"
#include "server/server_log.h"

namespace starling {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;              // 0: any free port (printed on stderr)
  std::string api_key;          // empty: no authentication
  int parallel = 4;             // slots decoded together
  int queue = 32;               // requests waiting for a slot beyond the free ones; then 503
  int32_t context = 2048;       // positions per slot: prompt + max_tokens must fit
  DType kv_type = DType::kF32;  // the slots' KV cache element type: F32 or F16 (half the memory)
  std::string template_name;    // empty: the model's own known template
  size_t max_body_bytes = 4u << 20;  // request body, as received and after inflation
  int max_connections = 256;         // open at once; one more gets 503 at once
  int read_timeout_seconds = 10;     // for a request's headers; the longest pause in a body
  // Host header names accepted beyond --host and, on loopback, the loopback names ("*": any).
  std::vector<std::string> allowed_hosts;
  int drain_seconds = 10;  // on SIGINT/SIGTERM, how long running requests may take to finish
  std::string model_name;  // the model's id: what /v1/models lists and responses name
  std::string reward_model_name;
  // A request's "model" must name the served model (else 404 model_not_found); by default
  // any value is accepted and answered by the one model.
  bool strict_model = false;
  // Origins ("scheme://host[:port]", or "*" for any) whose web pages may call the API: CORS
  // headers and preflights for them. Empty: cross-origin requests are refused.
  std::vector<std::string> cors_origins;
  LogLevel log_level = LogLevel::kInfo;
  LogFormat log_format = LogFormat::kText;
};

// Checks a --cors-origin value and returns it normalized (lower case, no trailing '/');
// throws starling::Error naming the value when it is not "*" or "http(s)://host[:port]".
std::string NormalizeCorsOrigin(const std::string& origin);

// Serves until SIGINT or SIGTERM (taken through SetSignalHandler: call StartSignalThread
// before any thread starts), then answers new requests with 503, lets running ones finish for
// up to `drain_seconds`, cancels the rest (their streams end with finish_reason "cancelled")
// and returns 0. `reward` may be null (no /v1/rewards).
int Serve(const LoadedModel& model, LoadedRewardModel* reward, const ServerOptions& options);

}  // namespace starling
