#include "generate/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace starling {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// Streams text while holding back anything that could still become a stop string.
class GenerationStream::StopStringFilter {
 public:
  explicit StopStringFilter(const std::vector<std::string>& stops) : stops_(stops) {}

  // Adds text; returns true once a stop string has appeared (the text before it is final).
  bool Add(std::string_view text) {
    pending_ += text;
    for (const std::string& stop : stops_) {
      if (stop.empty()) continue;
      const size_t at = pending_.find(stop);
      if (at != std::string::npos) {
        ready_ += pending_.substr(0, at);
        pending_.clear();
        return true;
      }
    }
    // Keep the longest suffix that is a prefix of some stop string.
    size_t keep = 0;
    for (const std::string& stop : stops_) {
      for (size_t n = std::min(stop.size() - 1, pending_.size()); n > keep; --n) {
        if (pending_.compare(pending_.size() - n, n, stop, 0, n) == 0) {
          keep = n;
          break;
        }
      }
    }
    ready_ += pending_.substr(0, pending_.size() - keep);
    pending_.erase(0, pending_.size() - keep);
    return false;
  }
  std::string TakeReady() { return std::exchange(ready_, {}); }
  std::string Flush() { return std::exchange(ready_, {}) + std::exchange(pending_, {}); }

 private:
  const std::vector<std::string>& stops_;
  std::string pending_;
  std::string ready_;
};

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "unknown";
}

GenerationStream::GenerationStream(const Tokenizer& tokenizer, std::span<const int32_t> prompt,
                                   const GenerationOptions& options)
    : options_(options),
      sampler_(options.sampling),
      decoder_(tokenizer, /*skip_special=*/true),
      stops_(std::make_unique<StopStringFilter>(options_.stop_strings)),
      history_(prompt.begin(), prompt.end()) {
  if (options.max_new_tokens < 0) Fail("max new tokens must not be negative");
  history_.reserve(prompt.size() + static_cast<size_t>(options.max_new_tokens));
  if (options.max_new_tokens == 0) done_ = true;
  if (!(std::isfinite(options.frequency_penalty) && std::isfinite(options.presence_penalty))) {
    Fail("frequency and presence penalties must be finite");
  }
  for (const auto& [id, bias] : options.logit_bias) {
    if (id < 0 || !std::isfinite(bias)) Fail("logit bias ", bias, " for token ", id);
  }
  if (options.top_logprobs > 0) {
    last_logprobs_.top.reserve(static_cast<size_t>(options.top_logprobs) + 1);
  }
}

namespace {

// As the sampler reads logits: NaN as -inf, +inf as the largest float.
float SaneLogit(float logit) {
  if (std::isnan(logit)) return -std::numeric_limits<float>::infinity();
  return std::min(logit, std::numeric_limits<float>::max());
}

}  // namespace

void GenerationStream::AdjustLogits(std::span<float> logits) {
  for (const auto& [id, bias] : options_.logit_bias) {
    if (static_cast<size_t>(id) >= logits.size()) {
      Fail("logit bias for token ", id, " outside the vocabulary of ", logits.size());
    }
    logits[static_cast<size_t>(id)] += bias;
  }
  if (options_.frequency_penalty == 0.0f && options_.presence_penalty == 0.0f) return;
  for (const int32_t id : distinct_) {
    const auto count = static_cast<float>(counts_[static_cast<size_t>(id)]);
    logits[static_cast<size_t>(id)] -=
        count * options_.frequency_penalty + options_.presence_penalty;
  }
}

void GenerationStream::RecordLogprobs(std::span<const float> logits) {
  raw_logits_.assign(logits.begin(), logits.end());  // allocates on the first step only
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const float x : logits) max_logit = std::max(max_logit, SaneLogit(x));
  // All -inf (or NaN): the sampler throws; nothing to normalize.
  if (!std::isfinite(max_logit)) return;
  double sum = 0;
  for (const float x : logits) sum += std::exp(double{SaneLogit(x)} - max_logit);
  log_normalizer_ = max_logit + std::log(sum);
  // The top-k by insertion into a short sorted list: k <= 20, one pass over V.
  auto& top = last_logprobs_.top;
  top.clear();
  const auto k = static_cast<size_t>(options_.top_logprobs);
  if (k == 0) return;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double x = SaneLogit(logits[i]);
    if (!std::isfinite(x) || (top.size() == k && x <= top.back().second)) continue;
    if (top.size() == k) top.pop_back();
    auto at = std::upper_bound(top.begin(), top.end(), x,
                               [](double v, const auto& e) { return v > e.second; });
    top.insert(at, {static_cast<int32_t>(i), x});
  }
  for (auto& entry : top) entry.second -= log_normalizer_;
}

GenerationStream::~GenerationStream() = default;

std::string GenerationStream::Step(std::span<float> logits) {
  if (done_) Fail("GenerationStream::Step after the stream ended");
  if (options_.top_logprobs >= 0) RecordLogprobs(logits);
  AdjustLogits(logits);
  const int32_t token = sampler_.Sample(logits, history_);
  if (options_.top_logprobs >= 0) {
    last_logprobs_.token = token;
    last_logprobs_.logprob =
        double{SaneLogit(raw_logits_[static_cast<size_t>(token)])} - log_normalizer_;
  }
  tokens_.push_back(token);
  history_.push_back(token);
  if (options_.frequency_penalty != 0.0f || options_.presence_penalty != 0.0f) {
    if (counts_.empty()) counts_.assign(logits.size(), 0);
    if (counts_[static_cast<size_t>(token)]++ == 0) distinct_.push_back(token);
  }
  const auto& stop_ids = options_.stop_token_ids;
  if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
    done_ = true;
    finish_ = FinishReason::kStop;
    stops_->Add(decoder_.Finish());
    return stops_->TakeReady();
  }
  const bool stopped = stops_->Add(decoder_.Push(token));
  std::string text = stops_->TakeReady();
  if (stopped) {
    done_ = true;
    finish_ = FinishReason::kStop;
  } else if (static_cast<int32_t>(tokens_.size()) >= options_.max_new_tokens) {
    text += End(FinishReason::kLength);
  }
  return text;
}

std::string GenerationStream::End(FinishReason reason) {
  done_ = true;
  finish_ = reason;
  if (reason == FinishReason::kCancelled) return {};
  stops_->Add(decoder_.Finish());
  return stops_->Flush();
}

GenerationResult Generate(Session& session, const Tokenizer& tokenizer,
                          std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TextCallback& on_text) {
  if (prompt.empty()) Fail("the prompt has no tokens (a model needs at least BOS)");
  GenerationStream stream(tokenizer, prompt, options);
  GenerationResult result;
  result.prompt_tokens = static_cast<int32_t>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(session.model().config().vocab_size));
  auto emit = [&](const std::string& text) {
    if (text.empty()) return true;
    result.text += text;
    return !on_text || on_text(text);
  };

  auto start = std::chrono::steady_clock::now();
  session.Forward(prompt, logits);
  result.prompt_seconds = SecondsSince(start);
  start = std::chrono::steady_clock::now();
  while (!stream.done()) {
    if (!emit(stream.Step(logits))) {
      stream.End(FinishReason::kCancelled);
      break;
    }
    if (stream.done()) break;                            // the last token needs no forward pass
    if (session.length() >= session.context_length()) {  // context full: "length"
      emit(stream.End(FinishReason::kLength));
      break;
    }
    const int32_t token = stream.token();
    session.Forward(std::span<const int32_t>(&token, 1), logits);
  }
  result.tokens = stream.tokens();
  result.finish = stream.finish();
  result.generate_seconds = SecondsSince(start);
  return result;
}

std::vector<GenerationResult> GenerateBatch(const Model& model, const Tokenizer& tokenizer,
                                            std::span<const std::vector<int32_t>> prompts,
                                            std::span<const uint64_t> seeds,
                                            const GenerationOptions& options, int64_t batch,
                                            const TokenCallback& on_token) {
  if (seeds.size() != prompts.size()) Fail("GenerateBatch: one seed per prompt");
  if (batch < 1) Fail("GenerateBatch: a batch of ", batch);
  const int32_t vocab = model.config().vocab_size;
  std::vector<GenerationResult> out(prompts.size());
  std::vector<float> raw;
  ForwardScratch scratch;
  for (size_t s = 0; s < prompts.size(); s += static_cast<size_t>(batch)) {
    const size_t n = std::min(prompts.size() - s, static_cast<size_t>(batch));
    std::vector<std::unique_ptr<Session>> sessions;
    std::vector<std::unique_ptr<GenerationStream>> streams;
    std::vector<float> logits(n * static_cast<size_t>(vocab));
    for (size_t i = 0; i < n; ++i) {
      const std::vector<int32_t>& prompt = prompts[s + i];
      if (prompt.empty()) Fail("prompt ", s + i, " has no tokens (a model needs at least BOS)");
      const auto ctx = static_cast<int32_t>(prompt.size()) + options.max_new_tokens;
      sessions.push_back(std::make_unique<Session>(model, ctx));
      const auto start = std::chrono::steady_clock::now();
      sessions.back()->Forward(prompt, std::span<float>(&logits[i * vocab], vocab));
      out[s + i].prompt_tokens = static_cast<int32_t>(prompt.size());
      out[s + i].prompt_seconds = SecondsSince(start);
      GenerationOptions g = options;
      g.sampling.seed = seeds[s + i];
      streams.push_back(std::make_unique<GenerationStream>(tokenizer, prompt, g));
    }
    const auto start = std::chrono::steady_clock::now();
    while (true) {
      std::vector<Session*> running;
      std::vector<int32_t> tokens;
      std::vector<size_t> which;
      for (size_t i = 0; i < n; ++i) {
        if (streams[i]->done()) continue;
        GenerationResult& r = out[s + i];
        const std::span<float> row(&logits[i * vocab], static_cast<size_t>(vocab));
        if (on_token) raw.assign(row.begin(), row.end());
        r.text += streams[i]->Step(row);
        const int32_t token = streams[i]->token();
        if (on_token) on_token(s + i, raw, token);
        if (streams[i]->done()) continue;
        if (sessions[i]->length() >= sessions[i]->context_length()) {
          r.text += streams[i]->End(FinishReason::kLength);
          continue;
        }
        running.push_back(sessions[i].get());
        tokens.push_back(token);
        which.push_back(i);
      }
      if (running.empty()) break;
      std::vector<float> outputs(running.size() * static_cast<size_t>(vocab));
      Session::ForwardBatch(running, tokens, outputs, &scratch);
      for (size_t k = 0; k < which.size(); ++k) {
        std::copy(outputs.begin() + static_cast<ptrdiff_t>(k * vocab),
                  outputs.begin() + static_cast<ptrdiff_t>((k + 1) * vocab),
                  logits.begin() + static_cast<ptrdiff_t>(which[k] * vocab));
      }
    }
    const double seconds = SecondsSince(start);
    for (size_t i = 0; i < n; ++i) {
      out[s + i].tokens = streams[i]->tokens();
      out[s + i].finish = streams[i]->finish();
      out[s + i].generate_seconds = seconds;
    }
  }
  return out;
}

PerplexityResult ComputePerplexity(const Model& model, const Tokenizer& tokenizer,
                                   std::string_view text, int32_t context, DType kv_type,
                                   const std::function<void(int32_t, int32_t, double)>& progress) {
  if (context < 4) Fail("perplexity context ", context, " is too small (at least 4)");
  const std::vector<int32_t> tokens =
      tokenizer.Encode(text, {.add_bos = tokenizer.add_bos_token()});
  const auto chunks = static_cast<int32_t>(tokens.size() / static_cast<size_t>(context));
  if (chunks == 0) {
    Fail("the text has ", tokens.size(), " tokens; perplexity needs at least --ctx ", context);
  }
  const int32_t vocab = model.config().vocab_size;
  Session session(model, context, kv_type);
  std::vector<float> logits(static_cast<size_t>(context) * vocab);
  std::vector<int32_t> window(static_cast<size_t>(context));
  PerplexityResult r;
  r.chunks = chunks;
  double sum = 0, sum_squares = 0;
  const int32_t first = context / 2;
  for (int32_t c = 0; c < chunks; ++c) {
    std::copy_n(tokens.begin() + static_cast<ptrdiff_t>(c) * context, context, window.begin());
    if (tokenizer.add_bos_token() && tokenizer.bos_id() >= 0) window[0] = tokenizer.bos_id();
    session.Truncate(0);
    session.Forward(window, logits, /*all_logits=*/true);
    for (int32_t j = first; j < context - 1; ++j) {
      const float* row = &logits[static_cast<size_t>(j) * vocab];
      const double max_logit = *std::max_element(row, row + vocab);
      double z = 0;
      for (int32_t i = 0; i < vocab; ++i) z += std::exp(double{row[i]} - max_logit);
      const int32_t next = tokens[static_cast<size_t>(c) * context + j + 1];
      const double nll = max_logit + std::log(z) - row[next];
      sum += nll;
      sum_squares += nll * nll;
      ++r.tokens_scored;
    }
    if (progress) progress(c + 1, chunks, std::exp(sum / static_cast<double>(r.tokens_scored)));
  }
  const auto n = static_cast<double>(r.tokens_scored);
  r.mean_nll = sum / n;
  const double variance = sum_squares / n - r.mean_nll * r.mean_nll;
  r.nll_stderr = n > 1 ? std::sqrt(std::max(0.0, variance) / (n - 1)) : 0;
  r.perplexity = std::exp(r.mean_nll);
  r.perplexity_stderr = r.perplexity * r.nll_stderr;
  return r;
}

}  // namespace starling
