// The generation engine behind the server: a fixed number of slots (each a Session with its
// own KV cache) and a bounded queue. One thread runs everything on the model: it admits queued
// requests into free slots (prompt processing, one request at a time), then runs one decode
// step for every active slot together (Session::ForwardBatch: continuous batching; requests
// join and leave between steps). Request threads wait on their Job for text.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "generate/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace starling {

// What a Job hands its request at once: the text of one generated token (maybe empty), and
// the log-probabilities of the tokens generated since the last piece (when asked for).
struct JobPiece {
  std::string text;
  std::vector<TokenLogprobs> logprobs;
};

// One request's exchange with the engine.
class Job {
 public:
  Job(std::vector<int32_t> prompt, GenerationOptions options)
      : prompt_(std::move(prompt)), options_(std::move(options)) {}

  // Waits up to `timeout_ms` for text; returns the pieces that arrived, one per generated
  // token that completed some text (maybe none), and a last one with the log-probabilities of
  // tokens that completed no text when the job ends. `finished` is set once the job has ended
  // and all its pieces have been returned.
  std::vector<JobPiece> Wait(int timeout_ms, bool* finished);
  // Asks the engine to stop this job (client gone); it frees the slot at its next step.
  void Cancel() { cancelled_ = true; }

  FinishReason finish() const { return finish_; }
  // Once finished: why the job failed (the engine could not complete it; the request gets a
  // server error), or empty when it ended normally or was cancelled.
  const std::string& error() const { return error_; }
  int64_t completion_tokens() const { return completion_tokens_; }
  int64_t prompt_tokens() const { return static_cast<int64_t>(prompt_.size()); }

 private:
  friend class Engine;
  void Deliver(JobPiece piece, int64_t completion_tokens);
  void Finish(FinishReason reason, int64_t completion_tokens);
  void FinishWithError(std::string message, int64_t completion_tokens);

  const std::vector<int32_t> prompt_;
  const GenerationOptions options_;
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<JobPiece> pending_;
  bool finished_ = false;
  FinishReason finish_ = FinishReason::kLength;
  std::string error_;
  int64_t completion_tokens_ = 0;
};

struct EngineStats {
  int64_t steps = 0;          // batched decode steps
  int64_t batched_rows = 0;   // sum of batch sizes over the steps
  int64_t prompt_tokens = 0;  // prompt tokens of started requests
  int64_t prompt_reused = 0;  // of which came from a slot's cache
  int64_t busy_slots = 0;     // slots running a request now
  int64_t queued = 0;         // requests waiting for a slot now
};

class Engine {
 public:
  // `slots` sessions of `context` positions with KV caches of `kv_type` (F32 or F16, see
  // Session); at most `queue_limit` requests wait for a slot.
  Engine(const Model& model, const Tokenizer& tokenizer, int slots, int32_t context,
         int queue_limit, DType kv_type = DType::kF32);
  ~Engine();  // cancels everything and joins

  // Queues a job. Returns nullptr when the queue is full or the engine is stopping (the caller
  // answers 503).
  std::shared_ptr<Job> Submit(std::vector<int32_t> prompt, GenerationOptions options);
  // Takes no new job, waits up to `timeout` for the queued and running ones to end, then
  // cancels what is left and stops the thread (Shutdown).
  void Drain(std::chrono::milliseconds timeout);
  // Cancels queued and running jobs and stops the thread; idempotent.
  void Shutdown();
  // True once Drain or Shutdown has begun (or the engine failed): Submit refuses every job.
  bool stopping() const;

  int32_t context() const { return context_; }
  EngineStats stats() const;

 private:
  struct Slot {
    std::unique_ptr<Session> session;
    std::shared_ptr<Job> job;
    std::unique_ptr<GenerationStream> stream;
    std::vector<TokenLogprobs> logprobs;  // of tokens whose text has not been delivered yet
    // The session keeps its ids after the job ends (Session::tokens): the next job that starts
    // with the same tokens (the next turn of a chat) runs only what follows them.
  };
  // The free slot whose cache shares the longest prefix with `prompt` (nullptr: none free).
  Slot* BestFreeSlot(const std::vector<int32_t>& prompt);
  void Loop();
  void Start(Slot& slot, std::shared_ptr<Job> job);
  void Advance(Slot& slot, std::span<float> logits);  // one sampled step of an active slot
  void Release(Slot& slot);
  // Ends the slot's job with an error (the exception being handled) and frees the slot; the
  // other slots go on.
  void FailSlot(Slot& slot);
  // Ends every queued and running job (cancelled, or failed with `error` when it is not
  // empty) and refuses new ones.
  void EndAll(const std::string& error);

  const Model& model_;
  const Tokenizer& tokenizer_;
  const int32_t context_;
  const int queue_limit_;
  std::vector<Slot> slots_;
  ForwardScratch scratch_;
  std::vector<float> logits_;  // [slots, V]

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;  // a slot was released (Drain waits for all of them)
  std::deque<std::shared_ptr<Job>> queue_;
  bool draining_ = false;
  bool stop_ = false;
  EngineStats stats_;
  std::thread thread_;
};

}  // namespace starling
