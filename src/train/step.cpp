#include "train/step.h"

#include <algorithm>

#include "core/error.h"

namespace starling {
namespace {

void CheckBatchIds(std::span<const int32_t> inputs, int32_t vocab) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i] < 0 || inputs[i] >= vocab) {
      Fail("token id ", inputs[i], " at batch row ", i, " is outside the vocabulary (", vocab, ")");
    }
  }
}

}  // namespace

SequenceKeyValues TrainStep::Forward(const TokenBatch& b) {
  const Model& m = model_.model();
  const ModelConfig& c = m.config();
  if (c.head != ModelHead::kLanguageModel)
    Fail("language-model loss on a model without an LM head");
  const auto n = static_cast<int64_t>(b.inputs.size());
  if (b.targets.size() != b.inputs.size() || b.weights.size() != b.inputs.size()) {
    Fail("a batch needs as many targets and weights as inputs");
  }
  CheckBatchIds(b.inputs, c.vocab_size);
  SequenceKeyValues kv(c, b.lengths, b.prefixes);
  if (kv.rows() != n) Fail("the batch's lengths add up to ", kv.rows(), ", not ", n, " rows");
  record_.first_saved = model_.lowest_trainable_layer();
  RunDecoder(m, b.inputs, kv.positions(), kv, forward_, &record_);
  return kv;
}

double TrainStep::HeadLoss(const TokenBatch& b, std::span<const float> weights, double normalizer,
                           bool head_grad, std::span<float> token_losses) {
  const ModelConfig& c = model_.config();
  const auto n = static_cast<int64_t>(b.inputs.size());
  dhidden_.resize(static_cast<size_t>(n * c.hidden_size));
  return LmHeadCrossEntropy(model_.head_weights(), c.vocab_size, record_.hidden.data(), n,
                            c.hidden_size, b.targets, weights, normalizer, dhidden_.data(),
                            head_grad ? model_.head_grad() : nullptr, loss_, token_losses);
}

void TrainStep::Backward(const TokenBatch& b, SequenceKeyValues& kv) {
  DecoderBackward(model_.model(), b.inputs, kv, record_, dhidden_.data(), model_.grads(), backward_,
                  dx_, forward_, recomputed_);
}

double TrainStep::LanguageModelLoss(const TokenBatch& b, bool backward,
                                    std::span<float> token_losses) {
  SequenceKeyValues kv = Forward(b);
  const double loss = HeadLoss(b, b.weights, b.normalizer, backward, token_losses);
  if (backward) Backward(b, kv);
  return loss;
}

double TrainStep::LogProbLoss(const TokenBatch& b, const LogProbLossFn& loss_fn, bool backward) {
  return PolicyLoss(
      b,
      [&](std::span<const float> logps, std::span<const float>, std::span<float> dlogps,
          std::span<float>) { return loss_fn(logps, dlogps); },
      backward);
}

double TrainStep::PolicyLoss(const TokenBatch& b, const PolicyLossFn& loss_fn, bool backward) {
  SequenceKeyValues kv = Forward(b);
  const auto n = static_cast<int64_t>(b.inputs.size());
  const int64_t d = model_.config().hidden_size;
  // The scored rows' cross-entropies (= -log p(target)), weight 1 each.
  coefficients_.assign(static_cast<size_t>(n), 0.0f);
  scored_.clear();
  for (int64_t i = 0; i < n; ++i) {
    coefficients_[i] = b.weights[i] != 0.0f ? 1.0f : 0.0f;
    if (b.weights[i] != 0.0f) scored_.push_back(i);
  }
  logps_.assign(static_cast<size_t>(n), 0.0f);
  HeadLoss(b, coefficients_, 1.0, false, logps_);
  for (float& x : logps_) x = -x;
  // Values [N] at the scored rows (0 elsewhere), when the model has a value head.
  const float* value_head = model_.value_weights();
  values_.assign(static_cast<size_t>(n), 0.0f);
  std::vector<float> scored_values(scored_.size());
  if (value_head != nullptr) {
    ScalarHead(value_head, record_.hidden.data(), d, scored_, scored_values);
    for (size_t k = 0; k < scored_.size(); ++k) values_[scored_[k]] = scored_values[k];
  }
  dlogps_.assign(static_cast<size_t>(n), 0.0f);
  dvalues_.assign(static_cast<size_t>(n), 0.0f);
  const double loss = loss_fn(logps_, values_, dlogps_, dvalues_);
  if (!backward) return loss;
  // d loss / d logits = sum_i dlogp_i d log p_i / d logits = sum_i (-dlogp_i) d CE_i / d logits:
  // the cross-entropy's backward with weights -dlogp_i (rows with 0 are skipped).
  for (int64_t i = 0; i < n; ++i) coefficients_[i] = b.weights[i] != 0.0f ? -dlogps_[i] : 0.0f;
  HeadLoss(b, coefficients_, 1.0, true, {});
  if (value_head != nullptr) {  // the value head's part of d hidden, and d value head
    std::vector<float> dscored(scored_.size());
    for (size_t k = 0; k < scored_.size(); ++k) dscored[k] = dvalues_[scored_[k]];
    ScalarHeadBackward(value_head, record_.hidden.data(), d, scored_, dscored, dhidden_.data(),
                       model_.value_grad());
  }
  Backward(b, kv);
  return loss;
}

double TrainStep::ValueLoss(const TokenBatch& b, const ValueLossFn& loss_fn, bool backward) {
  const Model& m = model_.model();
  const ModelConfig& c = m.config();
  if (c.head != ModelHead::kReward) Fail("a value loss needs a model with a [1, D] head");
  const auto n = static_cast<int64_t>(b.inputs.size());
  if (b.weights.size() != b.inputs.size()) Fail("a batch needs as many weights as inputs");
  CheckBatchIds(b.inputs, c.vocab_size);
  SequenceKeyValues kv(c, b.lengths, b.prefixes);
  if (kv.rows() != n) Fail("the batch's lengths add up to ", kv.rows(), ", not ", n, " rows");
  record_.first_saved = model_.lowest_trainable_layer();
  RunDecoder(m, b.inputs, kv.positions(), kv, forward_, &record_);
  const int64_t d = c.hidden_size;
  scored_.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (b.weights[i] != 0.0f) scored_.push_back(i);
  }
  const float* head = model_.head_weights();  // [1, D]
  std::vector<float> scored(scored_.size()), dscored(scored_.size());
  ScalarHead(head, record_.hidden.data(), d, scored_, scored);
  values_.assign(static_cast<size_t>(n), 0.0f);
  dvalues_.assign(static_cast<size_t>(n), 0.0f);
  for (size_t k = 0; k < scored_.size(); ++k) values_[scored_[k]] = scored[k];
  const double loss = loss_fn(values_, dvalues_);
  if (!backward) return loss;
  for (size_t k = 0; k < scored_.size(); ++k) dscored[k] = dvalues_[scored_[k]];
  dhidden_.assign(static_cast<size_t>(n * d), 0.0f);
  ScalarHeadBackward(head, record_.hidden.data(), d, scored_, dscored, dhidden_.data(),
                     model_.head_grad());
  Backward(b, kv);
  return loss;
}

double TrainStep::RankingLoss(const RankingBatch& b, const RankingLossOptions& options,
                              bool backward, std::span<float> rewards) {
  const Model& m = model_.model();
  const ModelConfig& c = m.config();
  if (c.head != ModelHead::kReward) Fail("ranking loss on a model without a reward head");
  const auto n = static_cast<int64_t>(b.inputs.size());
  CheckBatchIds(b.inputs, c.vocab_size);
  const auto answers = static_cast<int64_t>(b.score_rows.size());
  int64_t counted = 0;
  for (const int64_t k : b.answers) counted += k;
  if (counted != answers) Fail("a ranking batch counts ", counted, " answers but scores ", answers);
  for (const int64_t r : b.score_rows) {
    if (r < 0 || r >= n) Fail("score row ", r, " is outside the batch's ", n, " rows");
  }
  if (!rewards.empty() && static_cast<int64_t>(rewards.size()) != answers) {
    Fail("ranking loss: room for ", rewards.size(), " rewards, ", answers, " answers");
  }
  SequenceKeyValues kv(c, b.lengths, b.prefixes);
  if (kv.rows() != n) Fail("the batch's lengths add up to ", kv.rows(), ", not ", n, " rows");
  record_.first_saved = model_.lowest_trainable_layer();
  RunDecoder(m, b.inputs, kv.positions(), kv, forward_, &record_);
  const int64_t d = c.hidden_size;
  const float* head = model_.head_weights();  // [1, D]
  std::vector<float> values(static_cast<size_t>(answers)), dvalues(values.size());
  ScalarHead(head, record_.hidden.data(), d, b.score_rows, values);
  double loss = 0.0;
  int64_t first = 0;
  for (const int64_t k : b.answers) {
    const std::span<const float> r(values.data() + first, static_cast<size_t>(k));
    loss += starling::RankingLoss(options.kind, r, options.zero_sum_penalty, 1.0 / b.normalizer,
                                  std::span<float>(dvalues.data() + first, static_cast<size_t>(k)));
    first += k;
  }
  loss /= b.normalizer;
  if (!rewards.empty()) std::copy(values.begin(), values.end(), rewards.begin());
  if (!backward) return loss;
  dhidden_.assign(static_cast<size_t>(n * d), 0.0f);
  ScalarHeadBackward(head, record_.hidden.data(), d, b.score_rows, dvalues, dhidden_.data(),
                     model_.head_grad());
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
