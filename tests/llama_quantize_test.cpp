// Files written by llama.cpp's own quantizer: tests/data/llama-quantize/ holds a small random
// llama model (source-f16.gguf, made by our make-model) and what llama_model_quantize() of
// llama.cpp v0.5.0 (the npm package node-llama-cpp 3.22.1) made of it for ten types, with
// llama-quantize's defaults (tools/make_llama_quantize_fixture.sh; provenance and sha256 in
// the folder's README.md). For each file:
//  - every tensor is, bit for bit, what our quantizer makes of the source tensor in the type
//    llama.cpp chose for it (ggml's reference quantizers and ours are meant to be one
//    function);
//  - our quantize mix (FormatForTensor) picks llama.cpp's type for every tensor;
//  - our forward pass over the file stays within a per-type bound of our forward pass over
//    the source, and the errors order as the bits per weight do.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "generate/loaded_model.h"
#include "kernels/kernels.h"
#include "model/gguf_export.h"
#include "model/gguf_names.h"
#include "quant/format.h"
#include "quant/quant.h"

namespace starling {
namespace {

const std::string kDir = std::string(STARLING_TEST_DATA_DIR) + "/llama-quantize";

constexpr uint32_t kGgmlF32 = 0;
constexpr uint32_t kGgmlF16 = 1;

// Bounds on our forward pass over llama.cpp's file against our forward pass over the F16
// source, over all positions of kText and all 512 logits: about 1.5x the error measured at
// authoring time (in the comments: max abs, relative L2). The logits are large (RMS 17.8: the
// head is the tied embedding, whose random values have unit variance), so the absolute errors
// are too. llama.cpp's own forward pass over the same files measures the same errors against
// its forward pass over the source (relative L2 equal to 3 digits for every type; see the
// README), so these bounds are not loose on our account. The error roughly doubles for each
// bit per weight less; a file read wrongly (a scale in the wrong place, nibbles swapped, a
// tensor's type misread) makes the relative error O(1).
struct TypeCase {
  const char* file;  // llama-quantize's name of the file type
  double max_abs;
  double rel_l2;
};
const TypeCase kCases[] = {
    {"q8_0", 1.8, 0.023},    // 1.17, 0.0152
    {"q6_k", 4.6, 0.058},    // 3.04, 0.0389
    {"q5_k_m", 7.0, 0.085},  // 4.68, 0.0568
    {"q5_1", 7.6, 0.093},    // 5.08, 0.0621
    {"q5_0", 7.7, 0.10},     // 5.14, 0.0677
    {"q4_k_m", 12, 0.15},    // 7.75, 0.1025
    {"q4_1", 14, 0.18},      // 9.08, 0.1224
    {"q4_0", 17, 0.20},      // 11.3, 0.1339
    {"q3_k_m", 20, 0.26},    // 13.6, 0.172
    {"q2_k", 40, 0.50},      // 26.6, 0.336
};

const char kText[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her friends.";

std::string FilePath(const char* type) {
  return kDir + "/" + type + ".gguf";
}

// A source tensor as float32 rows: F16 (the matrices) or F32 (the norms).
std::vector<float> SourceFloats(const GgufFile& source, const GgufTensorInfo& t) {
  const std::string_view bytes = source.TensorData(t);
  std::vector<float> out(t.n_elements);
  if (t.ggml_type == kGgmlF16) {
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      out[i] = HalfToFloat(h);
    }
  } else {
    EXPECT_EQ(t.ggml_type, kGgmlF32) << t.name;
    std::memcpy(out.data(), bytes.data(), out.size() * 4);
  }
  return out;
}

// Our logits for every position of kText.
std::vector<float> Logits(const std::string& path, std::vector<int32_t>* ids_out = nullptr) {
  const LoadedModel m = LoadModel(path);
  const std::vector<int32_t> ids = m.tokenizer->Encode(kText, {.add_bos = true});
  const int32_t vocab = m.model->config().vocab_size;
  Session session(*m.model, 128);
  std::vector<float> logits(ids.size() * static_cast<size_t>(vocab));
  session.Forward(ids, logits, /*all_logits=*/true);
  if (ids_out != nullptr) *ids_out = ids;
  return logits;
}

class LlamaQuantize : public ::testing::TestWithParam<TypeCase> {};

// ggml's quantize_row_*_ref, which llama_model_quantize calls for every type here when there
// is no importance matrix, and our QuantizeRow: the same bytes for every row of every tensor.
TEST_P(LlamaQuantize, EveryTensorIsOurQuantizersBytes) {
  const GgufFile source = GgufFile::Open(kDir + "/source-f16.gguf");
  const GgufFile file = GgufFile::Open(FilePath(GetParam().file));
  ASSERT_EQ(file.tensors().size(), source.tensors().size());
  for (const GgufTensorInfo& t : file.tensors()) {
    const GgufTensorInfo* s = source.FindTensor(t.name);
    ASSERT_NE(s, nullptr) << t.name;
    ASSERT_EQ(t.dims, s->dims) << t.name;
    const std::vector<float> x = SourceFloats(source, *s);
    const std::string_view theirs = file.TensorData(t);
    if (t.ggml_type == kGgmlF32) {  // vectors are copied
      EXPECT_EQ(std::memcmp(theirs.data(), x.data(), x.size() * 4), 0) << t.name;
      continue;
    }
    const FormatTraits* f = FindFormatByGgmlType(t.ggml_type);
    ASSERT_NE(f, nullptr) << t.name << ": ggml type " << t.ggml_type;
    ASSERT_TRUE(f->quantized) << t.name << " is " << f->name;
    const int64_t n = static_cast<int64_t>(t.dims[0]);
    const int64_t rows = static_cast<int64_t>(t.n_elements) / n;
    const size_t row_bytes = QuantRowBytes(f->format, n);
    ASSERT_EQ(theirs.size(), row_bytes * static_cast<size_t>(rows)) << t.name;
    std::vector<uint8_t> ours(row_bytes);
    int bad_rows = 0;
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(f->format, &x[static_cast<size_t>(r * n)], n, ours.data());
      const uint8_t* want = reinterpret_cast<const uint8_t*>(theirs.data()) + r * row_bytes;
      if (std::memcmp(ours.data(), want, row_bytes) != 0 && ++bad_rows <= 2) {
        size_t i = 0;
        while (ours[i] == want[i]) ++i;
        ADD_FAILURE() << t.name << " (" << f->name << ") row " << r << ": first differing byte "
                      << i << " (block " << i / static_cast<size_t>(f->block_bytes) << "): ours "
                      << int{ours[i]} << ", llama.cpp " << int{want[i]};
      }
    }
    EXPECT_EQ(bad_rows, 0) << t.name << " (" << f->name << "): rows that differ of " << rows;
  }
}

// llama.cpp's llama_tensor_get_type chose each tensor's type; FormatForTensor is our copy of
// its rules. The model ties its embeddings.
TEST_P(LlamaQuantize, OurMixChoosesLlamaCppsTypes) {
  const GgufFile file = GgufFile::Open(FilePath(GetParam().file));
  const QuantPreset preset = QuantPresetFromName(GetParam().file);
  for (const GgufTensorInfo& t : file.tensors()) {
    const std::optional<std::string> name = CanonicalFromGgufName(t.name);
    ASSERT_TRUE(name.has_value()) << t.name;
    const std::vector<int64_t> shape(t.dims.rbegin(), t.dims.rend());
    const WeightFormat f = FormatForTensor(preset, *name, shape, /*num_layers=*/2, /*gqa=*/2,
                                           nullptr, /*tied_embeddings=*/true);
    EXPECT_EQ(Traits(f).ggml_type, t.ggml_type)
        << t.name << ": ours " << Traits(f).name << ", llama.cpp "
        << FindFormatByGgmlType(t.ggml_type)->name;
  }
}

// llama.cpp gives a tied token embedding (no output.weight) the output head's type: Q6_K in
// every file here but q8_0's (llama_tensor_get_type: `name == output || (!has_output && name ==
// token_embd)`); so does ours.
TEST_P(LlamaQuantize, TiedEmbeddingGetsTheOutputHeadsType) {
  const GgufFile file = GgufFile::Open(FilePath(GetParam().file));
  const QuantPreset preset = QuantPresetFromName(GetParam().file);
  const GgufTensorInfo* t = file.FindTensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  const std::vector<int64_t> shape(t->dims.rbegin(), t->dims.rend());
  const WeightFormat f = FormatForTensor(preset, "model.embed_tokens.weight", shape, 2, 2, nullptr,
                                         /*tied_embeddings=*/true);
  EXPECT_EQ(FormatForTensor(preset, "model.embed_tokens.weight", shape, 2, 2),
            FormatForTensor(preset, "model.layers.0.mlp.up_proj.weight", shape, 2, 2))
      << "untied, the embedding keeps the base type";
  EXPECT_EQ(Traits(f).ggml_type, t->ggml_type);
}

TEST_P(LlamaQuantize, LogitsStayNearTheSourceModels) {
  std::vector<int32_t> ids;
  const std::vector<float> want = Logits(kDir + "/source-f16.gguf", &ids);
  const std::vector<float> got = Logits(FilePath(GetParam().file));
  ASSERT_EQ(got.size(), want.size());
  double num = 0, den = 0, max_abs = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = double{got[i]} - want[i];
    num += d * d;
    den += double{want[i]} * want[i];
    max_abs = std::max(max_abs, std::fabs(d));
  }
  const double rel_l2 = std::sqrt(num / den);
  std::printf("%-7s %zu positions: max abs %.4g, relative L2 %.4g, logit RMS %.4g\n",
              GetParam().file, ids.size(), max_abs, rel_l2,
              std::sqrt(den / static_cast<double>(got.size())));
  EXPECT_LT(max_abs, GetParam().max_abs);
  EXPECT_LT(rel_l2, GetParam().rel_l2);
}

// The error grows as the bits per weight shrink: 8.5 (q8_0) > 6.6 (q6_k) > ~5.5 (q5_*) >
// ~4.5 (q4_*) > ~3.9 (q3_k_m) > ~3.3 (q2_k). Types of nearly the same size are not ordered
// among themselves.
TEST(LlamaQuantizeOrder, ErrorsOrderAsBitsPerWeight) {
  const std::vector<float> want = Logits(kDir + "/source-f16.gguf");
  auto error = [&](const char* type) {
    const std::vector<float> got = Logits(FilePath(type));
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      num += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
      den += double{want[i]} * want[i];
    }
    return std::sqrt(num / den);
  };
  const std::vector<std::vector<const char*>> tiers = {
      {"q8_0"},   {"q6_k"}, {"q5_k_m", "q5_1", "q5_0"}, {"q4_k_m", "q4_1", "q4_0"},
      {"q3_k_m"}, {"q2_k"}};
  double worst_of_previous = 0;
  const char* previous = "";
  for (const auto& tier : tiers) {
    double best = 1e9, worst = 0;
    for (const char* type : tier) {
      const double e = error(type);
      best = std::min(best, e);
      worst = std::max(worst, e);
    }
    EXPECT_LT(worst_of_previous, best) << previous << " vs " << tier.front();
    worst_of_previous = worst;
    previous = tier.front();
  }
}

INSTANTIATE_TEST_SUITE_P(Types, LlamaQuantize, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<TypeCase>& p) {
                           return std::string(p.param.file);
                         });

}  // namespace
}  // namespace starling
