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

// What `quantize --type` offers: one format for all matrices, or a llama.cpp-style mix.
enum class QuantPreset { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_K_M };
QuantPreset QuantPresetFromName(const std::string& name);  // "q4_k_m", ...; throws on others
const char* QuantPresetName(QuantPreset preset);

// The stored format of one tensor (canonical HF name, shape outermost first) under a preset:
// vectors stay F32; K-quants need rows that are multiples of 256 and fall back to Q8_0
// (then F16) otherwise; Q4_K_M keeps the output head, attention V and FFN down in Q6_K as
// llama.cpp's Q4_K_M does for the tensors it gives more bits.
WeightFormat FormatForTensor(QuantPreset preset, const std::string& name,
                             const std::vector<int64_t>& shape);

// Produces row `row` of a tensor as float32 (cols values).
using RowSource = std::function<void(int64_t row, float* out)>;

struct ExportTensor {
  std::string name;            // canonical (Hugging Face) name
  std::vector<int64_t> shape;  // outermost first
  RowSource rows;
};

// Adds llama.* metadata and every tensor (renamed, reordered for interleaved RoPE when the
// config uses HF's halves layout, converted to the preset's formats). The caller adds the
// tokenizer (WriteTokenizerToGguf) and writes the file.
void AddModelToGguf(const ModelConfig& config, const std::vector<ExportTensor>& tensors,
                    QuantPreset preset, GgufWriter* writer);

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
