#include "server/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/signals.h"
#include "server/engine.h"
#include "server/http_server.h"
#include "server/openai_api.h"
#include "server/server_log.h"
#include "server/web_page.h"

namespace starling {
namespace {

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string NewId(const char* prefix) {
  static std::mutex mutex;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard lock(mutex);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s-%016llx", prefix, static_cast<unsigned long long>(rng()));
  return buf;
}

uint64_t RandomSeed() {
  static std::mutex mutex;
  static std::random_device device;
  std::lock_guard lock(mutex);
  return (uint64_t{device()} << 32) ^ device();
}

void SendJson(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(DumpJson(body), "application/json");
}

void SendError(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  if (error.status == 503) res.set_header("Retry-After", "1");
  if (error.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(ErrorBody(error), "application/json");
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// The host name of a Host header ("name", "name:port", "[v6]:port"), lower case.
std::string HostName(std::string_view host) {
  host = Trim(host);
  if (!host.empty() && host.front() == '[') {
    const size_t close = host.find(']');
    return Lower(host.substr(1, close == std::string_view::npos ? host.npos : close - 1));
  }
  const size_t colon = host.find(':');
  return Lower(host.substr(0, colon));
}

bool IsLoopbackName(const std::string& name) {
  return name == "localhost" || name == "::1" || name.rfind("127.", 0) == 0 ||
         (name.size() > 10 && name.ends_with(".localhost"));
}

bool IsIpLiteral(const std::string& name) {
  if (name.find(':') != std::string::npos) return true;  // IPv6
  return !name.empty() && name.find_first_not_of("0123456789.") == std::string::npos;
}

// The token of an "Authorization: Bearer TOKEN" header (the scheme in any case), or nullopt.
std::optional<std::string_view> BearerToken(std::string_view header) {
  header = Trim(header);
  const size_t space = header.find_first_of(" \t");
  if (space == std::string_view::npos || Lower(header.substr(0, space)) != "bearer") {
    return std::nullopt;
  }
  return Trim(header.substr(space + 1));
}

// Compares in time independent of where the strings differ.
bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The most bytes of text one token can stand for: its longest piece (at least 32, for unknown
// characters). Text longer than context x this cannot fit, whatever the tokenizer does.
size_t MaxTokenBytes(const Tokenizer& tokenizer) {
  size_t longest = 32;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    longest = std::max(longest, tokenizer.Piece(id).size());
  }
  return longest;
}

// Refuses, before any tokenizing, messages that cannot fit `context` tokens: each message
// renders to at least one token, and no token covers more than `max_token_bytes` of text.
void CheckFits(size_t messages, size_t bytes, int32_t context, size_t max_token_bytes,
               const std::string& param) {
  const auto limit = static_cast<size_t>(context);
  if (messages > limit) {
    throw ApiError(400, "invalid_request_error",
                   Concat(messages, " messages cannot fit the context of ", context,
                          " tokens (each takes at least one)"),
                   param, "context_length_exceeded");
  }
  if (bytes > limit * max_token_bytes) {
    throw ApiError(400, "invalid_request_error",
                   Concat("the messages hold ", bytes,
                          " bytes of text: more than fits the context of ", context, " tokens"),
                   param, "context_length_exceeded");
  }
}

void CheckFits(const std::vector<ChatMessage>& messages, int32_t context, size_t max_token_bytes,
               const std::string& param) {
  size_t bytes = 0;
  for (const ChatMessage& m : messages) bytes += m.content.size();
  CheckFits(messages.size(), bytes, context, max_token_bytes, param);
}

std::string Nonce() {
  static std::mutex mutex;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard lock(mutex);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return buf;
}

// The chat page with a fresh nonce on its inline script and style, and the headers that let
// only those run: no other script, no framing, no requests to other origins.
void SendChatPage(httplib::Response& res) {
  const std::string nonce = Nonce();
  std::string page(ChatPageHtml());
  for (const std::string tag : {"<script>", "<style>"}) {
    const std::string with = tag.substr(0, tag.size() - 1) + " nonce=\"" + nonce + "\">";
    for (size_t at = page.find(tag); at != std::string::npos; at = page.find(tag, at)) {
      page.replace(at, tag.size(), with);
      at += with.size();
    }
  }
  res.set_header(
      "Content-Security-Policy",
      Concat("default-src 'none'; script-src 'nonce-", nonce, "'; style-src 'nonce-", nonce,
             "'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
             "form-action 'none'; frame-ancestors 'none'"));
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_content(page, "text/html; charset=utf-8");
}

// The error a request gets when the engine could not complete its job.
ApiError GenerationFailed(const Job& job) {
  return ApiError(500, "server_error", "generation failed: " + job.error(), "",
                  "generation_failed");
}

// What the request log line says of a request beyond its method, path and status: the
// tokens of a generation (or of scored conversations). Each connection's requests run one
// after another on its thread, streams included, and the logger runs on it after each one.
struct RequestNote {
  int64_t prompt_tokens = -1;  // -1: not a generation
  int64_t completion_tokens = 0;
};
thread_local RequestNote t_note;

// A token's own text, as a logprobs entry shows it: SentencePiece's U+2581 as a space, a byte
// token as its byte (not a whole character on its own), any other piece as it is.
std::string TokenText(const Tokenizer& tokenizer, int32_t id) {
  const std::string& piece = tokenizer.Piece(id);
  if (tokenizer.IsByte(id) && piece.size() == 6 && piece.starts_with("<0x")) {
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  }
  std::string text;
  for (size_t at = 0; at < piece.size();) {
    if (piece.compare(at, 3, "\xe2\x96\x81") == 0) {
      text += ' ';
      at += 3;
    } else {
      text += piece[at++];
    }
  }
  return text;
}

std::vector<TokenLogprob> TokenLogprobsOf(const Tokenizer& tokenizer,
                                          const std::vector<TokenLogprobs>& tokens) {
  std::vector<TokenLogprob> out;
  out.reserve(tokens.size());
  for (const TokenLogprobs& t : tokens) {
    TokenLogprob entry{.token = TokenText(tokenizer, t.token), .logprob = t.logprob, .top = {}};
    for (const auto& [id, logprob] : t.top)
      entry.top.emplace_back(TokenText(tokenizer, id), logprob);
    out.push_back(std::move(entry));
  }
  return out;
}

// Whether `host` (lower case) is a loopback address or name: no one else can connect.
bool IsLoopbackHost(const std::string& host) {
  return IsLoopbackName(host) || host == "[::1]";
}

ApiError ShuttingDown() {
  return ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
}

// The request log line (info; warn for a 5xx): method, path, status, tokens, time from the
// request's first byte to its response's last, client address, and an error response's
// message. Client strings are bounded (LogSafe) and escaped by the log.
void LogRequest(const httplib::Request& req, const httplib::Response& res) {
  const RequestNote note = std::exchange(t_note, {});
  const LogLevel level = res.status >= 500 ? LogLevel::kWarn : LogLevel::kInfo;
  if (!ServerLogEnabled(level)) return;
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                              HttpServer::RequestStarted())
                        .count();
  nlohmann::ordered_json fields = {
      {"method", LogSafe(req.method, 16)}, {"path", LogSafe(req.path)}, {"status", res.status}};
  if (note.prompt_tokens >= 0) {
    fields["prompt_tokens"] = note.prompt_tokens;
    fields["completion_tokens"] = note.completion_tokens;
  }
  fields["duration_ms"] = std::round(ms * 10) / 10;
  fields["remote"] = LogSafe(req.remote_addr, 64);
  if (res.status >= 400 && res.body.size() < 65536) {
    const nlohmann::json body =
        nlohmann::json::parse(res.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_object() && body.contains("error") && body["error"].is_object() &&
        body["error"].contains("message") && body["error"]["message"].is_string()) {
      fields["error"] = LogSafe(body["error"]["message"].get<std::string>());
    }
  }
  ServerLog(level, "request", fields);
}

// A shutdown request from the signal thread, waited for by the server's stopping thread. Shared,
// so that a signal handled late never reaches a destroyed server.
struct StopRequest {
  std::mutex mutex;
  std::condition_variable cv;
  int signal = 0;  // 0: not yet
};

// The parts of a completion request shared by /v1/chat/completions and /v1/completions.
struct Prepared {
  std::vector<int32_t> prompt;
  GenerationOptions options;
  int32_t n = 1;  // choices, each its own job
  bool stream = false;
  bool include_usage = false;
};

class Server {
 public:
  Server(const LoadedModel& model, LoadedRewardModel* reward, const ServerOptions& options)
      : model_(model),
        reward_(reward),
        options_(options),
        engine_(*model.model, *model.tokenizer, options.parallel, options.context, options.queue,
                options.kv_type),
        http_({.max_body_bytes = options.max_body_bytes,
               .max_connections = options.max_connections,
               .read_timeout_seconds = options.read_timeout_seconds}) {
    max_token_bytes_ = MaxTokenBytes(*model_.tokenizer);
    if (reward_ != nullptr) {
      reward_scorer_ =
          std::make_unique<RewardScorer>(*reward_->model, *reward_->tokenizer, options.context);
      reward_max_token_bytes_ = MaxTokenBytes(*reward_->tokenizer);
    }
    // The chat template is chosen once, at start, so a bad --template fails before serving. A
    // model with no known template (e.g. a base model) gets its messages as one raw prompt.
    if (!options_.template_name.empty() || !model_.chat_template_jinja.empty()) {
      chat_template_ = &model_.ChooseTemplate(options_.template_name);
    } else {
      ServerLog(LogLevel::kWarn,
                Concat(options_.model_name,
                       " has no chat template; chat messages are joined into one raw prompt "
                       "(use --template to choose one)"));
    }
  }

  int Run() {
    // Each connection has its own thread (HttpServer): a stream waiting for tokens or a slow
    // client holds only its own.
    http_.set_default_headers({{"X-Content-Type-Options", "nosniff"}});
    // Runs once the headers are in, before any body is read.
    http_.set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return Admit(req, res); });
    // A client that waits for 100-continue gets the refusal instead.
    http_.set_expect_100_continue_handler(
        [this](const httplib::Request& req, httplib::Response& res) {
          return Admit(req, res) == httplib::Server::HandlerResponse::Handled ? res.status : 100;
        });
    http_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (const int status = HttpServer::HeaderFailureStatus(); status != 0) res.status = status;
      const char* type = res.status >= 500 ? "server_error" : "invalid_request_error";
      std::string message = Concat("HTTP ", res.status);
      if (res.status == 400) message = "malformed HTTP request";
      if (res.status == 408) message = "the request headers did not arrive in time";
      if (res.status == 413) message = "request body too large";
      if (res.status == 431) message = "the request headers are too large";
      if (res.status == 404) message = "no such endpoint";
      SendError(res, ApiError(res.status, type, message));
    });
    http_.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          try {
            std::rethrow_exception(ep);
          } catch (const ApiError& e) {
            SendError(res, e);
          } catch (const Error& e) {
            // Bad input is an ApiError by now (parsing, rendering and limits are checked
            // first): anything else is the server's own failure.
            SendError(res, ApiError(500, "server_error", e.what()));
          } catch (...) {
            SendError(res, ApiError(500, "server_error", CurrentExceptionMessage()));
          }
        });
    http_.Get("/", [](const httplib::Request&, httplib::Response& res) { SendChatPage(res); });
    http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const EngineStats stats = engine_.stats();
      SendJson(res, 200,
               {{"status", "ok"},
                {"slots", options_.parallel},
                {"busy_slots", stats.busy_slots},
                {"queued", stats.queued},
                {"decode_steps", stats.steps},
                {"mean_batch", stats.steps > 0 ? static_cast<double>(stats.batched_rows) /
                                                     static_cast<double>(stats.steps)
                                               : 0.0},
                {"prompt_tokens", stats.prompt_tokens},
                {"prompt_tokens_reused", stats.prompt_reused}});
    });
    http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      std::vector<std::string> ids = {options_.model_name};
      if (reward_ != nullptr) ids.push_back(options_.reward_model_name);
      SendJson(res, 200, ModelsList(ids, Now()));
    });
    // An id may hold '/' (ORG/NAME): everything after the prefix, percent-decoded by httplib.
    http_.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string id = req.matches[1];
      if (id != options_.model_name && (reward_ == nullptr || id != options_.reward_model_name)) {
        throw ApiError(404, "invalid_request_error",
                       Concat("The model '", PrintableForError(id), "' does not exist"), "model",
                       "model_not_found");
      }
      SendJson(res, 200, ModelObject(id, Now()));
    });
    http_.Post("/v1/chat/completions", [this](const httplib::Request&, httplib::Response& res,
                                              const httplib::ContentReader& body) {
      Complete(ParseChatCompletionRequest(HttpServer::ReadBody(body)), res);
    });
    http_.Post("/v1/completions", [this](const httplib::Request&, httplib::Response& res,
                                         const httplib::ContentReader& body) {
      Complete(ParseCompletionRequest(HttpServer::ReadBody(body)), res);
    });
    http_.Post("/tokenize", [this](const httplib::Request&, httplib::Response& res,
                                   const httplib::ContentReader& body) {
      const TokenizeRequest r = ParseTokenizeRequest(HttpServer::ReadBody(body));
      const Tokenizer& tok = *model_.tokenizer;
      SendJson(res, 200,
               {{"tokens", tok.Encode(r.content, {.add_bos = r.add_special && tok.add_bos_token(),
                                                  .parse_special = true})}});
    });
    http_.Post("/detokenize", [this](const httplib::Request&, httplib::Response& res,
                                     const httplib::ContentReader& body) {
      const DetokenizeRequest r = ParseDetokenizeRequest(HttpServer::ReadBody(body));
      for (size_t i = 0; i < r.tokens.size(); ++i) {
        if (r.tokens[i] < 0 || r.tokens[i] >= model_.tokenizer->vocab_size()) {
          throw ApiError(400, "invalid_request_error",
                         Concat("token id ", r.tokens[i], " is outside the vocabulary"),
                         Concat("tokens[", i, "]"));
        }
      }
      // As llama.cpp: special tokens (BOS, end of turn) are not rendered.
      SendJson(res, 200, {{"content", model_.tokenizer->Decode(r.tokens, /*skip_special=*/true)}});
    });
    http_.Post("/v1/rewards", [this](const httplib::Request&, httplib::Response& res,
                                     const httplib::ContentReader& body) {
      Rewards(ParseRewardsRequest(HttpServer::ReadBody(body)), res);
    });
    http_.set_logger(
        [](const httplib::Request& req, const httplib::Response& res) { LogRequest(req, res); });

    int port = options_.port;
    if (port == 0) {
      port = http_.bind_to_any_port(options_.host);
    } else if (!http_.bind_to_port(options_.host, port)) {
      port = -1;
    }
    if (port < 0) {
      Fail("cannot listen on ", options_.host, ":", options_.port,
           " (is the port in use, or the address not this machine's?)");
    }
    if (options_.api_key.empty() && !IsLoopbackHost(Lower(options_.host))) {
      ServerLog(LogLevel::kWarn,
                Concat("listening on ", options_.host,
                       " without --api-key: anyone who can reach this address can use the "
                       "server (set --api-key KEY)"));
    }
    for (const std::string& origin : options_.cors_origins) {
      ServerLog(LogLevel::kInfo, "cross-origin requests allowed", {{"origin", origin}});
    }
    // SIGINT/SIGTERM come from the signal thread (StartSignalThread); this thread acts on them.
    auto stop = std::make_shared<StopRequest>();
    SetSignalHandler([stop](int signal) {
      {
        std::lock_guard lock(stop->mutex);
        stop->signal = signal;
      }
      stop->cv.notify_all();
    });
    std::thread stopper([this, stop] {
      int signal = 0;
      {
        std::unique_lock lock(stop->mutex);
        stop->cv.wait(lock, [&] { return stop->signal != 0; });
        signal = stop->signal;
      }
      if (signal > 0) {
        ServerLog(LogLevel::kInfo, Concat("signal ", signal, ", shutting down (draining up to ",
                                          options_.drain_seconds, " s)"));
      }
      shutting_down_ = true;  // new requests get 503 from here on
      engine_.Drain(std::chrono::seconds(options_.drain_seconds));
      // Every job has ended; let the streams write their last chunk and [DONE] (httplib's
      // stop() cuts a stream between two chunks), bounded for a client that does not read.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (open_streams_ > 0 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      // stop() does nothing before the accept loop runs: a signal right after the start line
      // would leave listen_after_bind() running forever.
      while (!http_.is_running() && !listen_returned_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      http_.stop();  // listen_after_bind() then joins the HTTP workers and returns
    });
    // Written at every level: clients (and the tests) read the port from it.
    const bool v6 = options_.host.find(':') != std::string::npos;
    ServerLog(LogLevel::kInfo,
              Concat(options_.model_name, " on http://", v6 ? "[" : "", options_.host,
                     v6 ? "]" : "", ":", port, " (", options_.parallel, " slots, context ",
                     options_.context, ", ", DTypeName(options_.kv_type), " KV cache)"),
              {{"port", port}}, /*always=*/true);
    const bool listened = http_.listen_after_bind();
    listen_returned_ = true;
    {
      std::lock_guard lock(stop->mutex);
      if (stop->signal == 0) stop->signal = -1;  // the listening socket failed: stop anyway
    }
    stop->cv.notify_all();
    stopper.join();
    SetSignalHandler({});
    if (!listened) Fail("the listening socket on ", options_.host, ":", port, " failed");
    return 0;
  }

 private:
  bool ProtectedPath(const std::string& path) const {
    return path.rfind("/v1/", 0) == 0 || path == "/tokenize" || path == "/detokenize";
  }

  // The methods a path answers ("" for an unknown path).
  static std::string_view Methods(const std::string& path) {
    if (path == "/" || path == "/health" || path == "/v1/models" ||
        (path.starts_with("/v1/models/") && path.size() > 11)) {
      return "GET, HEAD";
    }
    if (path == "/v1/chat/completions" || path == "/v1/completions" || path == "/tokenize" ||
        path == "/detokenize" || path == "/v1/rewards") {
      return "POST";
    }
    return "";
  }

  // Whether a Host header names this server: its --host, a loopback name when it listens on
  // loopback, any address when it listens on all of them, or an --allowed-host. Without this,
  // a web page whose domain resolves to 127.0.0.1 (DNS rebinding) could use a keyless server.
  bool HostAllowed(const std::string& host) const {
    const std::string name = HostName(host);
    const std::string bound = Lower(options_.host);
    for (const std::string& allowed : options_.allowed_hosts) {
      if (allowed == "*" || Lower(allowed) == name) return true;
    }
    if (name == bound) return true;
    if (IsLoopbackName(bound) && IsLoopbackName(name)) return true;
    return (bound == "0.0.0.0" || bound == "::" || bound.empty()) && IsIpLiteral(name);
  }

  // Whether `origin` (as a browser sends it) is one of --cors-origin's.
  bool CorsAllowed(const std::string& origin) const {
    std::string normalized = Lower(Trim(origin));
    for (const std::string& allowed : options_.cors_origins) {
      if (allowed == "*" || allowed == normalized) return true;
    }
    return false;
  }

  // Every check that needs only the headers, before any body is read: shutting down, Host,
  // Origin (a request from another origin is refused unless --cors-origin lists it; then its
  // response carries CORS headers and a preflight is answered here), path and method, API
  // key, and the body's framing and size. A request answered here never has its body read;
  // its connection closes after the response.
  httplib::Server::HandlerResponse Admit(const httplib::Request& req, httplib::Response& res) {
    auto refuse = [&](const ApiError& error) {
      SendError(res, error);
      return httplib::Server::HandlerResponse::Handled;
    };
    t_note = {};  // this request's tokens, for its log line
    if (shutting_down_) return refuse(ShuttingDown());
    const std::string host = req.get_header_value("Host");
    if (req.has_header("Host") && !HostAllowed(host)) {
      return refuse(ApiError(403, "invalid_request_error",
                             Concat("Host '", host,
                                    "' is not a name of this server (start it with "
                                    "--allowed-host NAME to allow one)"),
                             "", "host_not_allowed"));
    }
    bool cross_origin = false;  // an allowed page of another origin
    if (req.has_header("Origin")) {
      const std::string origin = req.get_header_value("Origin");
      const size_t scheme = origin.find("://");
      if (scheme == std::string::npos || Lower(origin.substr(scheme + 3)) != Lower(host)) {
        if (!CorsAllowed(origin)) {
          return refuse(ApiError(
              403, "invalid_request_error",
              Concat("cross-origin requests are not allowed (Origin '", PrintableForError(origin),
                     "'; start the server with --cors-origin ORIGIN to allow "
                     "one)"),
              "", "cross_origin"));
        }
        cross_origin = true;
        // On every response to it, errors included, so that the page can read them.
        res.set_header("Access-Control-Allow-Origin", origin);
        res.set_header("Vary", "Origin");
      }
    }
    const std::string_view methods = Methods(req.path);
    if (methods.empty()) {
      return refuse(ApiError(404, "invalid_request_error",
                             "no such endpoint: " + PrintableForError(req.path)));
    }
    // A CORS preflight: answered without an API key (browsers send none with it).
    if (cross_origin && req.method == "OPTIONS" &&
        req.has_header("Access-Control-Request-Method")) {
      res.status = 204;
      res.set_header("Access-Control-Allow-Methods", Concat(methods, ", OPTIONS"));
      res.set_header("Access-Control-Allow-Headers", PreflightHeaders(req));
      res.set_header("Access-Control-Max-Age", "600");
      return httplib::Server::HandlerResponse::Handled;
    }
    const std::string method = req.method == "HEAD" ? "GET" : req.method;
    if (methods.find(method) == std::string_view::npos) {
      res.set_header("Allow", std::string(methods));
      return refuse(ApiError(405, "invalid_request_error",
                             Concat(req.path, " takes ", methods, ", not ", req.method)));
    }
    if (!options_.api_key.empty() && ProtectedPath(req.path)) {
      // The token is a view into the header: keep the header (httplib returns a copy) alive.
      const std::string authorization = req.get_header_value("Authorization");
      const auto token = BearerToken(authorization);
      if (!token || !SameSecret(*token, options_.api_key)) {
        return refuse(ApiError(401, "authentication_error",
                               "missing or wrong API key (send 'Authorization: Bearer KEY')", "",
                               "invalid_api_key"));
      }
    }
    if (method == "POST") {
      if (const std::optional<ApiError> error = CheckBodyFraming(req)) return refuse(*error);
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  // The request headers a preflight may allow: Authorization and Content-Type, and those the
  // page asks for when each is a plain header name (the server ignores them), at most 1 KiB.
  static std::string PreflightHeaders(const httplib::Request& req) {
    std::string allowed = "Authorization, Content-Type";
    const std::string asked = req.get_header_value("Access-Control-Request-Headers");
    if (asked.size() > 1024) return allowed;
    for (size_t at = 0; at <= asked.size();) {
      const size_t comma = std::min(asked.find(',', at), asked.size());
      const std::string name = Lower(Trim(std::string_view(asked).substr(at, comma - at)));
      at = comma + 1;
      const bool token =
          !name.empty() &&
          name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") == std::string::npos;
      if (token && name != "authorization" && name != "content-type") allowed += ", " + name;
    }
    return allowed;
  }

  // How the body of a POST arrives: a Content-Length within --max-body or chunked (limited as
  // it is read, HttpServer::ReadBody), with a content coding httplib can inflate.
  std::optional<ApiError> CheckBodyFraming(const httplib::Request& req) const {
    std::optional<ApiError> error;
    const bool chunked = req.has_header("Transfer-Encoding");
    if (chunked && Lower(Trim(req.get_header_value("Transfer-Encoding"))) != "chunked") {
      error.emplace(501, "invalid_request_error", "only 'Transfer-Encoding: chunked' is supported");
    } else if (chunked && req.has_header("Content-Length")) {
      error.emplace(400, "invalid_request_error",
                    "a request may not have both Content-Length and Transfer-Encoding");
    } else if (!chunked && req.get_header_value_count("Content-Length") != 1) {
      error.emplace(411, "invalid_request_error",
                    req.has_header("Content-Length")
                        ? "more than one Content-Length"
                        : "the request body needs a Content-Length (or chunked encoding)");
    } else if (!chunked) {
      const std::string digits(Trim(req.get_header_value("Content-Length")));
      if (digits.empty() || digits.size() > 18 ||
          digits.find_first_not_of("0123456789") != std::string::npos) {
        error.emplace(400, "invalid_request_error", "malformed Content-Length");
      } else if (std::stoull(digits) > options_.max_body_bytes) {
        error.emplace(413, "invalid_request_error",
                      Concat("request body too large: ", digits, " bytes; the limit is ",
                             options_.max_body_bytes, " (--max-body)"),
                      "", "request_too_large");
      }
    }
    if (!error) {
      const std::string coding = Lower(Trim(req.get_header_value("Content-Encoding")));
      const std::string type = Lower(req.get_header_value("Content-Type"));
      if (!coding.empty() && coding != "identity" && coding != "gzip" && coding != "deflate" &&
          coding != "br") {
        error.emplace(415, "invalid_request_error",
                      "Content-Encoding '" + coding + "' is not supported (gzip, deflate, br)");
      } else if (type.rfind("multipart/", 0) == 0) {
        error.emplace(415, "invalid_request_error", "the request body must be JSON");
      }
    }
    return error;
  }

  // With --strict-model a request's "model" (when given) must name the served one; by default
  // any value is answered by the one model the server has.
  void CheckModel(const std::string& name, const std::string& served) const {
    if (options_.strict_model && !name.empty() && name != served) {
      throw ApiError(404, "invalid_request_error",
                     Concat("The model '", PrintableForError(name),
                            "' does not exist (this server has '", served, "')"),
                     "model", "model_not_found");
    }
  }

  Prepared Prepare(const SamplingRequest& r, std::vector<int32_t> prompt) const {
    CheckModel(r.model, options_.model_name);
    Prepared p;
    p.prompt = std::move(prompt);
    const auto prompt_tokens = static_cast<int64_t>(p.prompt.size());
    if (prompt_tokens >= options_.context) {
      throw ApiError(
          400, "invalid_request_error",
          Concat("the prompt has ", prompt_tokens, " tokens; the context is ", options_.context),
          "messages", "context_length_exceeded");
    }
    int64_t max_tokens = r.max_tokens < 0 ? options_.context - prompt_tokens : r.max_tokens;
    if (prompt_tokens + max_tokens > options_.context) {
      throw ApiError(400, "invalid_request_error",
                     Concat("prompt (", prompt_tokens, " tokens) + max_tokens (", max_tokens,
                            ") exceeds the context of ", options_.context, " tokens"),
                     "max_tokens", "context_length_exceeded");
    }
    p.options.max_new_tokens = static_cast<int32_t>(max_tokens);
    p.options.sampling.temperature = r.temperature;
    p.options.sampling.top_p = r.top_p;
    p.options.sampling.top_k = 0;  // OpenAI semantics: temperature and top_p only
    p.options.sampling.min_p = 0.0f;
    p.options.sampling.repeat_penalty = 1.0f;
    p.options.sampling.seed = r.seed ? *r.seed : RandomSeed();
    p.options.stop_strings = r.stop;
    p.options.frequency_penalty = r.frequency_penalty;
    p.options.presence_penalty = r.presence_penalty;
    const int32_t vocab = model_.model->config().vocab_size;
    for (const auto& [token, bias] : r.logit_bias) {
      if (token >= vocab) {
        throw ApiError(400, "invalid_request_error",
                       Concat("logit_bias: token id ", token, " is outside the vocabulary (", vocab,
                              " tokens)"),
                       "logit_bias");
      }
    }
    p.options.logit_bias = r.logit_bias;
    p.options.top_logprobs = r.logprobs;
    p.n = r.n;
    p.stream = r.stream;
    p.include_usage = r.include_usage;
    if (ServerLogEnabled(LogLevel::kDebug)) {
      ServerLog(LogLevel::kDebug, "generation",
                {{"prompt_tokens", prompt_tokens},
                 {"max_tokens", max_tokens},
                 {"temperature", r.temperature},
                 {"top_p", r.top_p},
                 {"seed", p.options.sampling.seed},
                 {"frequency_penalty", r.frequency_penalty},
                 {"presence_penalty", r.presence_penalty},
                 {"logit_bias", r.logit_bias.size()},
                 {"logprobs", r.logprobs},
                 {"stop", r.stop.size()},
                 {"n", r.n},
                 {"stream", r.stream}});
    }
    return p;
  }

  void Complete(const ChatCompletionRequest& r, httplib::Response& res) {
    CheckFits(r.messages, options_.context, max_token_bytes_, "messages");
    std::vector<int32_t> ids;
    const Tokenizer& tok = *model_.tokenizer;
    if (chat_template_ != nullptr) {
      try {
        ids = chat_template_->Render(tok, r.messages, true).ids;
      } catch (const Error& e) {
        throw ApiError(400, "invalid_request_error", e.what(), "messages");
      }
    } else {
      std::string text;
      for (const ChatMessage& m : r.messages) text += (text.empty() ? "" : "\n") + m.content;
      ids = tok.Encode(text, {.add_bos = tok.add_bos_token(), .parse_special = false});
    }
    Prepared p = Prepare(r, std::move(ids));
    p.options.stop_token_ids = model_.StopTokens(chat_template_);
    Run(std::move(p), /*chat=*/true, res);
  }

  void Complete(const CompletionRequest& r, httplib::Response& res) {
    const Tokenizer& tok = *model_.tokenizer;
    CheckFits(1, r.prompt.size(), options_.context, max_token_bytes_, "prompt");
    Prepared p = Prepare(r, tok.Encode(r.prompt, {.add_bos = tok.add_bos_token()}));
    if (p.prompt.empty()) throw ApiError(400, "invalid_request_error", "empty prompt", "prompt");
    p.options.stop_token_ids = model_.StopTokens(nullptr);
    Run(std::move(p), /*chat=*/false, res);
  }

  // Submits the request's n jobs (choice i samples with seed + i) and answers with their
  // choices: one JSON body, or one SSE stream whose chunks name their choice by index.
  void Run(Prepared p, bool chat, httplib::Response& res) {
    const Usage usage_prompt{static_cast<int64_t>(p.prompt.size()), 0};
    const bool logprobs = p.options.top_logprobs >= 0;
    t_note = {.prompt_tokens = usage_prompt.prompt_tokens, .completion_tokens = 0};
    // Every choice needs a slot or a place in the queue at once: more can never be served.
    if (p.n > options_.parallel + options_.queue) {
      throw ApiError(
          400, "invalid_request_error",
          Concat("n is ", p.n, "; this server runs at most ", options_.parallel + options_.queue,
                 " generations at once (--parallel + --queue)"),
          "n");
    }
    auto jobs = std::make_shared<std::vector<std::shared_ptr<Job>>>();
    for (int32_t i = 0; i < p.n; ++i) {
      GenerationOptions options = p.options;
      options.sampling.seed += static_cast<uint64_t>(i);
      std::shared_ptr<Job> job = engine_.Submit(p.prompt, std::move(options));
      if (job == nullptr) {
        for (const auto& submitted : *jobs) submitted->Cancel();
        if (engine_.stopping()) throw ShuttingDown();
        throw ApiError(503, "server_error",
                       "the server is busy: every slot is taken and the queue is full; retry "
                       "later",
                       "", "overloaded");
      }
      jobs->push_back(std::move(job));
    }
    auto completion_tokens = [jobs] {
      int64_t sum = 0;
      for (const auto& job : *jobs) sum += job->completion_tokens();
      return sum;
    };
    auto cancel_all = [jobs] {
      for (const auto& job : *jobs) job->Cancel();
    };
    const std::string id = NewId(chat ? "chatcmpl" : "cmpl");
    const std::string model = options_.model_name;
    const int64_t created = Now();
    if (!p.stream) {
      std::vector<Choice> choices;
      for (const auto& job : *jobs) {
        std::string text;
        std::vector<TokenLogprobs> tokens;
        for (bool finished = false; !finished;) {
          for (JobPiece& piece : job->Wait(1000, &finished)) {
            text += piece.text;
            tokens.insert(tokens.end(), piece.logprobs.begin(), piece.logprobs.end());
          }
        }
        t_note.completion_tokens = completion_tokens();
        if (!job->error().empty()) {
          cancel_all();
          throw GenerationFailed(*job);
        }
        if (job->finish() == FinishReason::kCancelled) {
          cancel_all();
          throw ApiError(503, "server_error", "the request was cancelled (server shutting down)");
        }
        nlohmann::json lp = nullptr;
        if (logprobs) {
          const std::vector<TokenLogprob> entries = TokenLogprobsOf(*model_.tokenizer, tokens);
          lp = chat ? ChatLogprobs(entries) : CompletionLogprobs(entries, 0);
        }
        choices.push_back({std::move(text), FinishReasonName(job->finish()), std::move(lp)});
      }
      const Usage usage{usage_prompt.prompt_tokens, completion_tokens()};
      SendJson(res, 200,
               chat ? ChatCompletionResponse(id, model, created, choices, usage)
                    : CompletionResponse(id, model, created, choices, usage));
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto started = std::make_shared<bool>(false);
    // Per choice: whether its last chunk went out, and the bytes of its tokens listed so far.
    auto ended = std::make_shared<std::vector<bool>>(jobs->size(), false);
    auto text_offsets = std::make_shared<std::vector<size_t>>(jobs->size(), 0);
    // Counts this stream as open until httplib has written it and dropped the provider.
    ++open_streams_;
    auto open = std::shared_ptr<void>(nullptr, [this](void*) { --open_streams_; });
    // Called on an HTTP worker outside httplib's exception handling: nothing may escape it.
    auto provide = [=, this](size_t, httplib::DataSink& sink) {
      auto send = [&](const nlohmann::json& j) {
        const std::string event = SseEvent(j);
        return sink.write(event.data(), event.size());
      };
      auto end_stream = [&] {
        const std::string done = SseDone();
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      };
      const auto n = static_cast<int64_t>(jobs->size());
      if (!*started) {
        *started = true;
        for (int64_t i = 0; chat && i < n; ++i) {
          if (!send(ChatCompletionChunk(id, model, created, "assistant", "", {}, nullptr, i))) {
            cancel_all();
            return false;
          }
        }
      }
      // Each choice's new pieces; the first unfinished one is waited for when none has any.
      bool any = false;
      for (int64_t i = 0; i < n; ++i) {
        if ((*ended)[static_cast<size_t>(i)]) continue;
        Job& job = *(*jobs)[static_cast<size_t>(i)];
        bool finished = false;
        std::vector<JobPiece> pieces = job.Wait(any ? 0 : 200 / static_cast<int>(n), &finished);
        any = any || !pieces.empty() || finished;
        t_note.completion_tokens = completion_tokens();
        // One event per token's text, as OpenAI streams, however fast they were generated.
        for (const JobPiece& piece : pieces) {
          nlohmann::json lp = nullptr;
          if (logprobs) {
            const std::vector<TokenLogprob> entries =
                TokenLogprobsOf(*model_.tokenizer, piece.logprobs);
            size_t& offset = (*text_offsets)[static_cast<size_t>(i)];
            lp = chat ? ChatLogprobs(entries) : CompletionLogprobs(entries, offset);
            for (const TokenLogprob& e : entries) offset += e.token.size();
          }
          const bool ok = send(
              chat ? ChatCompletionChunk(id, model, created, {}, piece.text, {}, std::move(lp), i)
                   : CompletionChunk(id, model, created, piece.text, {}, std::move(lp), i));
          if (!ok) {  // the client went away: free the slots
            cancel_all();
            return false;
          }
        }
        if (!finished) continue;
        // A failed generation ends the stream with OpenAI's error object, then [DONE].
        if (!job.error().empty()) {
          cancel_all();
          send(ErrorJson(GenerationFailed(job)));
          return end_stream();
        }
        const std::string reason = FinishReasonName(job.finish());
        send(chat ? ChatCompletionChunk(id, model, created, {}, {}, reason, nullptr, i)
                  : CompletionChunk(id, model, created, "", reason, nullptr, i));
        (*ended)[static_cast<size_t>(i)] = true;
      }
      if (std::find(ended->begin(), ended->end(), false) != ended->end()) {
        if (!any && !sink.is_writable()) {
          cancel_all();
          return false;
        }
        return true;
      }
      if (p.include_usage) {
        send(UsageChunk(id, model, created, {usage_prompt.prompt_tokens, completion_tokens()},
                        chat ? "chat.completion.chunk" : "text_completion"));
      }
      return end_stream();
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [cancel_all, provide, open](size_t offset, httplib::DataSink& sink) {
          try {
            return provide(offset, sink);
          } catch (...) {
            ServerLog(LogLevel::kError, "a stream failed: " + CurrentExceptionMessage());
            cancel_all();
            return false;
          }
        },
        [cancel_all](bool success) {
          if (!success) cancel_all();
        });
  }

  void Rewards(const RewardsRequest& r, httplib::Response& res) {
    if (reward_ == nullptr) {
      throw ApiError(404, "invalid_request_error",
                     "this server has no reward model (start it with --rm DIR)", "",
                     "model_not_found");
    }
    CheckModel(r.model, options_.reward_model_name);
    const ChatTemplate& llama2 = ChatTemplate::ByName("llama-2");
    nlohmann::json data = nlohmann::json::array();
    std::lock_guard lock(reward_mutex_);  // one scorer (one KV cache), shared prefixes reused
    for (size_t i = 0; i < r.conversations.size(); ++i) {
      CheckFits(r.conversations[i], options_.context, reward_max_token_bytes_,
                Concat("conversations[", i, "]"));
    }
    for (size_t i = 0; i < r.conversations.size(); ++i) {
      std::vector<int32_t> ids;
      try {
        ids = RewardConversationIds(*reward_->tokenizer, llama2, r.conversations[i],
                                    reward_->tokenizer->add_bos_token());
      } catch (const Error& e) {
        throw ApiError(400, "invalid_request_error", e.what(), Concat("conversations[", i, "]"));
      }
      if (static_cast<int64_t>(ids.size()) > options_.context) {
        throw ApiError(400, "invalid_request_error",
                       Concat("conversation ", i, " has ", ids.size(), " tokens; the context is ",
                              options_.context),
                       Concat("conversations[", i, "]"), "context_length_exceeded");
      }
      data.push_back(
          {{"index", i}, {"object", "reward"}, {"reward", Score(ids, i)}, {"tokens", ids.size()}});
      t_note.prompt_tokens =
          std::max<int64_t>(t_note.prompt_tokens, 0) + static_cast<int64_t>(ids.size());
    }
    SendJson(res, 200, {{"object", "list"}, {"model", options_.reward_model_name}, {"data", data}});
  }

  // The reward of conversation `index` (its ids checked against the context). A failure here
  // is the server's or the model's, not the request's: 500, and a fresh scorer for the next
  // request (the failed one may have left its cache half written).
  float Score(const std::vector<int32_t>& ids, size_t index) {
    float reward = 0.0f;
    std::string why;
    try {
      reward = reward_scorer_->Score(ids);
      if (!std::isfinite(reward)) why = Concat("the reward model gave ", reward);
    } catch (const std::exception& e) {
      why = e.what();
      reward_scorer_ =
          std::make_unique<RewardScorer>(*reward_->model, *reward_->tokenizer, options_.context);
    }
    if (!why.empty()) {
      throw ApiError(500, "server_error", Concat("scoring conversation ", index, " failed: ", why),
                     "", "reward_failed");
    }
    return reward;
  }

  const LoadedModel& model_;
  LoadedRewardModel* reward_;
  const ServerOptions options_;
  Engine engine_;
  const ChatTemplate* chat_template_ = nullptr;
  std::unique_ptr<RewardScorer> reward_scorer_;
  size_t max_token_bytes_ = 0;  // MaxTokenBytes of the model's and the reward model's tokenizers
  size_t reward_max_token_bytes_ = 0;
  std::mutex reward_mutex_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<int> open_streams_{0};  // streaming responses not yet fully written
  std::atomic<bool> listen_returned_{false};
  HttpServer http_;
};

}  // namespace

std::string NormalizeCorsOrigin(const std::string& origin) {
  if (origin == "*") return origin;
  std::string o = Lower(origin);
  if (o.ends_with('/')) o.pop_back();
  const size_t scheme = o.find("://");
  const std::string rest = scheme == std::string::npos ? "" : o.substr(scheme + 3);
  const bool ok =
      (o.starts_with("http://") || o.starts_with("https://")) && !rest.empty() &&
      rest.size() <= 255 &&
      rest.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-:[]") == std::string::npos;
  if (!ok) {
    Fail("--cors-origin '", PrintableForError(origin),
         "' is not an origin: give scheme://host[:port] (e.g. http://localhost:3000) or '*'");
  }
  return o;
}

int Serve(const LoadedModel& model, LoadedRewardModel* reward, const ServerOptions& options) {
  StartSignalThread();  // does nothing when main() started it first, as it should
  SetServerLog(options.log_level, options.log_format);
  Server server(model, reward, options);
  return server.Run();
}

}  // namespace starling
