#include "formats/torch_checkpoint.h"

#include <cstdint>
#include <utility>

#include "core/error.h"
#include "formats/parse_util.h"
#include "formats/torch_pickle.h"
#include "formats/zip_reader.h"

namespace starling {

using torch_pickle::Describe;
using torch_pickle::Kind;
using torch_pickle::RunStateDictPickle;
using torch_pickle::StorageMap;
using torch_pickle::TensorArgs;
using torch_pickle::Value;
using torch_pickle::ValuePtr;

TorchCheckpoint TorchCheckpoint::Open(const std::string& path) {
  MappedFile mapping(path);
  TorchCheckpoint checkpoint = Parse(mapping.bytes(), path);
  // Moving a MappedFile keeps its address, so the data pointers parsed above stay valid.
  checkpoint.mapping_ = std::move(mapping);
  return checkpoint;
}

TorchCheckpoint TorchCheckpoint::Parse(std::string_view bytes, std::string source, bool check_crc) {
  TorchCheckpoint checkpoint;
  checkpoint.source_ = std::move(source);
  checkpoint.bytes_ = bytes;
  checkpoint.ParseArchive(check_crc);
  return checkpoint;
}

void TorchCheckpoint::ParseArchive(bool check_crc) {
  const std::string& src = source_;
  const std::vector<ZipEntry> entries = ReadStoredZip(bytes_, src, check_crc);

  // The archive directory: the one holding data.pkl. Every entry must be inside it.
  const ZipEntry* pickle = nullptr;
  for (const ZipEntry& entry : entries) {
    const size_t slash = entry.name.find('/');
    if (slash == 0 || slash == std::string_view::npos) continue;
    if (entry.name.substr(slash) != "/data.pkl") continue;
    if (pickle != nullptr) {
      Fail(src, ": two pickles, ", Quoted(pickle->name), " and ", Quoted(entry.name));
    }
    pickle = &entry;
  }
  if (pickle == nullptr) {
    Fail(src, ": no '<archive>/data.pkl' among its ", entries.size(),
         " zip entries: not a torch.save checkpoint");
  }
  archive_name_ = pickle->name.substr(0, pickle->name.find('/'));
  const std::string dir = archive_name_ + "/";
  const std::string storage_dir = dir + "data/";
  StorageMap storages;
  for (const ZipEntry& entry : entries) {
    if (!entry.name.starts_with(dir)) {
      Fail(src, ": zip entry ", Quoted(entry.name), " is outside the archive directory ",
           Quoted(dir));
    }
    if (entry.name.starts_with(storage_dir)) {
      storages.emplace(entry.name.substr(storage_dir.size()), &entry);
    } else if (entry.name == dir + "byteorder") {
      const std::string_view order = bytes_.substr(entry.data_offset, entry.size);
      if (order != "little") {
        Fail(src, ": ", Quoted(entry.name), " is ", Quoted(order),
             ": only little-endian checkpoints ('little') are supported");
      }
    }
  }
  if (pickle->size > kTorchMaxPickleBytes) {
    Fail(src, ": ", Quoted(pickle->name), " is ", pickle->size, " bytes, more than the ",
         kTorchMaxPickleBytes, "-byte limit for a state dict pickle");
  }

  const std::string_view pkl = bytes_.substr(pickle->data_offset, pickle->size);
  const ValuePtr top = RunStateDictPickle(src, pkl, storage_dir, storages);
  if (top->kind != Kind::kDict) {
    Fail(src, ": data.pkl holds ", Describe(*top), ", not a state dict (a dict of tensors)");
  }

  tensors_.reserve(top->items.size() / 2);
  for (size_t k = 0; k < top->items.size(); k += 2) {
    const std::string& name = top->items[k]->text;
    const Value& value = *top->items[k + 1];
    if (value.kind != Kind::kTensor) {
      Fail(src, ": state dict entry ", Quoted(name), " is ", Describe(value), ", not a tensor");
    }
    const TensorArgs& t = *value.tensor;
    const std::string where =
        Concat(src, ": tensor ", Quoted(name), " (data.pkl offset ", t.op_offset, ")");

    uint64_t numel = 1;
    for (const int64_t d : t.shape) {
      const auto next = CheckedMul(numel, static_cast<uint64_t>(d));
      if (!next) Fail(where, ": the element count of shape ", FormatShape(t.shape), " overflows");
      numel = *next;
    }
    // Row-major contiguous, as torch's is_contiguous(): strides of size-1 dimensions do not
    // matter, and an empty tensor is contiguous whatever its strides.
    if (numel != 0) {
      std::vector<int64_t> expected(t.shape.size());
      uint64_t step = 1;
      bool contiguous = true;
      for (size_t d = t.shape.size(); d-- > 0;) {
        expected[d] = static_cast<int64_t>(step);
        if (t.shape[d] != 1 && static_cast<uint64_t>(t.stride[d]) != step) contiguous = false;
        step *= static_cast<uint64_t>(t.shape[d]);  // no overflow: step <= numel
      }
      if (!contiguous) {
        Fail(where, ": stride ", FormatShape(t.stride), " is not row-major contiguous for shape ",
             FormatShape(t.shape), " (expected ", FormatShape(expected),
             "); only contiguous tensors can be read in place");
      }
    }
    const uint64_t elem = DTypeSize(t.dtype);
    uint64_t end = 0;  // in elements
    const bool overflow = __builtin_add_overflow(t.offset, numel, &end);
    if (overflow || end > t.storage_numel) {
      Fail(where, ": elements [", t.offset, ", ", overflow ? std::string("overflow") : Concat(end),
           ") of shape ", FormatShape(t.shape), " run past the end of storage ", Quoted(t.key),
           " (", t.storage_numel, " ", DTypeName(t.dtype), " elements)");
    }
    // end <= storage_numel, whose byte size is the entry's size, so these do not overflow.
    const uint64_t data_offset = t.storage->data_offset + t.offset * elem;
    const char* data = bytes_.data() + data_offset;
    if (reinterpret_cast<uintptr_t>(data) % elem != 0) {
      Fail(where, ": its data at file offset ", data_offset, " (storage ", Quoted(t.key),
           " at offset ", t.storage->data_offset, ") is not aligned in memory to its ", elem,
           "-byte ", DTypeName(t.dtype),
           " elements; torch.save aligns entries to 64 bytes, so the file was rewritten by "
           "another tool");
    }
    TorchTensor out;
    out.name = name;
    out.dtype = t.dtype;
    out.shape = t.shape;
    out.data = data;
    out.size_bytes = numel * elem;
    out.storage = std::string(t.key);
    out.storage_offset = t.offset;
    index_.emplace(out.name, tensors_.size());
    tensors_.push_back(std::move(out));
  }
}

const TorchTensor* TorchCheckpoint::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace starling
