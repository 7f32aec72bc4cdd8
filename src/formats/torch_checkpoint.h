// A restricted reader for PyTorch checkpoints written by torch.save (pytorch_model.bin), for
// state dicts of dense tensors such as Starling-RM-7B-alpha's. It never runs pickle: it reads the
// handful of pickle opcodes and globals that a state dict needs, and refuses everything else.
//
// File layout (torch.save's zip format, PyTorch >= 1.6): a zip archive whose entries are all
// STORED (no compression) under one directory, the "archive name" (any name: `archive`,
// `pytorch_model`, ...):
//   <archive>/data.pkl        the pickle (protocol 2) of the state dict
//   <archive>/data/<key>      the raw little-endian bytes of one storage
//   <archive>/version, <archive>/byteorder ("little" when present), <archive>/.data/...
// torch pads each local header's extra field so that entry data starts 64-byte aligned, writes
// data descriptors (sizes only in the central directory) and a ZIP64 end record; a 7B bf16
// checkpoint is ~13.5 GB, so ZIP64 sizes and offsets are supported.
//
// The pickle is a dict (or collections.OrderedDict, whose `_metadata` state set by BUILD is
// accepted and ignored) mapping parameter names to
//   torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//                                   backward_hooks)
// where `storage` is a persistent id ('storage', torch.FloatStorage | torch.HalfStorage |
// torch.BFloat16Storage, key, location, numel). Several names may share one storage (or one
// tensor object).
//
// Every byte is untrusted: zip offsets, sizes and CRC-32s, pickle lengths, memo indices, stack
// depth, shapes and storage ranges are all checked, and every error is a starling::Error naming
// the source, the zip entry or pickle offset, and what was found. The three parts live in
// zip_reader (the archive), torch_pickle (the state dict pickle) and torch_checkpoint.cpp (the
// tensors, checked against their storages).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/file.h"

namespace starling {

// Limits on what a state dict pickle may build. Real ones are far below each (a 7B model's
// data.pkl is ~40 KB, with ~300 tensors).
inline constexpr uint64_t kTorchMaxPickleBytes = 64ull << 20;
inline constexpr size_t kTorchMaxPickleStack = 1 << 16;   // values and marks on the stack
inline constexpr size_t kTorchMaxPickleMemo = 1 << 20;    // memo entries
inline constexpr size_t kTorchMaxPickleValues = 1 << 22;  // objects built, all told
inline constexpr int kTorchMaxPickleNesting = 16;         // containers inside containers
inline constexpr size_t kTorchMaxTensorRank = 32;

struct TorchTensor {
  std::string name;
  DType dtype = DType::kF32;   // F32, F16 or BF16 (from the storage class)
  std::vector<int64_t> shape;  // row-major and contiguous; shape.back() varies fastest
  // The tensor's bytes, in place in the file (no copy), aligned to DTypeSize(dtype).
  const void* data = nullptr;
  uint64_t size_bytes = 0;      // product(shape) * DTypeSize(dtype)
  std::string storage;          // storage key: its bytes are the entry <archive>/data/<storage>
  uint64_t storage_offset = 0;  // in elements, from the start of the storage

  std::string_view bytes() const {
    return {static_cast<const char*>(data), static_cast<size_t>(size_bytes)};
  }
};

// One parsed checkpoint. Move-only. Tensor data points into the bytes it was parsed from.
class TorchCheckpoint {
 public:
  // Memory-maps `path` and parses it; the mapping lives as long as the returned object (moves
  // included).
  static TorchCheckpoint Open(const std::string& path);

  // Parses `bytes`, which the caller keeps alive for as long as the returned object (and any
  // tensor data pointer) is used. `source` starts every error message. Tensor data must be
  // aligned in memory to its element size: torch's 64-byte padding gives that for any buffer
  // aligned to 64 bytes (a memory map, or an allocation of that alignment). Each zip entry's
  // CRC-32 is checked unless `check_crc` is false (the fuzz target's way past it).
  static TorchCheckpoint Parse(std::string_view bytes, std::string source, bool check_crc = true);

  TorchCheckpoint(TorchCheckpoint&&) = default;
  TorchCheckpoint& operator=(TorchCheckpoint&&) = default;
  TorchCheckpoint(const TorchCheckpoint&) = delete;
  TorchCheckpoint& operator=(const TorchCheckpoint&) = delete;

  const std::string& source() const { return source_; }
  // The directory every zip entry lives in (e.g. "pytorch_model").
  const std::string& archive_name() const { return archive_name_; }

  // Tensors in pickle (i.e. state dict) order.
  const std::vector<TorchTensor>& tensors() const { return tensors_; }
  const TorchTensor* Find(std::string_view name) const;  // nullptr when absent

 private:
  TorchCheckpoint() = default;
  void ParseArchive(bool check_crc);

  std::string source_;
  MappedFile mapping_;  // empty when parsed from a caller's buffer
  std::string_view bytes_;
  std::string archive_name_;
  std::vector<TorchTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

}  // namespace starling
