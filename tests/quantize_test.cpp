// Converting and quantizing models: a Hugging Face checkpoint converted to GGUF computes the
// same logits (names, dims and the Q/K permutation for interleaved RoPE are right), and
// quantization costs what it should in perplexity on a real trained model (stories260K).
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdio>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

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

TEST(Quantize, PresetsChooseFormatsLikeLlamaCpp) {
  const std::vector<int64_t> big = {4096, 4096}, small = {64, 64};
  EXPECT_EQ(FormatForTensor(QuantPreset::kQ4_K_M, "model.layers.0.mlp.up_proj.weight", big),
            WeightFormat::kQ4_K);
  EXPECT_EQ(FormatForTensor(QuantPreset::kQ4_K_M, "model.layers.0.mlp.down_proj.weight", big),
            WeightFormat::kQ6_K);
  EXPECT_EQ(FormatForTensor(QuantPreset::kQ4_K_M, "lm_head.weight", big), WeightFormat::kQ6_K);
  EXPECT_EQ(FormatForTensor(QuantPreset::kQ4_0, "lm_head.weight", big), WeightFormat::kQ6_K);
  EXPECT_EQ(FormatForTensor(QuantPreset::kQ4_0, "model.norm.weight", {4096}), WeightFormat::kF32);
  // Rows of 64 cannot hold 256-element K-quant blocks: Q8_0 instead.
  EXPECT_EQ(FormatForTensor(QuantPreset::kQ4_K_M, "model.layers.0.mlp.up_proj.weight", small),
            WeightFormat::kQ8_0);
  EXPECT_EQ(GgufTensorName("model.layers.3.mlp.up_proj.weight"), "blk.3.ffn_up.weight");
}

}  // namespace
}  // namespace starling
