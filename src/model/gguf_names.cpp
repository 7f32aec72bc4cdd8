#include "model/gguf_names.h"

#include <array>
#include <utility>

#include "core/error.h"

namespace starling {
namespace {

using Pair = std::pair<const char*, const char*>;  // {GGUF, Hugging Face}

constexpr std::array<Pair, 3> kGlobal = {{
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
}};

// Per layer, after "blk.N." and "model.layers.N." respectively.
constexpr std::array<Pair, 9> kLayer = {{
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
}};

// Maps `name` through the tables from one side (`from` = 0: GGUF, 1: HF) to the other.
std::optional<std::string> Translate(const std::string& name, int from) {
  auto side = [from](const Pair& p, bool source) {
    return std::string((from == 0) == source ? p.first : p.second);
  };
  for (const Pair& p : kGlobal) {
    if (name == side(p, true)) return side(p, false);
  }
  const std::string prefix = from == 0 ? "blk." : "model.layers.";
  const std::string other = from == 0 ? "model.layers." : "blk.";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer = name.substr(prefix.size(), dot - prefix.size());
  const std::string rest = name.substr(dot + 1);
  for (const Pair& p : kLayer) {
    if (rest == side(p, true)) return other + layer + "." + side(p, false);
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> CanonicalFromGgufName(const std::string& gguf_name) {
  return Translate(gguf_name, 0);
}

std::string GgufTensorName(const std::string& canonical) {
  if (auto name = Translate(canonical, 1)) return *name;
  Fail("no GGUF name for tensor '", canonical, "'");
}

}  // namespace starling
