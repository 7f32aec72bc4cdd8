// The hyperparameters of a Llama/Mistral-architecture decoder, as validated data.
// Shape vocabulary used in comments across src/model and src/kernels:
//   B batch, T tokens, D hidden, H heads, KVH key/value heads, Dh head dim,
//   F feed-forward (intermediate), V vocabulary, L layers, S cached positions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace starling {

// How rotary embeddings pair up the dimensions of a head.
enum class RopeLayout {
  kHalves,       // Hugging Face checkpoints: dimension i pairs with i + Dh/2
  kInterleaved,  // GGUF llama files: dimension 2i pairs with 2i + 1 (Q/K rows permuted)
};

// What the final hidden state is mapped to.
enum class ModelHead {
  kLanguageModel,  // lm_head.weight [V, D] (or the tied embedding): next-token logits
  kReward,         // score.weight [1, D] (Starling-RM's v_head, HF's *ForSequenceClassification)
};

struct ModelConfig {
  std::string architecture;       // "MistralForCausalLM", "LlamaForCausalLM", "llama" (GGUF)
  int32_t vocab_size = 0;         // V
  int32_t hidden_size = 0;        // D
  int32_t intermediate_size = 0;  // F
  int32_t num_layers = 0;         // L
  int32_t num_heads = 0;          // H
  int32_t num_kv_heads = 0;       // KVH; H must be a multiple
  int32_t head_dim = 0;           // Dh; usually D / H
  int32_t rope_dim = 0;           // dimensions rotated per head (Dh unless GGUF says less)
  float rope_theta = 10000.0f;
  float rms_norm_eps = 1e-5f;
  int32_t sliding_window = 0;  // 0: full causal attention
  int32_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  RopeLayout rope_layout = RopeLayout::kHalves;
  int32_t bos_token_id = 1;
  std::vector<int32_t> eos_token_ids;  // generation stops on any of these
  ModelHead head = ModelHead::kLanguageModel;
  // Training only (policy tuning): a [1, D] value head beside the language-model head,
  // "value_head.weight". Not written to config.json: a saved policy carries the tensor, which
  // inference ignores.
  bool value_head = false;

  // Outputs per position: V for a language model, 1 for a reward model.
  int64_t output_size() const { return head == ModelHead::kReward ? 1 : vocab_size; }

  // Checks ranges and consistency; throws starling::Error naming `source` and the field.
  void Validate(const std::string& source) const;
};

}  // namespace starling
