#include "server/engine.h"

#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "server/server_log.h"

namespace starling {

std::vector<JobPiece> Job::Wait(int timeout_ms, bool* finished) {
  std::unique_lock lock(mutex_);
  ready_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                  [&] { return !pending_.empty() || finished_; });
  *finished = finished_;
  return std::exchange(pending_, {});
}

void Job::Deliver(JobPiece piece, int64_t completion_tokens) {
  {
    std::lock_guard lock(mutex_);
    pending_.push_back(std::move(piece));
    completion_tokens_ = completion_tokens;
  }
  ready_.notify_all();
}

void Job::Finish(FinishReason reason, int64_t completion_tokens) {
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
    finish_ = reason;
    completion_tokens_ = completion_tokens;
  }
  ready_.notify_all();
}

void Job::FinishWithError(std::string message, int64_t completion_tokens) {
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
    finish_ = FinishReason::kCancelled;
    error_ = std::move(message);
    completion_tokens_ = completion_tokens;
  }
  ready_.notify_all();
}

Engine::Engine(const Model& model, const Tokenizer& tokenizer, int slots, int32_t context,
               int queue_limit, DType kv_type)
    : model_(model), tokenizer_(tokenizer), context_(context), queue_limit_(queue_limit) {
  if (slots < 1) Fail("the server needs at least one slot (--parallel)");
  if (queue_limit < 0) Fail("the queue limit must not be negative");
  slots_.resize(static_cast<size_t>(slots));
  for (Slot& slot : slots_) slot.session = std::make_unique<Session>(model, context, kv_type);
  logits_.resize(static_cast<size_t>(slots) * static_cast<size_t>(model.config().vocab_size));
  thread_ = std::thread([this] {
    try {
      Loop();
    } catch (...) {
      // The loop's own bookkeeping failed (say, out of memory): rather than end the process,
      // every job fails with the reason and no new one is taken.
      const std::string message = CurrentExceptionMessage();
      ServerLog(LogLevel::kError, "the engine stopped: " + message);
      EndAll(message);
    }
  });
}

Engine::~Engine() {
  Shutdown();
}

std::shared_ptr<Job> Engine::Submit(std::vector<int32_t> prompt, GenerationOptions options) {
  auto job = std::make_shared<Job>(std::move(prompt), std::move(options));
  {
    std::lock_guard lock(mutex_);
    if (stop_ || draining_) return nullptr;
    size_t busy = 0;
    for (const Slot& slot : slots_) busy += slot.job != nullptr;
    // Free slots take jobs at once; beyond them, at most queue_limit_ wait.
    if (queue_.size() >= slots_.size() - busy + static_cast<size_t>(queue_limit_)) return nullptr;
    queue_.push_back(job);
  }
  wake_.notify_all();
  return job;
}

void Engine::Drain(std::chrono::milliseconds timeout) {
  {
    std::unique_lock lock(mutex_);
    draining_ = true;
    idle_.wait_for(lock, timeout, [&] {
      if (stop_) return true;
      for (const Slot& slot : slots_) {
        if (slot.job != nullptr) return false;
      }
      return queue_.empty();
    });
  }
  Shutdown();
}

bool Engine::stopping() const {
  std::lock_guard lock(mutex_);
  return stop_ || draining_;
}

void Engine::Shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mutex_);
  EngineStats stats = stats_;
  for (const Slot& slot : slots_) stats.busy_slots += slot.job != nullptr;
  stats.queued = static_cast<int64_t>(queue_.size());
  return stats;
}

void Engine::Release(Slot& slot) {
  slot.stream.reset();
  slot.logprobs.clear();
  {
    std::lock_guard lock(mutex_);
    slot.job.reset();
  }
  idle_.notify_all();
}

void Engine::FailSlot(Slot& slot) {
  std::string message = CurrentExceptionMessage();
  ServerLog(LogLevel::kError, "a generation failed: " + message);
  const int64_t generated =
      slot.stream != nullptr ? static_cast<int64_t>(slot.stream->tokens().size()) : 0;
  // The cache may hold a partly processed prompt: start the slot's next job afresh.
  slot.session->Truncate(0);
  slot.job->FinishWithError(std::move(message), generated);
  Release(slot);
}

namespace {
size_t CommonPrefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}
}  // namespace

Engine::Slot* Engine::BestFreeSlot(const std::vector<int32_t>& prompt) {
  Slot* best = nullptr;
  size_t best_shared = 0;
  for (Slot& slot : slots_) {
    if (slot.job != nullptr) continue;
    const size_t shared = CommonPrefix(slot.session->tokens(), prompt);
    if (best == nullptr || shared > best_shared) {
      best = &slot;
      best_shared = shared;
    }
  }
  return best;
}

void Engine::Start(Slot& slot, std::shared_ptr<Job> job) {
  slot.job = std::move(job);
  Job& j = *slot.job;
  const std::span<float> logits(logits_.data(), static_cast<size_t>(model_.config().vocab_size));
  try {
    // Reuse the cached prefix, but run at least the prompt's last token: its logits start the
    // generation. The forward pass gives each position the same bits either way.
    const auto reuse = static_cast<size_t>(slot.session->ReusePrefix(j.prompt_));
    slot.stream = std::make_unique<GenerationStream>(tokenizer_, j.prompt_, j.options_);
    slot.session->Forward(std::span(j.prompt_).subspan(reuse), logits);
    {
      std::lock_guard lock(mutex_);
      stats_.prompt_tokens += static_cast<int64_t>(j.prompt_.size());
      stats_.prompt_reused += static_cast<int64_t>(reuse);
    }
    if (slot.stream->done()) {  // max_tokens 0
      j.Finish(slot.stream->finish(), 0);
      Release(slot);
      return;
    }
    Advance(slot, logits);
  } catch (...) {
    // The handler validated the request: this is a bug, a resource problem or a model whose
    // numbers broke down (e.g. NaN logits). Only this request fails.
    FailSlot(slot);
  }
}

void Engine::Advance(Slot& slot, std::span<float> logits) {
  Job& j = *slot.job;
  std::string text = slot.stream->Step(logits);
  const auto generated = static_cast<int64_t>(slot.stream->tokens().size());
  if (j.options_.top_logprobs >= 0) slot.logprobs.push_back(slot.stream->last_logprobs());
  if (!slot.stream->done() && slot.session->length() >= slot.session->context_length()) {
    text += slot.stream->End(FinishReason::kLength);
  }
  // Text goes out at once; log-probabilities with it, or with the last piece.
  if (!text.empty() || (slot.stream->done() && !slot.logprobs.empty())) {
    j.Deliver({std::move(text), std::exchange(slot.logprobs, {})}, generated);
  }
  if (slot.stream->done()) {
    j.Finish(slot.stream->finish(), generated);
    Release(slot);
  }
}

void Engine::Loop() {
  const int64_t vocab = model_.config().vocab_size;
  std::vector<Session*> sessions;
  std::vector<int32_t> tokens;
  std::vector<Slot*> active;
  while (true) {
    std::vector<std::pair<Slot*, std::shared_ptr<Job>>> admitted;
    {
      std::unique_lock lock(mutex_);
      auto has_work = [&] {
        if (stop_) return true;
        for (const Slot& slot : slots_) {
          if (slot.job != nullptr || !queue_.empty()) return true;
        }
        return false;
      };
      wake_.wait(lock, has_work);
      if (stop_) break;
      while (!queue_.empty()) {
        Slot* slot = BestFreeSlot(queue_.front()->prompt_);
        if (slot == nullptr) break;
        admitted.emplace_back(slot, std::move(queue_.front()));
        queue_.pop_front();
        slot->job = admitted.back().second;  // reserved; Start runs outside the lock
      }
    }
    for (auto& [slot, job] : admitted) {
      if (job->cancelled_) {
        job->Finish(FinishReason::kCancelled, 0);
        Release(*slot);
        continue;
      }
      Start(*slot, job);
    }
    // One decode step for every active slot together.
    sessions.clear();
    tokens.clear();
    active.clear();
    for (Slot& slot : slots_) {
      if (slot.job == nullptr || slot.stream == nullptr) continue;
      if (slot.job->cancelled_) {
        slot.stream->End(FinishReason::kCancelled);
        slot.job->Finish(FinishReason::kCancelled,
                         static_cast<int64_t>(slot.stream->tokens().size()));
        Release(slot);
        continue;
      }
      sessions.push_back(slot.session.get());
      tokens.push_back(slot.stream->token());
      active.push_back(&slot);
    }
    if (active.empty()) continue;
    try {
      Session::ForwardBatch(sessions, tokens, logits_, &scratch_);
    } catch (...) {
      // Which slot's state is consistent is unknown: every job of the step fails.
      for (Slot* slot : active) FailSlot(*slot);
      continue;
    }
    {
      std::lock_guard lock(mutex_);
      stats_.steps += 1;
      stats_.batched_rows += static_cast<int64_t>(active.size());
    }
    for (size_t i = 0; i < active.size(); ++i) {
      try {
        Advance(*active[i], std::span(logits_).subspan(i * static_cast<size_t>(vocab),
                                                       static_cast<size_t>(vocab)));
      } catch (...) {  // e.g. all logits NaN: this job fails, the others go on
        FailSlot(*active[i]);
      }
    }
  }
  EndAll({});  // shutdown: everything still queued or running ends as cancelled
}

void Engine::EndAll(const std::string& error) {
  const std::lock_guard lock(mutex_);
  // Drain waits under the same mutex: it sees stop_ once this returns.
  idle_.notify_all();
  stop_ = true;
  auto end = [&](Job& job, int64_t generated) {
    if (error.empty()) {
      job.Finish(FinishReason::kCancelled, generated);
    } else {
      job.FinishWithError(error, generated);
    }
  };
  for (auto& job : queue_) end(*job, 0);
  queue_.clear();
  for (Slot& slot : slots_) {
    if (slot.job != nullptr) {
      end(*slot.job,
          slot.stream != nullptr ? static_cast<int64_t>(slot.stream->tokens().size()) : 0);
      slot.stream.reset();
      slot.logprobs.clear();
      slot.job.reset();
    }
  }
}

}  // namespace starling
