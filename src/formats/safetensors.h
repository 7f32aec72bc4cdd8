// safetensors reading and writing, for single files and for Hugging Face sharded checkpoints.
//
// File layout: an 8-byte little-endian uint64 N, then N bytes of UTF-8 JSON (the header), then the
// data buffer. The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the start of the data buffer) and may hold "__metadata__", an object of
// string values. Reference: the huggingface/safetensors README.
//
// The reader treats every byte as untrusted: the header length, every number in the header and
// every byte range is checked before it is used, and every error names the file, the tensor (or
// key) and what was expected against what was found.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/file.h"

namespace starling {

// The reference implementation's bound on the JSON header; real headers are at most a few MB.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// "F32" -> kF32, ...; nullopt for a name this project does not know (e.g. "F8_E4M3").
std::optional<DType> SafetensorsDTypeFromName(std::string_view name);

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // row-major; shape.back() is the fastest-varying dimension
  uint64_t offset = 0;         // absolute within the file (not relative to the data buffer)
  uint64_t size_bytes = 0;     // product(shape) * DTypeSize(dtype)
};

// One parsed safetensors file. Move-only. Tensor data is not copied: Data() returns views into the
// bytes the file was parsed from. Those views are not aligned in general (the format promises
// nothing beyond the header being padded to 8 bytes by common writers): copy or memcpy-load.
class SafetensorsFile {
 public:
  // Memory-maps `path` and parses it; the mapping lives as long as the returned object (moves
  // included).
  static SafetensorsFile Open(const std::string& path);

  // Parses `bytes`, which the caller keeps alive for as long as the returned object (and any view
  // from Data) is used. `source` starts every error message.
  static SafetensorsFile Parse(std::string_view bytes, std::string source);

  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& source() const { return source_; }
  uint64_t file_size() const { return bytes_.size(); }
  uint64_t header_size() const { return header_size_; }  // N, the JSON header's length
  uint64_t data_offset() const { return 8 + header_size_; }

  // Tensors in the order of their data in the file (ties, i.e. empty tensors, by name).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* Find(std::string_view name) const;  // nullptr when absent
  // The tensor's bytes (size_bytes of them). `tensor` must come from this file's tensors():
  // another file's tensor throws Error only when its range does not lie inside this file.
  std::string_view Data(const SafetensorsTensor& tensor) const;

  // "__metadata__", empty when absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void ParseHeader();

  std::string source_;
  MappedFile mapping_;  // empty when parsed from a caller's buffer
  std::string_view bytes_;
  uint64_t header_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// A model's weights in one directory: either a single model.safetensors, or the shards named by
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file name}}).
//
// Every shard the index names is opened and parsed up front, and every tensor the index lists must
// be in the shard it names. Tensors a shard holds but the index does not list are part of the
// model too (Hugging Face loads a shard's whole contents), unless two shards both hold such a name,
// which is an error because nothing says which one is meant.
class SafetensorsModel {
 public:
  struct Entry {
    const SafetensorsTensor* tensor;
    const SafetensorsFile* file;
  };

  // Throws Error when `dir` holds neither file, or when any file is missing or malformed.
  static SafetensorsModel OpenDirectory(const std::string& dir);

  SafetensorsModel(SafetensorsModel&&) = default;
  SafetensorsModel& operator=(SafetensorsModel&&) = default;

  const std::string& directory() const { return dir_; }
  // "<dir>/model.safetensors.index.json" or "<dir>/model.safetensors", for error messages.
  const std::string& source() const { return source_; }
  bool sharded() const { return sharded_; }

  // The index's "metadata" object with every value rendered as text (numbers as JSON writes
  // them, e.g. "total_size" -> "8377472"); empty for a single file.
  const std::map<std::string, std::string>& index_metadata() const { return index_metadata_; }

  // The files, in the order of their names.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

  // Every tensor of the model with the file that holds it, sorted by name.
  const std::vector<Entry>& tensors() const { return entries_; }

  // nullptr when absent. `file`, when not null, receives the file that holds the tensor.
  const SafetensorsTensor* Find(std::string_view name,
                                const SafetensorsFile** file = nullptr) const;

  // The bytes of the tensor called `name`; throws Error naming the directory when absent.
  std::string_view Data(std::string_view name) const;
  std::string_view Data(const Entry& entry) const { return entry.file->Data(*entry.tensor); }

  // Sum of size_bytes over tensors().
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  SafetensorsModel() = default;
  void AddEntry(const SafetensorsTensor* tensor, const SafetensorsFile* file);

  std::string dir_;
  std::string source_;
  bool sharded_ = false;
  std::map<std::string, std::string> index_metadata_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<Entry> entries_;
  std::map<std::string, size_t, std::less<>> entry_index_;
  uint64_t total_bytes_ = 0;
};

// Builds a safetensors file in memory, the way Hugging Face's writer lays it out: tensors in the
// order they are added, data packed without gaps, the header padded with spaces to a multiple of
// 8 bytes (so the data buffer starts 8-byte aligned). Duplicate names, the reserved name
// "__metadata__", names that are not UTF-8, and bytes that do not match the shape throw Error.
class SafetensorsWriter {
 public:
  void SetMetadata(std::string_view key, std::string_view value);
  // Copies `raw_bytes`, which must be exactly product(shape) * DTypeSize(dtype) long.
  void AddTensor(std::string_view name, DType dtype, std::vector<int64_t> shape,
                 std::string_view raw_bytes);

  // The whole file. The writer stays usable.
  std::string Finish() const;
  // Writes the file to `path` (through a temporary file renamed into place).
  void WriteTo(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string data;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t, std::less<>> names_;
};

}  // namespace starling
