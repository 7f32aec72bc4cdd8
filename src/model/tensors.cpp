#include "model/tensors.h"

namespace starling {

std::vector<TensorSpec> ModelTensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size, v = c.vocab_size, f = c.intermediate_size;
  const int64_t q_rows = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_rows = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<TensorSpec> out;
  out.push_back({"model.embed_tokens.weight", {v, d}, TensorRole::kEmbedding, -1});
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {d}, TensorRole::kAttnNorm, i});
    out.push_back({p + "self_attn.q_proj.weight", {q_rows, d}, TensorRole::kWq, i});
    out.push_back({p + "self_attn.k_proj.weight", {kv_rows, d}, TensorRole::kWk, i});
    out.push_back({p + "self_attn.v_proj.weight", {kv_rows, d}, TensorRole::kWv, i});
    out.push_back({p + "self_attn.o_proj.weight", {d, q_rows}, TensorRole::kWo, i});
    out.push_back({p + "post_attention_layernorm.weight", {d}, TensorRole::kFfnNorm, i});
    out.push_back({p + "mlp.gate_proj.weight", {f, d}, TensorRole::kGate, i});
    out.push_back({p + "mlp.up_proj.weight", {f, d}, TensorRole::kUp, i});
    out.push_back({p + "mlp.down_proj.weight", {d, f}, TensorRole::kDown, i});
  }
  out.push_back({"model.norm.weight", {d}, TensorRole::kFinalNorm, -1});
  if (c.head == ModelHead::kReward) {
    out.push_back({"score.weight", {1, d}, TensorRole::kScore, -1});
  } else if (!c.tie_word_embeddings) {
    out.push_back({"lm_head.weight", {v, d}, TensorRole::kLmHead, -1});
  }
  if (c.value_head && c.head == ModelHead::kLanguageModel) {
    out.push_back({"value_head.weight", {1, d}, TensorRole::kValue, -1});
  }
  return out;
}

}  // namespace starling
