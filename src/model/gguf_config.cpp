#include "model/gguf_config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/error.h"

namespace starling {
namespace {

// Reads GGUF integers into ModelConfig's int32 fields; errors name the source and the key.
class Reader {
 public:
  Reader(const GgufFile& gguf, const std::string& source) : gguf_(gguf), source_(source) {}

  int32_t Int(const char* key) const { return Narrow(key, gguf_.GetUint(key)); }
  int32_t IntOr(const char* key, int32_t fallback) const {
    return gguf_.Has(key) ? Int(key) : fallback;
  }
  float FloatValue(const char* key, double value) const {
    const auto f = static_cast<float>(value);
    if (!std::isfinite(f)) Fail(source_, ": ", key, " = ", value, " does not fit in a float");
    return f;
  }

 private:
  int32_t Narrow(const char* key, uint64_t value) const {
    if (value > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
      Fail(source_, ": ", key, " = ", value, " does not fit in a 32-bit integer");
    }
    return static_cast<int32_t>(value);
  }

  const GgufFile& gguf_;
  const std::string& source_;
};

}  // namespace

ModelConfig ModelConfigFromGguf(const GgufFile& gguf, const std::string& source) {
  const std::string arch = gguf.GetString("general.architecture");
  if (arch != "llama") {
    Fail(source, ": general.architecture \"", arch, "\" is not supported (only \"llama\")");
  }
  // Mixtral files say "llama" too; their FFN is a mixture of experts this engine does not run.
  if (gguf.GetUintOr("llama.expert_count", 0) > 0) {
    Fail(source, ": llama.expert_count = ", gguf.GetUint("llama.expert_count"),
         ": mixture-of-experts models are not supported");
  }
  if (const std::string scaling = gguf.GetStringOr("llama.rope.scaling.type", "none");
      scaling != "none") {
    Fail(source, ": llama.rope.scaling.type \"", scaling, "\": rope scaling is not supported yet");
  }
  if (const double factor = gguf.GetFloatOr("llama.rope.scaling.factor", 0.0);
      factor != 0.0 && factor != 1.0) {
    Fail(source, ": llama.rope.scaling.factor = ", factor, ": rope scaling is not supported yet");
  }

  const Reader r(gguf, source);
  ModelConfig c;
  c.architecture = arch;
  c.hidden_size = r.Int("llama.embedding_length");
  c.intermediate_size = r.Int("llama.feed_forward_length");
  c.num_layers = r.Int("llama.block_count");
  c.num_heads = r.Int("llama.attention.head_count");
  c.num_kv_heads = r.IntOr("llama.attention.head_count_kv", c.num_heads);
  if (!gguf.Has("llama.attention.key_length")) {
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      Fail(source, ": llama.embedding_length (", c.hidden_size,
           ") is not divisible by llama.attention.head_count (", c.num_heads,
           "), and llama.attention.key_length is not set");
    }
  }
  c.head_dim =
      r.IntOr("llama.attention.key_length", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.rope_dim = r.IntOr("llama.rope.dimension_count", c.head_dim);
  c.rope_layout = RopeLayout::kInterleaved;
  c.rope_theta =
      r.FloatValue("llama.rope.freq_base", gguf.GetFloatOr("llama.rope.freq_base", 10000.0));
  c.rms_norm_eps = r.FloatValue("llama.attention.layer_norm_rms_epsilon",
                                gguf.GetFloat("llama.attention.layer_norm_rms_epsilon"));
  c.max_position_embeddings = r.Int("llama.context_length");
  c.sliding_window = r.IntOr("llama.attention.sliding_window", 0);

  if (gguf.Has("llama.vocab_size")) {
    c.vocab_size = r.Int("llama.vocab_size");
  } else if (gguf.Has("tokenizer.ggml.tokens")) {
    const size_t n = gguf.GetStringArray("tokenizer.ggml.tokens").size();
    c.vocab_size = static_cast<int32_t>(
        std::min<size_t>(n, static_cast<size_t>(std::numeric_limits<int32_t>::max())));
  } else {
    Fail(source, ": has neither llama.vocab_size nor tokenizer.ggml.tokens");
  }

  // llama.cpp's defaults for a SentencePiece vocabulary when the ids are not stored.
  c.bos_token_id = r.IntOr("tokenizer.ggml.bos_token_id", 1);
  c.eos_token_ids = {r.IntOr("tokenizer.ggml.eos_token_id", 2)};
  if (gguf.Has("tokenizer.ggml.eot_token_id")) {
    const int32_t eot = r.Int("tokenizer.ggml.eot_token_id");
    if (eot != c.eos_token_ids[0]) c.eos_token_ids.push_back(eot);
  }
  // llama.cpp's converter drops "output.weight" when the checkpoint ties it to the embeddings.
  c.tie_word_embeddings = gguf.FindTensor("output.weight") == nullptr;

  c.Validate(source);
  return c;
}

}  // namespace starling
