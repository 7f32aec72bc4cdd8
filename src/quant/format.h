// The one table of storage formats: every format a weight matrix can be stored in (dense
// F32/F16/BF16 and ggml's block formats, with ggml's exact layouts, quant.h) plus Q8_K, which
// only activations are quantized to. Each format is one row of FormatTraits: its name, its GGUF
// type id, its block shape, the activation format MatMul pairs it with, and its scalar
// functions. Code that needs a property of a format reads the table; a new format is one row
// plus its kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace starling {

enum class WeightFormat : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ2_K,
  kQ3_K,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kQ8_K,  // activations only
};
inline constexpr size_t kWeightFormatCount = 14;

// out = x[n] stored in the format (RowBytes(n) bytes); the reference algorithm (quant.h).
using RowEncoder = void (*)(const float* x, int64_t n, void* out);
// out[n] = the stored row as float32.
using RowDecoder = void (*)(const void* in, int64_t n, float* out);
// The scalar twin of a quantized weight row times a row of its activation format.
using RowDot = float (*)(const void* w, const void* a, int64_t n);

struct FormatTraits {
  WeightFormat format;
  const char* name;         // ggml's spelling: "F32", "Q4_K"
  uint32_t ggml_type;       // the GGUF tensor type id (ggml.h's ggml_type)
  int32_t block_size;       // elements per block: 1 for dense formats, 32 or 256
  int32_t block_bytes;      // bytes per block
  bool quantized;           // a block format
  bool weight;              // weights may be stored in it (not Q8_K)
  WeightFormat activation;  // what MatMul quantizes activations to (dense formats: kF32)
  RowEncoder encode;        // scalar reference
  RowDecoder decode;        // ggml's dequantize_row_* element for element
  RowDot dot;               // nullptr for dense formats and Q8_K
};

// The format's row of the table.
const FormatTraits& Traits(WeightFormat format);
// Every row, in enum order.
std::span<const FormatTraits> AllFormats();
// The row with this GGUF type id; nullptr for a ggml type that is not in the table.
const FormatTraits* FindFormatByGgmlType(uint32_t ggml_type);

inline const char* WeightFormatName(WeightFormat format) {
  return Traits(format).name;
}
// A weight format by name, case-insensitive ("q5_k" -> kQ5_K); nullopt for others and Q8_K.
std::optional<WeightFormat> WeightFormatFromName(std::string_view name);
inline bool IsQuantized(WeightFormat format) {
  return Traits(format).quantized;
}
// "F32, F16, ..., Q6_K": every weight format, for messages.
std::string_view WeightFormatList();

// Blocks in a row of n elements. Throws Error unless n >= 0 is a multiple of the block size.
int64_t FormatBlockCount(WeightFormat format, int64_t n);
// Bytes of a row of n elements, with the same check.
size_t FormatRowBytes(WeightFormat format, int64_t n);

}  // namespace starling
