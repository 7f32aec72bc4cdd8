// The generation loop: prompt -> KV cache -> sample -> stream text, with stop conditions.
// Also perplexity over a text, as llama.cpp's perplexity tool computes it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "generate/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace starling {

struct GenerationOptions {
  int32_t max_new_tokens = 256;
  SamplerConfig sampling;
  std::vector<int32_t> stop_token_ids;    // the model's EOS ids, the template's end of turn
  std::vector<std::string> stop_strings;  // generated text is cut before the first match
  // OpenAI's penalties over the generated tokens (not the prompt), before the sampler:
  // logit[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty.
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  // Added to the logits of these ids (each in [0, V)) before the penalties and the sampler.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // -1: off. Else Step records the sampled token's log-probability and its `top_logprobs`
  // most likely alternatives (last_logprobs), from the model's logits as they came (before
  // the bias, penalties, temperature and top-p).
  int32_t top_logprobs = -1;
};

// A sampled token's log-probability under the model's distribution and the `top_logprobs`
// most likely tokens (most likely first, ties by the lower id).
struct TokenLogprobs {
  int32_t token = -1;
  double logprob = 0;
  std::vector<std::pair<int32_t, double>> top;
};

enum class FinishReason { kStop, kLength, kCancelled };
const char* FinishReasonName(FinishReason reason);  // "stop", "length", "cancelled"

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, the stop token included when one was sampled
  std::string text;             // what was streamed: special tokens skipped, stop string cut
  FinishReason finish = FinishReason::kLength;
  int32_t prompt_tokens = 0;
  double prompt_seconds = 0;    // time to process the prompt
  double generate_seconds = 0;  // time for the generated tokens
};

// One sequence's sampling and text state after its prompt: what Generate runs per token, and
// what a server runs per slot between batched forward passes. Text is final when returned:
// special tokens skipped, characters never split, stop strings cut (and held back while a
// match is still possible).
class GenerationStream {
 public:
  // Throws starling::Error for bad options. `prompt` seeds the repetition-penalty history.
  GenerationStream(const Tokenizer& tokenizer, std::span<const int32_t> prompt,
                   const GenerationOptions& options);
  ~GenerationStream();
  GenerationStream(const GenerationStream&) = delete;
  GenerationStream& operator=(const GenerationStream&) = delete;

  // Samples the next token from `logits` (used as scratch) and returns the text that became
  // final. Afterwards either done(), or token() must run through the model to give the next
  // logits.
  std::string Step(std::span<float> logits);
  // Ends the stream early: kLength (e.g. the context is full) flushes held-back text and
  // returns it; kCancelled returns nothing more.
  std::string End(FinishReason reason);

  bool done() const { return done_; }
  FinishReason finish() const { return finish_; }
  int32_t token() const { return tokens_.back(); }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // generated so far
  // The last Step's token with its log-probabilities (when options.top_logprobs >= 0).
  const TokenLogprobs& last_logprobs() const { return last_logprobs_; }

 private:
  class StopStringFilter;
  // Writes logit_bias and the frequency/presence penalties into `logits`.
  void AdjustLogits(std::span<float> logits);
  // Log-softmax statistics of the unadjusted logits, before the sampler overwrites them.
  void RecordLogprobs(std::span<const float> logits);
  const GenerationOptions options_;
  Sampler sampler_;
  StreamDecoder decoder_;
  std::unique_ptr<StopStringFilter> stops_;
  std::vector<int32_t> history_;
  std::vector<int32_t> tokens_;
  std::vector<int32_t> counts_;    // [V] occurrences of each id in tokens_ (penalties only)
  std::vector<int32_t> distinct_;  // the ids with counts_ > 0, in order of first occurrence
  std::vector<float> raw_logits_;  // [V] the last Step's logits as given (logprobs only)
  double log_normalizer_ = 0;      // log sum exp of raw_logits_
  TokenLogprobs last_logprobs_;
  bool done_ = false;
  FinishReason finish_ = FinishReason::kLength;
};

// Called with each piece of text as it becomes final; return false to cancel.
using TextCallback = std::function<bool(std::string_view)>;

// Processes `prompt` after what `session` already holds, then generates. On return the
// session holds the prompt and every generated token except the last sampled one (which
// was never run through the model). Throws starling::Error when the prompt does not fit.
GenerationResult Generate(Session& session, const Tokenizer& tokenizer,
                          std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TextCallback& on_text = {});

// Generates from several prompts at once (offline batches: evaluation, rollouts): up to `batch`
// sequences decoded together, one Session each and one Session::ForwardBatch per step, so the
// weights are read once per step for all of them. Prompt i samples with seed seeds[i] (it
// overrides options.sampling.seed); each session holds prompt + max_new_tokens positions.
// `on_token(i, logits, token)`, when set, sees every sampled token with the raw logits [V] it
// was drawn from (before the sampler touched them). Results in prompt order; greedy results
// equal Generate's.
using TokenCallback =
    std::function<void(size_t index, std::span<const float> logits, int32_t token)>;
std::vector<GenerationResult> GenerateBatch(const Model& model, const Tokenizer& tokenizer,
                                            std::span<const std::vector<int32_t>> prompts,
                                            std::span<const uint64_t> seeds,
                                            const GenerationOptions& options, int64_t batch,
                                            const TokenCallback& on_token = {});

struct PerplexityResult {
  int32_t chunks = 0;
  int64_t tokens_scored = 0;
  double mean_nll = 0;    // nats per token
  double nll_stderr = 0;  // standard error of the mean
  double perplexity = 0;  // exp(mean_nll)
  double perplexity_stderr = 0;
};

// Splits the tokenized text (BOS first) into non-overlapping windows of `context` tokens,
// makes each window start with BOS, and scores the second half of every window (each token
// predicted with at least context/2 tokens of history), as llama.cpp's perplexity tool does.
// `kv_type`: the session's KV cache element type (F32 or F16).
PerplexityResult ComputePerplexity(
    const Model& model, const Tokenizer& tokenizer, std::string_view text, int32_t context,
    DType kv_type = DType::kF32,
    const std::function<void(int32_t, int32_t, double)>& progress = {});

}  // namespace starling
