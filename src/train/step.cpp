#include "train/step.h"

#include "core/error.h"

namespace starling {

double TrainStep::LanguageModelLoss(const TokenBatch& b, bool backward,
                                    std::span<float> token_losses) {
  const Model& m = model_.model();
  const ModelConfig& c = m.config();
  if (c.head != ModelHead::kLanguageModel)
    Fail("language-model loss on a model without an LM head");
  const auto n = static_cast<int64_t>(b.inputs.size());
  if (b.targets.size() != b.inputs.size() || b.weights.size() != b.inputs.size()) {
    Fail("a batch needs as many targets and weights as inputs");
  }
  for (size_t i = 0; i < b.inputs.size(); ++i) {
    if (b.inputs[i] < 0 || b.inputs[i] >= c.vocab_size) {
      Fail("token id ", b.inputs[i], " at batch row ", i, " is outside the vocabulary (",
           c.vocab_size, ")");
    }
  }
  SequenceKeyValues kv(c, b.lengths);
  if (kv.rows() != n) Fail("the batch's lengths add up to ", kv.rows(), ", not ", n, " rows");
  record_.first_saved = model_.lowest_trainable_layer();
  RunDecoder(m, b.inputs, kv.positions(), kv, forward_, &record_);
  const int64_t d = c.hidden_size;
  dhidden_.resize(static_cast<size_t>(n * d));
  const double loss = LmHeadCrossEntropy(
      model_.head_weights(), c.vocab_size, record_.hidden.data(), n, d, b.targets, b.weights,
      b.normalizer, dhidden_.data(), backward ? model_.head_grad() : nullptr, loss_, token_losses);
  if (!backward) return loss;
  DecoderBackward(m, b.inputs, kv, record_, dhidden_.data(), model_.grads(), backward_, dx_,
                  forward_, recomputed_);
  return loss;
}

uint64_t TrainStep::activation_bytes() const {
  auto floats = [](const std::vector<float>& v) { return v.size() * sizeof(float); };
  uint64_t n =
      record_.bytes() + recomputed_.bytes() + floats(dhidden_) + floats(dx_) + floats(loss_.logits);
  for (const auto* v : {&backward_.dxn, &backward_.dattn, &backward_.dq, &backward_.dk,
                        &backward_.dv, &backward_.dgate, &backward_.dup, &backward_.dact}) {
    n += floats(*v);
  }
  for (const auto* v : {&forward_.x, &forward_.xn, &forward_.q, &forward_.k, &forward_.v,
                        &forward_.attn, &forward_.gate, &forward_.up}) {
    n += floats(*v);
  }
  return n;
}

}  // namespace starling
