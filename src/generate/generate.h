// The generation loop: prompt -> KV cache -> sample -> stream text, with stop conditions.
// Also perplexity over a text, as llama.cpp's perplexity tool computes it.
#pragma once

#include <cstdint>
#include <functional>
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

// Called with each piece of text as it becomes final; return false to cancel.
using TextCallback = std::function<bool(std::string_view)>;

// Processes `prompt` after what `session` already holds, then generates. On return the
// session holds the prompt and every generated token except the last sampled one (which
// was never run through the model). Throws starling::Error when the prompt does not fit.
GenerationResult Generate(Session& session, const Tokenizer& tokenizer,
                          std::span<const int32_t> prompt, const GenerationOptions& options,
                          const TextCallback& on_text = {});

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
PerplexityResult ComputePerplexity(
    const Model& model, const Tokenizer& tokenizer, std::string_view text, int32_t context,
    const std::function<void(int32_t, int32_t, double)>& progress = {});

}  // namespace starling
