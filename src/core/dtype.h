// Element types of dense tensors, shared by the checkpoint readers (safetensors, GGUF) and the
// model code. Quantized GGUF block types are not listed: they are not element types (see
// GgmlType in formats/gguf.h).
#pragma once

#include <cstddef>
#include <cstdint>

namespace starling {

enum class DType : uint8_t { kF32, kF16, kBF16, kI8, kI16, kI32, kI64, kU8, kBool, kF64 };

// Bytes per element (kBool takes one byte, as in safetensors and PyTorch).
constexpr size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI8: return 1;
    case DType::kI16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
    case DType::kBool: return 1;
    case DType::kF64: return 8;
  }
  return 0;
}

// The safetensors spelling ("F32", "BF16", "BOOL", ...), which is also what users see in listings
// and error messages; "unknown" for a value outside the enum.
constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI8: return "I8";
    case DType::kI16: return "I16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
    case DType::kF64: return "F64";
  }
  return "unknown";
}

}  // namespace starling
