#include "model/config.h"

#include "core/error.h"

namespace starling {

void ModelConfig::Validate(const std::string& source) const {
  auto positive = [&](const char* name, int64_t value, int64_t limit) {
    if (value <= 0 || value > limit) {
      Fail(source, ": ", name, " = ", value, " is out of range (1..", limit, ")");
    }
  };
  positive("vocab_size", vocab_size, 1 << 24);
  positive("hidden_size", hidden_size, 1 << 16);
  positive("intermediate_size", intermediate_size, 1 << 18);
  positive("num_hidden_layers", num_layers, 1024);
  positive("num_attention_heads", num_heads, 1024);
  positive("num_key_value_heads", num_kv_heads, 1024);
  positive("head_dim", head_dim, 1024);
  positive("max_position_embeddings", max_position_embeddings, 1 << 24);
  if (num_heads % num_kv_heads != 0) {
    Fail(source, ": num_attention_heads (", num_heads,
         ") is not a multiple of num_key_value_heads (", num_kv_heads, ")");
  }
  if (rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2 != 0) {
    Fail(source, ": rotary dimension ", rope_dim, " must be even and at most head_dim (", head_dim,
         ")");
  }
  if (!(rope_theta > 0.0f)) Fail(source, ": rope_theta = ", rope_theta, " must be positive");
  if (!(rms_norm_eps > 0.0f) || rms_norm_eps > 1.0f) {
    Fail(source, ": rms_norm_eps = ", rms_norm_eps, " is out of range (0, 1]");
  }
  if (sliding_window < 0) Fail(source, ": sliding_window = ", sliding_window, " is negative");
  if (bos_token_id < -1 || bos_token_id >= vocab_size) {
    Fail(source, ": bos_token_id = ", bos_token_id, " is outside the vocabulary (", vocab_size,
         ")");
  }
  for (const int32_t eos : eos_token_ids) {
    if (eos < 0 || eos >= vocab_size) {
      Fail(source, ": eos_token_id = ", eos, " is outside the vocabulary (", vocab_size, ")");
    }
  }
}

}  // namespace starling
