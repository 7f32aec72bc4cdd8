// The pickle half of torch.save's format: a stack machine for the handful of opcodes and
// globals a state dict needs (see torch_checkpoint.h), building only inert values. It never
// runs pickle; every other opcode and global is refused with the offset where it stands.
// Used by TorchCheckpoint, which checks the tensors it returns against their storages.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "formats/torch_checkpoint.h"
#include "formats/zip_reader.h"

namespace starling::torch_pickle {

enum class GlobalId : uint8_t {
  kOrderedDict,
  kRebuildTensorV2,
  kFloatStorage,
  kHalfStorage,
  kBFloat16Storage
};

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kString,
  kTuple,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

// What _rebuild_tensor_v2 was called with; checked against the storage once the tensor's name
// is known.
struct TensorArgs {
  const ZipEntry* storage = nullptr;
  std::string_view key;  // the storage key, inside the entry's name
  DType dtype = DType::kF32;
  uint64_t storage_numel = 0;
  uint64_t offset = 0;  // in elements
  std::vector<int64_t> shape, stride;
  uint64_t op_offset = 0;  // of the REDUCE that built it
};

struct Value;
using ValuePtr = std::shared_ptr<Value>;

// One value on the pickle stack. Containers hold values built before them; a dict becomes
// frozen (no more items) once it is put inside another container, which rules out cycles,
// and containers nest at most kTorchMaxPickleNesting deep, which bounds the recursion of their
// destruction.
struct Value {
  Kind kind = Kind::kNone;
  bool ordered = false;  // kDict made by collections.OrderedDict()
  bool frozen = false;   // kDict inside another container
  int nesting = 0;       // 0 for scalars, 1 + the deepest element for containers
  int64_t number = 0;    // kBool (0 or 1), kInt
  GlobalId global = GlobalId::kOrderedDict;  // kGlobal
  std::string text;                          // kString
  std::vector<ValuePtr> items;               // kTuple: elements; kDict: key, value, key, value, ...
  std::map<std::string_view, size_t, std::less<>> keys;  // kDict: key text -> index in items
  const ZipEntry* entry = nullptr;                       // kStorage
  std::string_view key;                                  // kStorage: the storage key
  DType dtype = DType::kF32;                             // kStorage
  uint64_t numel = 0;                                    // kStorage
  std::unique_ptr<TensorArgs> tensor;                    // kTensor
};

// "None", "int 3", "a tuple of 2", ...: what a value is, for "found ..." messages.
std::string Describe(const Value& v);

// Storage key -> its zip entry "<archive>/data/<key>".
using StorageMap = std::map<std::string_view, const ZipEntry*, std::less<>>;

// Runs `pickle` (data.pkl) to STOP and returns the one value left on the stack. `storage_dir`
// ("<archive>/data/") is for messages; persistent ids must name a storage in `storages` whose
// entry holds exactly numel elements. Errors start with `source` and the pickle offset.
ValuePtr RunStateDictPickle(const std::string& source, std::string_view pickle,
                            std::string_view storage_dir, const StorageMap& storages);

}  // namespace starling::torch_pickle
