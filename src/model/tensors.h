// The one list of a model's tensors, derived from its config. Binding at load (model.cpp),
// parameters, gradients and optimizer state (train/), checkpoints and the test reference all
// walk this list, so a new tensor is one line here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace starling {

enum class TensorRole : uint8_t {
  kEmbedding,  // [V, D]
  kAttnNorm,   // [D] per layer
  kWq,         // [H * Dh, D]
  kWk,         // [KVH * Dh, D]
  kWv,         // [KVH * Dh, D]
  kWo,         // [D, H * Dh]
  kFfnNorm,    // [D]
  kGate,       // [F, D]
  kUp,         // [F, D]
  kDown,       // [D, F]
  kFinalNorm,  // [D]
  kLmHead,     // [V, D] (absent when tied to the embedding)
  kScore,      // [1, D] reward head
  kValue,      // [1, D] a policy's value head (training only: ModelConfig::value_head)
};

struct TensorSpec {
  std::string name;            // canonical (Hugging Face) name
  std::vector<int64_t> shape;  // outermost first
  TensorRole role;
  int32_t layer;  // decoder block, or -1 (embedding, final norm, heads)
  bool is_norm() const {
    return role == TensorRole::kAttnNorm || role == TensorRole::kFfnNorm ||
           role == TensorRole::kFinalNorm;
  }
  int64_t elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Every tensor of the model `c` describes, in a fixed order: the embedding, each layer's nine
// tensors, the final norm, then the head the config names (lm_head unless tied, or score), then
// a policy's value head when the config has one.
std::vector<TensorSpec> ModelTensors(const ModelConfig& c);

}  // namespace starling
