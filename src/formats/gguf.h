// GGUF (v2/v3) reading and writing. The reader treats every byte as untrusted: each count and
// length is checked against the bytes that remain before anything is allocated, and every error
// names the source, the item (metadata key or tensor) and the byte offset.
//
// Format reference: ggml's docs/gguf.md. All integers are little-endian.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/file.h"

namespace starling {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint32", "string", "array", ...; "unknown" for anything else.
const char* GgufValueTypeName(GgufType type);

// Tensor element types (ggml_type), numbered as in ggml.h. Only the ones this project knows how to
// size are listed; a file may hold others, which the reader rejects by number.
enum GgmlType : uint32_t {
  kGgmlF32 = 0,
  kGgmlF16 = 1,
  kGgmlQ4_0 = 2,
  kGgmlQ4_1 = 3,
  kGgmlQ5_0 = 6,
  kGgmlQ5_1 = 7,
  kGgmlQ8_0 = 8,
  kGgmlQ8_1 = 9,
  kGgmlQ2_K = 10,
  kGgmlQ3_K = 11,
  kGgmlQ4_K = 12,
  kGgmlQ5_K = 13,
  kGgmlQ6_K = 14,
  kGgmlQ8_K = 15,
  kGgmlI8 = 24,
  kGgmlI16 = 25,
  kGgmlI32 = 26,
  kGgmlI64 = 27,
  kGgmlF64 = 28,
  kGgmlBF16 = 30,
};

// Storage layout of a ggml type: `block_size` elements take `type_size` bytes.
struct GgmlTypeTraits {
  const char* name;  // "F32", "Q4_K", ...
  uint32_t block_size;
  uint32_t type_size;
};

// nullptr for a type this project does not know.
const GgmlTypeTraits* FindGgmlType(uint32_t ggml_type);

// "F32", "Q4_K", ...; "unknown(99)" for a type this project does not know.
std::string GgufTypeName(uint32_t ggml_type);

// Bytes taken by a tensor of `ggml_type` with shape `dims` (dims[0] is the row length). Throws
// Error for an unknown type, a row length that is not a multiple of the block size, or overflow.
uint64_t GgmlTensorBytes(uint32_t ggml_type, std::span<const uint64_t> dims);

// One metadata value. Scalars are widened: unsigned types fill `u`, signed types fill `i`, float
// types fill `f`, kBool fills `b`, kString fills `s`. Arrays keep their elements in the form that
// is cheap to load: strings in `strings`, nested arrays in `arrays`, and every fixed-size element
// type as the raw little-endian bytes in `raw` (decode with the GgufFile getters or the helpers
// below). Values own their bytes; they do not point into the file.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;

  // kArray only.
  GgufType array_type = GgufType::kUint8;
  uint64_t array_size = 0;
  std::vector<std::string> strings;  // array_type == kString
  std::vector<GgufValue> arrays;     // array_type == kArray
  std::string raw;                   // any other array_type: array_size packed elements

  bool is_array() const { return type == GgufType::kArray; }
};

// Decoding of the elements of a numeric GgufValue array (`raw`). Throw Error naming `what` when the
// element type does not fit: float arrays take float32/float64, integer arrays any integer type
// whose values fit in int64_t.
std::vector<float> GgufArrayAsFloats(const GgufValue& value, std::string_view what);
std::vector<int64_t> GgufArrayAsInts(const GgufValue& value, std::string_view what);

// "uint32", "string", "array[string, 512]", "array[array, 2]".
std::string GgufDescribeType(const GgufValue& value);

// A short human-readable rendering for listings: scalars in full, strings quoted (cut after 80
// bytes), arrays as their first `max_elements` elements then "...".
std::string GgufValueToString(const GgufValue& value, size_t max_elements = 8);

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // dims[0] is the fastest-varying (row length)
  uint32_t ggml_type = 0;
  uint64_t offset = 0;      // relative to data_offset(); a multiple of alignment()
  uint64_t n_elements = 0;  // product of dims
  uint64_t size_bytes = 0;  // storage size for ggml_type
};

// A parsed GGUF file. Move-only. Tensor data is not copied: TensorData() returns views into the
// bytes the file was parsed from.
class GgufFile {
 public:
  // Memory-maps `path` and parses it; the mapping lives as long as the returned object.
  static GgufFile Open(const std::string& path);

  // Parses `bytes`. The caller keeps `bytes` alive for as long as the returned object (and any view
  // from TensorData) is used. `source_name` starts every error message.
  static GgufFile Parse(std::string_view bytes, std::string source_name);

  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;

  const std::string& source() const { return source_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return bytes_.size(); }

  // Metadata, in file order.
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  bool Has(std::string_view key) const { return Find(key) != nullptr; }
  const GgufValue* Find(std::string_view key) const;  // nullptr when absent

  // Typed getters. Each throws Error naming the key when it is missing or has another type.
  std::string GetString(std::string_view key) const;
  uint64_t GetUint(std::string_view key) const;  // any unsigned, or non-negative signed, integer
  int64_t GetInt(std::string_view key) const;    // any integer that fits in int64_t
  double GetFloat(std::string_view key) const;   // float32 or float64
  bool GetBool(std::string_view key) const;
  const std::vector<std::string>& GetStringArray(std::string_view key) const;
  std::vector<float> GetFloatArray(std::string_view key) const;  // float32/float64 elements
  std::vector<int64_t> GetIntArray(std::string_view key) const;  // any integer elements

  // As above, but `fallback` when the key is absent. A present key of the wrong type still throws:
  // a mistyped value is a broken file, not a missing setting.
  std::string GetStringOr(std::string_view key, std::string_view fallback) const;
  uint64_t GetUintOr(std::string_view key, uint64_t fallback) const;
  int64_t GetIntOr(std::string_view key, int64_t fallback) const;
  double GetFloatOr(std::string_view key, double fallback) const;
  bool GetBoolOr(std::string_view key, bool fallback) const;

  // Tensors, in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;  // nullptr when absent
  // The tensor's bytes; throws Error when they do not lie inside this file.
  std::string_view TensorData(const GgufTensorInfo& tensor) const;
  // The file's mapping (empty when parsed from a caller's buffer).
  const MappedFile& mapping() const { return mapping_; }

 private:
  GgufFile() = default;
  const GgufValue& Require(std::string_view key) const;
  [[noreturn]] void FailType(std::string_view key, const GgufValue& value,
                             std::string_view expected) const;

  std::string source_;
  MappedFile mapping_;  // empty when parsed from a caller's buffer
  std::string_view bytes_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<GgufKeyValue> metadata_;
  std::map<std::string, size_t, std::less<>> key_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Builds a GGUF v3 file in memory. Keys and tensors are written in the order they are added.
// Adding "general.alignment" (a uint32 power of two, at most 1 MiB) sets the data alignment.
// Duplicate keys or tensor names, and tensor bytes that do not match the shape, throw Error.
class GgufWriter {
 public:
  void AddString(std::string_view key, std::string_view value);
  void AddUint32(std::string_view key, uint32_t value);
  void AddInt32(std::string_view key, int32_t value);
  void AddUint64(std::string_view key, uint64_t value);
  void AddFloat32(std::string_view key, float value);
  void AddBool(std::string_view key, bool value);
  void AddStringArray(std::string_view key, const std::vector<std::string>& values);
  void AddFloat32Array(std::string_view key, std::span<const float> values);
  void AddInt32Array(std::string_view key, std::span<const int32_t> values);
  // Any value, e.g. one read by GgufFile (to copy metadata into a new file).
  void AddValue(std::string_view key, const GgufValue& value);

  // Copies `raw_bytes`, which must be exactly GgmlTensorBytes(ggml_type, dims) long.
  void AddTensor(std::string_view name, std::vector<uint64_t> dims, uint32_t ggml_type,
                 std::string_view raw_bytes);

  // The whole file. The writer stays usable (Finish can be called again).
  std::string Finish() const;
  // Writes the file to `path` (through a temporary file renamed into place).
  void WriteTo(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t ggml_type;
    std::string data;
  };
  void BeginKey(std::string_view key, GgufType type);
  // Calls `sink` with consecutive pieces of the file.
  void Emit(const std::function<void(std::string_view)>& sink) const;

  size_t alignment_ = 32;
  uint64_t kv_count_ = 0;
  std::string kv_bytes_;  // the encoded key/value pairs
  std::set<std::string, std::less<>> keys_;
  std::vector<Tensor> tensors_;
  std::set<std::string, std::less<>> tensor_names_;
};

}  // namespace starling
