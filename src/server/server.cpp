#include "server/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/signals.h"
#include "server/engine.h"
#include "server/openai_api.h"
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
  res.set_content(ErrorBody(error), "application/json");
}

// The error a request gets when the engine could not complete its job.
ApiError GenerationFailed(const Job& job) {
  return ApiError(500, "server_error", "generation failed: " + job.error(), "",
                  "generation_failed");
}

ApiError ShuttingDown() {
  return ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
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
                options.kv_type) {
    if (reward_ != nullptr) {
      reward_scorer_ =
          std::make_unique<RewardScorer>(*reward_->model, *reward_->tokenizer, options.context);
    }
    // The chat template is chosen once, at start, so a bad --template fails before serving. A
    // model with no known template (e.g. a base model) gets its messages as one raw prompt.
    if (!options_.template_name.empty() || !model_.chat_template_jinja.empty()) {
      chat_template_ = &model_.ChooseTemplate(options_.template_name);
    } else {
      std::fprintf(stderr,
                   "starling serve: %s has no chat template; chat messages are joined into one "
                   "raw prompt (use --template to choose one)\n",
                   options_.model_name.c_str());
    }
  }

  int Run() {
    // Streaming requests hold a worker while they wait for tokens: enough workers for every
    // slot and queued request, plus some for quick requests.
    const int workers = options_.parallel + options_.queue + 8;
    http_.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
    http_.set_payload_max_length(options_.max_body_bytes);
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      return Authorize(req, res);
    });
    http_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      const char* type = res.status >= 500 ? "server_error" : "invalid_request_error";
      std::string message = Concat("HTTP ", res.status);
      if (res.status == 413) message = "request body too large";
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
            SendError(res, ApiError(400, "invalid_request_error", e.what()));
          } catch (...) {
            SendError(res, ApiError(500, "server_error", CurrentExceptionMessage()));
          }
        });
    http_.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(ChatPageHtml()), "text/html; charset=utf-8");
    });
    http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const EngineStats stats = engine_.stats();
      SendJson(res, 200,
               {{"status", "ok"},
                {"slots", options_.parallel},
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
    http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Complete(ParseChatCompletionRequest(req.body), res);
    });
    http_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Complete(ParseCompletionRequest(req.body), res);
    });
    http_.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
      const TokenizeRequest r = ParseTokenizeRequest(req.body);
      const Tokenizer& tok = *model_.tokenizer;
      SendJson(res, 200,
               {{"tokens", tok.Encode(r.content, {.add_bos = r.add_special && tok.add_bos_token(),
                                                  .parse_special = true})}});
    });
    http_.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
      const DetokenizeRequest r = ParseDetokenizeRequest(req.body);
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
    http_.Post("/v1/rewards", [this](const httplib::Request& req, httplib::Response& res) {
      Rewards(ParseRewardsRequest(req.body), res);
    });

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
        std::fprintf(stderr, "starling serve: signal %d, shutting down (draining up to %d s)\n",
                     signal, options_.drain_seconds);
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
    std::fprintf(stderr, "starling serve: %s on http://%s:%d (%d slots, context %d, %s KV cache)\n",
                 options_.model_name.c_str(), options_.host.c_str(), port, options_.parallel,
                 options_.context, DTypeName(options_.kv_type));
    std::fflush(stderr);
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

  httplib::Server::HandlerResponse Authorize(const httplib::Request& req, httplib::Response& res) {
    if (shutting_down_) {
      SendError(res, ShuttingDown());
      return httplib::Server::HandlerResponse::Handled;
    }
    if (options_.api_key.empty() || !ProtectedPath(req.path)) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (req.get_header_value("Authorization") == "Bearer " + options_.api_key) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    SendError(res, ApiError(401, "authentication_error",
                            "missing or wrong API key (send 'Authorization: Bearer KEY')", "",
                            "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  }

  void CheckModel(const std::string& name, const std::string& served) const {
    if (!name.empty() && name != served) {
      throw ApiError(
          404, "invalid_request_error",
          Concat("The model '", name, "' does not exist (this server has '", served, "')"), "model",
          "model_not_found");
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
    p.stream = r.stream;
    p.include_usage = r.include_usage;
    return p;
  }

  void Complete(const ChatCompletionRequest& r, httplib::Response& res) {
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
    Prepared p = Prepare(r, tok.Encode(r.prompt, {.add_bos = tok.add_bos_token()}));
    if (p.prompt.empty()) throw ApiError(400, "invalid_request_error", "empty prompt", "prompt");
    p.options.stop_token_ids = model_.StopTokens(nullptr);
    Run(std::move(p), /*chat=*/false, res);
  }

  void Run(Prepared p, bool chat, httplib::Response& res) {
    const Usage usage_prompt{static_cast<int64_t>(p.prompt.size()), 0};
    std::shared_ptr<Job> job = engine_.Submit(std::move(p.prompt), std::move(p.options));
    if (job == nullptr) {
      if (engine_.stopping()) throw ShuttingDown();
      throw ApiError(503, "server_error",
                     "the server is busy: every slot is taken and the queue is full; retry "
                     "later",
                     "", "overloaded");
    }
    const std::string id = NewId(chat ? "chatcmpl" : "cmpl");
    const std::string model = options_.model_name;
    const int64_t created = Now();
    if (!p.stream) {
      std::string text;
      for (bool finished = false; !finished;) {
        for (const std::string& piece : job->Wait(1000, &finished)) text += piece;
      }
      if (!job->error().empty()) throw GenerationFailed(*job);
      if (job->finish() == FinishReason::kCancelled) {
        throw ApiError(503, "server_error", "the request was cancelled (server shutting down)");
      }
      const Usage usage{usage_prompt.prompt_tokens, job->completion_tokens()};
      const std::string reason = FinishReasonName(job->finish());
      SendJson(res, 200,
               chat ? ChatCompletionResponse(id, model, created, text, reason, usage)
                    : CompletionResponse(id, model, created, text, reason, usage));
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    auto started = std::make_shared<bool>(false);
    // Counts this stream as open until httplib has written it and dropped the provider.
    ++open_streams_;
    auto open = std::shared_ptr<void>(nullptr, [this](void*) { --open_streams_; });
    // Called on an HTTP worker outside httplib's exception handling: nothing may escape it.
    auto provide = [=](size_t, httplib::DataSink& sink) {
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
      if (!*started) {
        *started = true;
        if (chat && !send(ChatCompletionChunk(id, model, created, "assistant", "", {}))) {
          job->Cancel();
          return false;
        }
      }
      bool finished = false;
      const std::vector<std::string> pieces = job->Wait(200, &finished);
      // One event per token's text, as OpenAI streams, however fast they were generated.
      for (const std::string& text : pieces) {
        const bool ok = send(chat ? ChatCompletionChunk(id, model, created, {}, text, {})
                                  : CompletionChunk(id, model, created, text, {}));
        if (!ok) {  // the client went away: free the slot
          job->Cancel();
          return false;
        }
      }
      if (pieces.empty() && !finished && !sink.is_writable()) {
        job->Cancel();
        return false;
      }
      if (!finished) return true;
      // A failed generation ends the stream with OpenAI's error object, then [DONE].
      if (!job->error().empty()) {
        send(ErrorJson(GenerationFailed(*job)));
        return end_stream();
      }
      const std::string reason = FinishReasonName(job->finish());
      send(chat ? ChatCompletionChunk(id, model, created, {}, {}, reason)
                : CompletionChunk(id, model, created, "", reason));
      if (p.include_usage) {
        send(UsageChunk(id, model, created, {usage_prompt.prompt_tokens, job->completion_tokens()},
                        chat ? "chat.completion.chunk" : "text_completion"));
      }
      return end_stream();
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [job, provide, open](size_t offset, httplib::DataSink& sink) {
          try {
            return provide(offset, sink);
          } catch (...) {
            std::fprintf(stderr, "starling serve: a stream failed: %s\n",
                         CurrentExceptionMessage().c_str());
            job->Cancel();
            return false;
          }
        },
        [job](bool success) {
          if (!success) job->Cancel();
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
      data.push_back({{"index", i},
                      {"object", "reward"},
                      {"reward", reward_scorer_->Score(ids)},
                      {"tokens", ids.size()}});
    }
    SendJson(res, 200, {{"object", "list"}, {"model", options_.reward_model_name}, {"data", data}});
  }

  const LoadedModel& model_;
  LoadedRewardModel* reward_;
  const ServerOptions options_;
  Engine engine_;
  const ChatTemplate* chat_template_ = nullptr;
  std::unique_ptr<RewardScorer> reward_scorer_;
  std::mutex reward_mutex_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<int> open_streams_{0};  // streaming responses not yet fully written
  std::atomic<bool> listen_returned_{false};
  httplib::Server http_;
};

}  // namespace

int Serve(const LoadedModel& model, LoadedRewardModel* reward, const ServerOptions& options) {
  StartSignalThread();  // does nothing when main() started it first, as it should
  Server server(model, reward, options);
  return server.Run();
}

}  // namespace starling
