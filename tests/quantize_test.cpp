// Converting and quantizing models: a Hugging Face checkpoint converted to GGUF computes the
// same logits (names, dims and the Q/K permutation for interleaved RoPE are right), and
// quantization costs what it should in perplexity on a real trained model (stories260K).
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdio>

#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "generate/generate.h"
#include "generate/loaded_model.h"
#include "model/gguf_export.h"
#include "test_dir.h"
#include "tokenizer/gguf_export.h"

namespace starling {
namespace {

const std::string kData = STARLING_TEST_DATA_DIR;

std::string Convert(const std::string& source, QuantPreset preset, bool hf_tokenizer) {
  const Model model = Model::Load(source);
  GgufWriter writer;
  AddModelToGguf(model.config(), ExportTensorsOf(model), preset, &writer);
  if (hf_tokenizer) {
    WriteTokenizerToGguf(source, &writer);
  } else {
    const GgufFile gguf = GgufFile::Open(source);
    for (const GgufKeyValue& kv : gguf.metadata()) {
      if (kv.key.rfind("tokenizer.", 0) == 0) writer.AddValue(kv.key, kv.value);
    }
  }
  // ctest runs tests as parallel processes: one file per process, source and preset.
  const std::string path = ::testing::TempDir() + "/converted-" + std::to_string(::getpid()) + "-" +
                           std::to_string(std::hash<std::string>{}(source)) + "-" +
                           QuantPresetName(preset) + ".gguf";
  writer.WriteTo(path);
  // Removed when the test program exits (the tests load each file after this returns).
  starling::testing::RemoveAtExit(path);
  return path;
}

std::vector<float> AllLogits(const LoadedModel& m, const std::vector<int32_t>& tokens) {
  Session session(*m.model, 128);
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.model->config().vocab_size));
  session.Forward(tokens, logits, true);
  return logits;
}

double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / den);
}

TEST(Quantize, HuggingFaceToGgufKeepsTheLogits) {
  const std::string hf = kData + "/tiny-mistral/hf";
  const LoadedModel original = LoadModel(hf);
  const LoadedModel converted = LoadModel(Convert(hf, QuantPreset::kF32, true));
  EXPECT_EQ(converted.model->config().rope_layout, RopeLayout::kInterleaved);
  EXPECT_EQ(converted.chat_template_jinja, original.chat_template_jinja);
  const std::vector<int32_t> tokens = original.tokenizer->Encode("GPT4 Correct User: Hello");
  EXPECT_EQ(converted.tokenizer->Encode("GPT4 Correct User: Hello"), tokens);
  // bf16 -> f32 is exact and the interleaved layout is the same rotation; only float
  // summation order in RoPE-free parts is unchanged, so agreement is near bit level.
  EXPECT_LT(RelativeL2(AllLogits(converted, tokens), AllLogits(original, tokens)), 1e-6);
}

double Perplexity(const std::string& model) {
  const LoadedModel m = LoadModel(model);
  return ComputePerplexity(*m.model, *m.tokenizer, ReadFile(kData + "/expected_greedy_n200.txt"),
                           64)
      .perplexity;
}

TEST(Quantize, QuantizationCostOnATrainedModel) {
  const std::string source = std::string(STARLING_MODELS_DIR) + "/stories260K.gguf";
  const double f32 = Perplexity(Convert(source, QuantPreset::kF32, false));
  EXPECT_NEAR(f32, Perplexity(source), 1e-9 * f32);  // conversion itself is lossless
  // The bound for Q8_0: within 0.5% of F32 (measured: +0.45% on this text).
  EXPECT_LT(std::abs(Perplexity(Convert(source, QuantPreset::kQ8_0, false)) / f32 - 1), 0.005);
  // Q4_0 (measured +5.3%) must stay within 10%: 4-bit weights of a 260K-parameter model.
  const double q4 = Perplexity(Convert(source, QuantPreset::kQ4_0, false));
  EXPECT_GT(q4, f32);
  EXPECT_LT(q4 / f32 - 1, 0.10);
}

// Every preset on a model whose rows hold whole 256-element blocks (random weights scaled like
// trained ones; hidden 256, FFN 512, 2 layers, vocab 512), so each block format runs through
// the whole forward pass: the logits stay within a bound of the F32 model's, per format family.
// Bounds: about 1.5x the relative L2 error measured at this commit (below), which roughly
// doubles per bit removed.
TEST(Quantize, EveryPresetRunsAndStaysCloseToF32) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.rope_dim = 64;
  c.max_position_embeddings = 128;
  c.rope_layout = RopeLayout::kInterleaved;
  const std::vector<ExportTensor> tensors = RandomTensors(c, 11);
  const auto logits = [&](QuantPreset preset) {
    GgufWriter writer;
    AddModelToGguf(c, tensors, preset, &writer);
    const std::string path = ::testing::TempDir() + "/preset-" + std::to_string(::getpid()) + "-" +
                             QuantPresetName(preset) + ".gguf";
    writer.WriteTo(path);
    starling::testing::RemoveAtExit(path);
    const Model model = Model::Load(path);
    Session session(model, 64);
    const std::vector<int32_t> tokens = {1, 17, 300, 42, 511, 7, 7, 128, 90, 3};
    std::vector<float> out(tokens.size() * 512);
    session.Forward(tokens, out, true);
    return out;
  };
  const std::vector<float> f32 = logits(QuantPreset::kF32);
  // Measured at this commit (relative L2): f16 0.0005, bf16 0.004, q8_0 0.018, q6_k 0.049,
  // q5_1 0.092, q5_0 0.099, q5_k_m 0.084, q5_k_s 0.084, q4_1 0.175, q4_0 0.187, q4_k_m 0.167,
  // q4_k_s 0.164, q3_k_l 0.273, q3_k_m 0.280, q3_k_s 0.332, q2_k 0.518 (random weights amplify
  // the error through the layers more than trained ones; the activations' Q8 rounding is in
  // every quantized number). A wrong layout gives errors above 1.
  const struct {
    QuantPreset preset;
    double bound;
  } cases[] = {
      {QuantPreset::kF16, 1e-3},    {QuantPreset::kBF16, 8e-3},   {QuantPreset::kQ8_0, 0.03},
      {QuantPreset::kQ6_K, 0.08},   {QuantPreset::kQ5_1, 0.15},   {QuantPreset::kQ5_0, 0.15},
      {QuantPreset::kQ5_K_M, 0.14}, {QuantPreset::kQ5_K_S, 0.14}, {QuantPreset::kQ4_1, 0.28},
      {QuantPreset::kQ4_0, 0.3},    {QuantPreset::kQ4_K_M, 0.27}, {QuantPreset::kQ4_K_S, 0.27},
      {QuantPreset::kQ3_K_L, 0.45}, {QuantPreset::kQ3_K_M, 0.45}, {QuantPreset::kQ3_K_S, 0.5},
      {QuantPreset::kQ2_K, 0.8},
  };
  std::map<QuantPreset, double> errors;
  for (const auto& k : cases) {
    const double err = RelativeL2(logits(k.preset), f32);
    errors[k.preset] = err;
    std::printf("%-7s relative L2 of the logits against F32: %.5f\n", QuantPresetName(k.preset),
                err);
    EXPECT_LT(err, k.bound) << QuantPresetName(k.preset);
    EXPECT_GT(err, 0.0) << QuantPresetName(k.preset);
  }
  // Fewer bits, more error: the K-quant mixes in order.
  EXPECT_LT(errors[QuantPreset::kQ8_0], errors[QuantPreset::kQ6_K]);
  EXPECT_LT(errors[QuantPreset::kQ6_K], errors[QuantPreset::kQ5_K_M]);
  EXPECT_LT(errors[QuantPreset::kQ5_K_M], errors[QuantPreset::kQ4_K_M]);
  EXPECT_LT(errors[QuantPreset::kQ4_K_M], errors[QuantPreset::kQ3_K_M]);
  EXPECT_LT(errors[QuantPreset::kQ3_K_M], errors[QuantPreset::kQ2_K]);
}

TEST(Quantize, PresetsChooseFormatsLikeLlamaCpp) {
  // llama.cpp's llama_tensor_get_type for a 32-layer llama model (src/llama-quant.cpp): the
  // head in Q6_K, and V / FFN-down in Q6_K on the layers use_more_bits picks (the first and
  // last 4, and every third between: 0-3, 6, 9, ..., 27, 28-31).
  const std::vector<int64_t> big = {4096, 4096}, small = {64, 64};
  const auto format = [&](QuantPreset p, const std::string& name, int layers = 32) {
    bool fallback = false;
    const WeightFormat f = FormatForTensor(p, name, big, layers, 1, &fallback);
    EXPECT_FALSE(fallback) << name;
    return f;
  };
  using P = QuantPreset;
  using F = WeightFormat;
  EXPECT_EQ(format(P::kQ4_K_M, "model.layers.0.mlp.up_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ4_K_M, "model.layers.0.mlp.down_proj.weight"), F::kQ6_K);
  EXPECT_EQ(format(P::kQ4_K_M, "model.layers.6.mlp.down_proj.weight"), F::kQ6_K);
  EXPECT_EQ(format(P::kQ4_K_M, "model.layers.7.mlp.down_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ4_K_M, "model.layers.7.self_attn.v_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ4_K_M, "model.layers.31.self_attn.v_proj.weight"), F::kQ6_K);
  EXPECT_EQ(format(P::kQ5_K_M, "model.layers.9.self_attn.v_proj.weight"), F::kQ6_K);
  EXPECT_EQ(format(P::kQ5_K_M, "model.layers.10.self_attn.v_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ5_K_S, "model.layers.0.self_attn.v_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ4_K_S, "model.layers.3.self_attn.v_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ4_K_S, "model.layers.4.self_attn.v_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ4_K_S, "model.layers.3.mlp.down_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ3_K_M, "model.layers.1.self_attn.v_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ3_K_M, "model.layers.2.self_attn.v_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ3_K_M, "model.layers.1.mlp.down_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ3_K_M, "model.layers.2.mlp.down_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ3_K_M, "model.layers.2.self_attn.o_proj.weight"), F::kQ4_K);
  EXPECT_EQ(format(P::kQ3_K_M, "model.layers.2.mlp.gate_proj.weight"), F::kQ3_K);
  EXPECT_EQ(format(P::kQ3_K_L, "model.layers.2.mlp.down_proj.weight"), F::kQ5_K);
  EXPECT_EQ(format(P::kQ2_K, "model.layers.2.mlp.down_proj.weight"), F::kQ3_K);
  EXPECT_EQ(format(P::kQ2_K, "model.layers.2.mlp.up_proj.weight"), F::kQ2_K);
  EXPECT_EQ(format(P::kQ2_K, "model.layers.2.self_attn.v_proj.weight"), F::kQ3_K);
  // Mistral-7B's 4 query heads per KV head: llama.cpp gives q2_k's V Q4_K.
  EXPECT_EQ(FormatForTensor(P::kQ2_K, "model.layers.2.self_attn.v_proj.weight", big, 32, 4),
            F::kQ4_K);
  // An output head whose rows 256 does not divide: Q8_0 (llama.cpp's rule for the head).
  EXPECT_EQ(FormatForTensor(P::kQ4_K_M, "lm_head.weight", {32000, 288}, 6, 1), F::kQ8_0);
  EXPECT_EQ(format(P::kQ2_K, "model.embed_tokens.weight"), F::kQ2_K);
  EXPECT_EQ(format(P::kQ2_K, "lm_head.weight"), F::kQ6_K);
  EXPECT_EQ(format(P::kQ4_0, "lm_head.weight"), F::kQ6_K);
  EXPECT_EQ(format(P::kQ5_1, "model.layers.0.mlp.down_proj.weight"), F::kQ5_1);
  EXPECT_EQ(format(P::kQ8_0, "lm_head.weight"), F::kQ8_0);
  EXPECT_EQ(format(P::kF16, "lm_head.weight"), F::kF16);
  EXPECT_EQ(FormatForTensor(P::kQ4_0, "model.norm.weight", {4096}, 32, 1), F::kF32);
  // Rows of 64 cannot hold 256-element K-quant blocks: llama.cpp's fallbacks, reported.
  bool fallback = false;
  EXPECT_EQ(
      FormatForTensor(P::kQ4_K_M, "model.layers.0.mlp.up_proj.weight", small, 32, 1, &fallback),
      F::kQ5_0);
  EXPECT_TRUE(fallback);
  EXPECT_EQ(FormatForTensor(P::kQ6_K, "model.layers.0.mlp.up_proj.weight", small, 32, 1), F::kQ8_0);
  EXPECT_EQ(FormatForTensor(P::kQ2_K, "model.layers.0.mlp.up_proj.weight", small, 32, 1), F::kQ4_0);
  EXPECT_EQ(FormatForTensor(P::kQ5_K_M, "model.layers.0.mlp.up_proj.weight", small, 32, 1),
            F::kQ5_1);
  // Names are case-insensitive, as llama-quantize's.
  EXPECT_EQ(QuantPresetFromName("Q5_K_M"), P::kQ5_K_M);
  EXPECT_THROW(QuantPresetFromName("q5_k_x"), Error);
  EXPECT_EQ(GgufTensorName("model.layers.3.mlp.up_proj.weight"), "blk.3.ffn_up.weight");
}

}  // namespace
}  // namespace starling
