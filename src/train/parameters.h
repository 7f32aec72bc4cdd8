// A model being trained: its trainable tensors as owned float32 parameters (value, gradient
// and AdamW's two moments, all in the layout of ModelTensors), the rest bound as stored
// (frozen, possibly quantized), and a Model whose weights are views of those buffers, so the
// forward pass reads what the optimizer writes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/blocks.h"
#include "model/model.h"
#include "model/tensors.h"

namespace starling {

struct Parameter {
  TensorSpec spec;
  std::vector<float> value;  // shape of spec
  std::vector<float> grad;   // same
  std::vector<float> m, v;   // AdamW's first and second moments (empty until the first step)
};

class TrainModel {
 public:
  // `unfreeze_layers`: train the last N blocks, the final norm and the head (N = -1 or the
  // layer count: everything, embedding included). Blocks below stay frozen as stored. A tied
  // embedding is trained only when everything is (its input side needs the full backward).
  // Throws for N outside [-1, L] or a frozen tensor the backward would need as float32.
  TrainModel(ModelFiles files, int32_t unfreeze_layers);
  TrainModel(TrainModel&&) = default;

  const Model& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  const ModelFiles& files() const { return files_; }
  // Gradient pointers by role for DecoderBackward, plus the head's ([V, D] or [1, D]; null
  // when frozen; for a tied head, the embedding's gradient).
  const ModelGrads& grads() const { return grads_; }
  float* head_grad() const { return head_grad_; }
  // The value head [1, D] and its gradient (config().value_head; always trained), or null.
  const float* value_weights() const { return value_weights_; }
  float* value_grad() const { return value_grad_; }
  // The head as float32 [O, D]: the parameter, or (a frozen head stored in another format,
  // e.g. a quantized tied embedding) a dequantized copy made once.
  const float* head_weights();
  int32_t lowest_trainable_layer() const { return grads_.lowest_layer; }
  void ZeroGrads();
  // The backward's per-block hook (ModelGrads::layer_done), e.g. a GradientSum's.
  void set_layer_done(std::function<void(int32_t)> f) { grads_.layer_done = std::move(f); }
  uint64_t parameter_count() const;  // trainable elements
  uint64_t frozen_count() const;     // frozen elements

 private:
  ModelFiles files_;
  std::vector<Parameter> params_;
  std::unique_ptr<Model> model_;
  ModelGrads grads_;
  float* head_grad_ = nullptr;
  const float* value_weights_ = nullptr;
  float* value_grad_ = nullptr;
  std::vector<float> frozen_head_;  // [O, D] when the head is frozen and not float32
};

// A language model's files with a value head added (config.value_head and a fresh
// value_head.weight [1, D], zeros: values start at 0, as a fresh critic's baseline), unless
// they already have one.
ModelFiles WithValueHead(ModelFiles files);

// Fresh model files for a config with seeded random weights (RandomTensors), all float32.
ModelFiles RandomModelFiles(const ModelConfig& c, uint64_t seed);

}  // namespace starling
