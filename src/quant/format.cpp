#include "quant/format.h"

#include <cctype>
#include <cstring>
#include <iterator>
#include <string>

#include "core/error.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "quant/rows.h"

namespace starling {
namespace rows {

void EncodeF32(const float* x, int64_t n, void* out) {
  std::memcpy(out, x, static_cast<size_t>(n) * 4);
}
void DecodeF32(const void* in, int64_t n, float* out) {
  std::memcpy(out, in, static_cast<size_t>(n) * 4);
}
void EncodeF16(const float* x, int64_t n, void* out) {
  auto* o = static_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) o[i] = FloatToHalf(x[i]);
}
void DecodeF16(const void* in, int64_t n, float* out) {
  const auto* h = static_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < n; ++i) out[i] = HalfToFloat(h[i]);
}
void EncodeBF16(const float* x, int64_t n, void* out) {
  auto* o = static_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) {  // round to nearest even (NaN keeps a payload bit)
    uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
      o[i] = static_cast<uint16_t>(bits >> 16 | 0x40u);
    } else {
      o[i] = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }
  }
}
void DecodeBF16(const void* in, int64_t n, float* out) {
  const auto* h = static_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < n; ++i) out[i] = BFloat16ToFloat(h[i]);
}

}  // namespace rows

namespace {

using F = WeightFormat;
constexpr F kNone = F::kF32;  // the activation of a dense format: float32 itself

// GGUF type ids are ggml.h's (formats/gguf.h lists them as GgmlType).
constexpr FormatTraits kTable[] = {
    // format, name, ggml id, block elements, block bytes, quantized, weight, activation,
    // encode, decode, dot
    {F::kF32, "F32", 0, 1, 4, false, true, kNone, rows::EncodeF32, rows::DecodeF32, nullptr},
    {F::kF16, "F16", 1, 1, 2, false, true, kNone, rows::EncodeF16, rows::DecodeF16, nullptr},
    {F::kBF16, "BF16", 30, 1, 2, false, true, kNone, rows::EncodeBF16, rows::DecodeBF16, nullptr},
    {F::kQ8_0, "Q8_0", 8, 32, sizeof(BlockQ8_0), true, true, F::kQ8_0, rows::QuantizeQ8_0,
     rows::DequantizeQ8_0, DotQ8_0Q8_0},
    {F::kQ4_0, "Q4_0", 2, 32, sizeof(BlockQ4_0), true, true, F::kQ8_0, rows::QuantizeQ4_0,
     rows::DequantizeQ4_0, DotQ4_0Q8_0},
    {F::kQ4_1, "Q4_1", 3, 32, sizeof(BlockQ4_1), true, true, F::kQ8_0, rows::QuantizeQ4_1,
     rows::DequantizeQ4_1, DotQ4_1Q8_0},
    {F::kQ5_0, "Q5_0", 6, 32, sizeof(BlockQ5_0), true, true, F::kQ8_0, rows::QuantizeQ5_0,
     rows::DequantizeQ5_0, DotQ5_0Q8_0},
    {F::kQ5_1, "Q5_1", 7, 32, sizeof(BlockQ5_1), true, true, F::kQ8_0, rows::QuantizeQ5_1,
     rows::DequantizeQ5_1, DotQ5_1Q8_0},
    {F::kQ2_K, "Q2_K", 10, 256, sizeof(BlockQ2_K), true, true, F::kQ8_K, rows::QuantizeQ2_K,
     rows::DequantizeQ2_K, DotQ2_KQ8_K},
    {F::kQ3_K, "Q3_K", 11, 256, sizeof(BlockQ3_K), true, true, F::kQ8_K, rows::QuantizeQ3_K,
     rows::DequantizeQ3_K, DotQ3_KQ8_K},
    {F::kQ4_K, "Q4_K", 12, 256, sizeof(BlockQ4_K), true, true, F::kQ8_K, rows::QuantizeQ4_K,
     rows::DequantizeQ4_K, DotQ4_KQ8_K},
    {F::kQ5_K, "Q5_K", 13, 256, sizeof(BlockQ5_K), true, true, F::kQ8_K, rows::QuantizeQ5_K,
     rows::DequantizeQ5_K, DotQ5_KQ8_K},
    {F::kQ6_K, "Q6_K", 14, 256, sizeof(BlockQ6_K), true, true, F::kQ8_K, rows::QuantizeQ6_K,
     rows::DequantizeQ6_K, DotQ6_KQ8_K},
    {F::kQ8_K, "Q8_K", 15, 256, sizeof(BlockQ8_K), true, false, F::kQ8_K, rows::QuantizeQ8_K,
     rows::DequantizeQ8_K, nullptr},
};
static_assert(std::size(kTable) == kWeightFormatCount);

constexpr bool RowsInEnumOrder() {
  for (size_t i = 0; i < std::size(kTable); ++i) {
    if (static_cast<size_t>(kTable[i].format) != i) return false;
  }
  return true;
}
static_assert(RowsInEnumOrder(), "kTable's rows must follow WeightFormat's order");

}  // namespace

const FormatTraits& Traits(WeightFormat format) {
  const auto i = static_cast<size_t>(format);
  if (i >= std::size(kTable)) Fail("weight format ", i, " is out of range");
  return kTable[i];
}

std::span<const FormatTraits> AllFormats() {
  return kTable;
}

const FormatTraits* FindFormatByGgmlType(uint32_t ggml_type) {
  for (const FormatTraits& t : kTable) {
    if (t.ggml_type == ggml_type) return &t;
  }
  return nullptr;
}

std::optional<WeightFormat> WeightFormatFromName(std::string_view name) {
  std::string upper(name);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const FormatTraits& t : kTable) {
    if (t.weight && upper == t.name) return t.format;
  }
  return std::nullopt;
}

std::string_view WeightFormatList() {
  static const std::string list = [] {
    std::string s;
    for (const FormatTraits& t : kTable) {
      if (!t.weight) continue;
      if (!s.empty()) s += ", ";
      s += t.name;
    }
    return s;
  }();
  return list;
}

int64_t FormatBlockCount(WeightFormat format, int64_t n) {
  const FormatTraits& t = Traits(format);
  if (n < 0 || n % t.block_size != 0) {
    Fail(t.name, " row length ", n, " is not a non-negative multiple of ", t.block_size);
  }
  return n / t.block_size;
}

size_t FormatRowBytes(WeightFormat format, int64_t n) {
  return static_cast<size_t>(FormatBlockCount(format, n)) *
         static_cast<size_t>(Traits(format).block_bytes);
}

}  // namespace starling
