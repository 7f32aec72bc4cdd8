// Writing models as GGUF `llama` files with llama.cpp's conventions (tensor names, reversed
// dimensions, Q/K rows permuted for interleaved RoPE, llama.* metadata), converting or
// quantizing each tensor row by row. Used by `starling quantize` and `starling make-model`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf_names.h"
#include "model/model.h"
#include "quant/weight.h"

namespace starling {

class GgufWriter;

// What `quantize` offers: llama.cpp's file types (llama-quantize's names), each a base format
// for the matrices plus llama.cpp's rules for the tensors that get more bits.
enum class QuantPreset {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ2_K,
  kQ3_K_S,
  kQ3_K_M,
  kQ3_K_L,
  kQ4_K_S,
  kQ4_K_M,
  kQ5_K_S,
  kQ5_K_M,
  kQ6_K
};
// "q4_k_m", "Q4_K_M", ... (case-insensitive); throws, listing the names, on others.
QuantPreset QuantPresetFromName(const std::string& name);
const char* QuantPresetName(QuantPreset preset);  // "q4_k_m"
// llama.cpp's llama_ftype number (general.file_type): 15 for q4_k_m.
uint32_t QuantPresetFileType(QuantPreset preset);
// "f32, f16, ..., q6_k"
std::string QuantPresetList();

// The stored format of one tensor (canonical HF name, shape outermost first) of a model with
// `num_layers` blocks and `gqa` query heads per KV head under a preset, as llama.cpp's
// llama_tensor_get_type for llama models: vectors stay F32; the output head gets Q6_K (Q8_0 files,
// and rows that 256 does not divide: Q8_0); attention V, attention output and FFN down get more
// bits in the mixes (docs/MODELS.md has the table). A row length that a K-quant's 256-element
// blocks do not divide falls back as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
// Q2_K/Q3_K -> Q4_0 where llama.cpp writes IQ4_NL, which we do not have; then F16), and `fallback`
// (if given) says so. `tied_embeddings`: the model has no lm_head.weight and its token
// embedding serves as the output head, so the embedding gets the head's format (llama.cpp's
// `name == output || (!has_output && name == token_embd)`).
WeightFormat FormatForTensor(QuantPreset preset, const std::string& name,
                             const std::vector<int64_t>& shape, int num_layers, int gqa,
                             bool* fallback = nullptr, bool tied_embeddings = false);

// Produces row `row` of a tensor as float32 (cols values). Called from several threads at once
// (AddModelToGguf encodes rows in parallel), so it must be thread-safe.
using RowSource = std::function<void(int64_t row, float* out)>;

struct ExportTensor {
  std::string name;            // canonical (Hugging Face) name
  std::vector<int64_t> shape;  // outermost first
  RowSource rows;
};

// Adds llama.* metadata and every tensor (renamed, reordered for interleaved RoPE when the
// config uses HF's halves layout, converted to the preset's formats). The caller adds the
// tokenizer (WriteTokenizerToGguf) and writes the file.
// What was written for one tensor, for quantize's per-tensor report.
struct TensorWritten {
  std::string gguf_name;
  std::vector<int64_t> shape;
  WeightFormat format;
  size_t bytes;
  bool fallback;  // the preset's format did not fit the row length (FormatForTensor)
};
using TensorWrittenFn = std::function<void(const TensorWritten&)>;

void AddModelToGguf(const ModelConfig& config, const std::vector<ExportTensor>& tensors,
                    QuantPreset preset, GgufWriter* writer, const TensorWrittenFn& written = {});

// The tensors of a loaded model as export sources (dequantizing as needed), without a policy's
// value head (training only).
std::vector<ExportTensor> ExportTensorsOf(const Model& model);

// Random tensors for a config (normal values scaled like trained weights, seeded), for
// benchmarks and tests: weight values do not change speed.
std::vector<ExportTensor> RandomTensors(const ModelConfig& config, uint64_t seed);

// Converts one float32 row to a stored format (round to nearest even for F16/BF16;
// the quantizers of quant.h for block formats).
void EncodeWeightRow(WeightFormat format, const float* x, int64_t n, char* out);

}  // namespace starling
