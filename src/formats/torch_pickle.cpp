#include "formats/torch_pickle.h"

#include <algorithm>
#include <bit>
#include <optional>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "core/utf8.h"
#include "formats/parse_util.h"

namespace starling::torch_pickle {

// Pickle integers are read with memcpy, which is only right on a little-endian host.
static_assert(std::endian::native == std::endian::little,
              "pickle reading assumes a little-endian host");

namespace {

enum Opcode : uint8_t {
  kMark = '(',
  kStop = '.',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kBinUnicode = 'X',
  kBuild = 'b',
  kGlobal = 'c',
  kEmptyDict = '}',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kProto = 0x80,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kMemoize = 0x94,
  kFrame = 0x95,
};

// Every opcode of pickle protocols 0-5, for error messages.
const char* OpcodeName(uint8_t code) {
  switch (code) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "unknown";
  }
}

struct AllowedGlobal {
  std::string_view module;
  std::string_view name;
  GlobalId id;
};

constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections", "OrderedDict", GlobalId::kOrderedDict},
    {"torch._utils", "_rebuild_tensor_v2", GlobalId::kRebuildTensorV2},
    {"torch", "FloatStorage", GlobalId::kFloatStorage},
    {"torch", "HalfStorage", GlobalId::kHalfStorage},
    {"torch", "BFloat16Storage", GlobalId::kBFloat16Storage},
};
constexpr std::string_view kAllowedGlobalList =
    "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch.FloatStorage, "
    "torch.HalfStorage, torch.BFloat16Storage";

std::string GlobalName(GlobalId id) {
  for (const AllowedGlobal& g : kAllowedGlobals) {
    if (g.id == id) return Concat(g.module, ".", g.name);
  }
  return "?";
}

std::optional<DType> StorageDType(GlobalId id) {
  switch (id) {
    case GlobalId::kFloatStorage: return DType::kF32;
    case GlobalId::kHalfStorage: return DType::kF16;
    case GlobalId::kBFloat16Storage: return DType::kBF16;
    default: return std::nullopt;
  }
}

class Unpickler {
 public:
  Unpickler(const std::string& source, std::string_view pickle, std::string_view storage_dir,
            const StorageMap& storages)
      : source_(source), pkl_(pickle), storage_dir_(storage_dir), storages_(storages) {}

  // Runs the pickle to STOP; returns the one value left on the stack.
  ValuePtr Run();

 private:
  template <typename... Parts>
  [[noreturn]] void Error(Parts&&... parts) const {
    Fail(source_, ": data.pkl offset ", op_, ": ", std::forward<Parts>(parts)...);
  }

  const char* Take(uint64_t n, const char* what) {
    if (n > pkl_.size() - pos_) {
      Error(OpcodeName(opcode_), " ", what, " needs ", n, " bytes, only ", pkl_.size() - pos_,
            " remain");
    }
    const char* p = pkl_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint8_t Byte(const char* what) { return static_cast<uint8_t>(*Take(1, what)); }

  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  void CheckRoom() const {
    if (stack_.size() + marks_.size() >= kTorchMaxPickleStack) {
      Error("the stack grows past ", kTorchMaxPickleStack, " entries");
    }
  }
  void Push(ValuePtr v) {
    CheckRoom();
    stack_.push_back(std::move(v));
  }
  ValuePtr Pop() {
    if (stack_.size() <= Fence()) {
      Error(OpcodeName(opcode_), " needs a value on the stack",
            marks_.empty() ? "" : " above the last MARK");
    }
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  Value& Top() {
    if (stack_.size() <= Fence()) {
      Error(OpcodeName(opcode_), " needs a value on the stack",
            marks_.empty() ? "" : " above the last MARK");
    }
    return *stack_.back();
  }
  std::vector<ValuePtr> PopToMark() {
    if (marks_.empty()) Error(OpcodeName(opcode_), " without a MARK");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(
        std::make_move_iterator(stack_.begin() + static_cast<ptrdiff_t>(mark)),
        std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }

  ValuePtr New(Kind kind) {
    if (++built_ > kTorchMaxPickleValues) {
      Error("the pickle builds more than ", kTorchMaxPickleValues, " objects");
    }
    ValuePtr v = std::make_shared<Value>();
    v->kind = kind;
    if (kind == Kind::kTuple || kind == Kind::kDict) v->nesting = 1;
    return v;
  }
  // A value goes inside a container: a dict can no longer change, and the container's nesting
  // grows.
  void Contain(Value& container, Value& element) {
    if (element.kind == Kind::kDict) element.frozen = true;
    container.nesting = std::max(container.nesting, element.nesting + 1);
    if (container.nesting > kTorchMaxPickleNesting) {
      Error("containers nest deeper than ", kTorchMaxPickleNesting);
    }
  }
  void PushTuple(std::vector<ValuePtr> items) {
    ValuePtr t = New(Kind::kTuple);
    for (const ValuePtr& item : items) Contain(*t, *item);
    t->items = std::move(items);
    Push(std::move(t));
  }
  void PushInt(int64_t n) {
    ValuePtr v = New(Kind::kInt);
    v->number = n;
    Push(std::move(v));
  }
  void PushString(uint64_t n) {
    const char* p = Take(n, "string");
    const std::string_view s(p, n);
    if (!IsWellFormedUtf8(s)) Error(OpcodeName(opcode_), " string is not valid UTF-8");
    ValuePtr v = New(Kind::kString);
    v->text = s;
    Push(std::move(v));
  }
  void Put(uint64_t index) {
    (void)Top();  // there must be a value to memoize
    if (memo_.size() >= kTorchMaxPickleMemo && !memo_.contains(index)) {
      Error("the memo grows past ", kTorchMaxPickleMemo, " entries");
    }
    memo_[index] = stack_.back();
  }
  void Get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end())
      Error(OpcodeName(opcode_), " of memo entry ", index, ", which is not set");
    Push(it->second);
  }

  void Global();
  void PersistentId();
  void Reduce();
  void Build();
  void SetItem(Value& dict, const ValuePtr& key, const ValuePtr& value);
  std::vector<int64_t> IntTuple(const Value& v, const char* what);

  const std::string& source_;
  std::string_view pkl_;
  std::string_view storage_dir_;  // "<archive>/data/", for messages
  const StorageMap& storages_;
  size_t pos_ = 0;
  size_t op_ = 0;  // offset of the opcode being run
  uint8_t opcode_ = 0;
  size_t built_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;  // stack sizes at each open MARK
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::map<std::string_view, DType, std::less<>> storage_dtypes_;  // key -> dtype, as first seen
};

ValuePtr Unpickler::Run() {
  while (true) {
    op_ = pos_;
    if (pos_ >= pkl_.size()) Error("the pickle ends without STOP");
    opcode_ = static_cast<uint8_t>(pkl_[pos_++]);
    switch (opcode_) {
      case kProto: {
        const uint8_t version = Byte("version");
        if (version < 2 || version > 5) {
          Error("pickle protocol ", int{version}, " is not supported (torch.save writes 2)");
        }
        break;
      }
      case kFrame: {
        // Frames only group opcodes for buffered reading; the whole pickle is in memory.
        const uint64_t n = Le64(Take(8, "length"));
        if (n > pkl_.size() - pos_) {
          Error("FRAME of ", n, " bytes runs past the end (", pkl_.size() - pos_, " remain)");
        }
        break;
      }
      case kMark:
        CheckRoom();
        marks_.push_back(stack_.size());
        break;
      case kEmptyDict: Push(New(Kind::kDict)); break;
      case kEmptyTuple: PushTuple({}); break;
      case kTuple: PushTuple(PopToMark()); break;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        std::vector<ValuePtr> items(size_t{opcode_} - kTuple1 + 1);
        for (size_t k = items.size(); k-- > 0;) items[k] = Pop();
        PushTuple(std::move(items));
        break;
      }
      case kShortBinUnicode: PushString(Byte("length")); break;
      case kBinUnicode: PushString(Le32(Take(4, "length"))); break;
      case kBinUnicode8: PushString(Le64(Take(8, "length"))); break;
      case kBinInt: PushInt(static_cast<int32_t>(Le32(Take(4, "value")))); break;
      case kBinInt1: PushInt(Byte("value")); break;
      case kBinInt2: PushInt(Le16(Take(2, "value"))); break;
      case kLong1: {
        const uint8_t n = Byte("length");
        if (n > 8) Error("LONG1 of ", int{n}, " bytes does not fit in 64 bits");
        const char* p = Take(n, "value");
        uint64_t v = 0;
        for (size_t k = 0; k < n; ++k) v |= uint64_t{static_cast<uint8_t>(p[k])} << (8 * k);
        if (n > 0 && n < 8 && (static_cast<uint8_t>(p[n - 1]) & 0x80) != 0)
          v |= ~uint64_t{0} << (8 * n);
        PushInt(static_cast<int64_t>(v));
        break;
      }
      case kNewTrue:
      case kNewFalse: {
        ValuePtr v = New(Kind::kBool);
        v->number = opcode_ == kNewTrue;
        Push(std::move(v));
        break;
      }
      case kNone: Push(New(Kind::kNone)); break;
      case kBinPut: Put(Byte("index")); break;
      case kLongBinPut: Put(Le32(Take(4, "index"))); break;
      case kMemoize: Put(memo_.size()); break;
      case kBinGet: Get(Byte("index")); break;
      case kLongBinGet: Get(Le32(Take(4, "index"))); break;
      case kGlobal: Global(); break;
      case kBinPersId: PersistentId(); break;
      case kReduce: Reduce(); break;
      case kBuild: Build(); break;
      case kSetItem: {
        const ValuePtr value = Pop();
        const ValuePtr key = Pop();
        SetItem(Top(), key, value);
        break;
      }
      case kSetItems: {
        const std::vector<ValuePtr> items = PopToMark();
        if (items.size() % 2 != 0) {
          Error("SETITEMS with an odd number (", items.size(), ") of keys and values");
        }
        Value& dict = Top();
        for (size_t k = 0; k < items.size(); k += 2) SetItem(dict, items[k], items[k + 1]);
        break;
      }
      case kStop:
        if (!marks_.empty()) Error("STOP with ", marks_.size(), " MARK(s) still open");
        if (stack_.size() != 1) {
          Error("STOP with ", stack_.size(), " values on the stack; expected the state dict alone");
        }
        if (pos_ != pkl_.size()) Error(pkl_.size() - pos_, " bytes follow STOP");
        return stack_.back();
      default:
        Error("pickle opcode ", Hex(opcode_), " (", OpcodeName(opcode_),
              ") is not allowed in a state dict");
    }
  }
}

void Unpickler::Global() {
  auto line = [&](const char* what) {
    const std::string_view rest = pkl_.substr(pos_);
    const size_t end = rest.find('\n');
    if (end == std::string_view::npos) Error("GLOBAL ", what, " has no end of line");
    pos_ += end + 1;
    return rest.substr(0, end);
  };
  const std::string_view module = line("module");
  const std::string_view name = line("name");
  for (const AllowedGlobal& g : kAllowedGlobals) {
    if (g.module == module && g.name == name) {
      ValuePtr v = New(Kind::kGlobal);
      v->global = g.id;
      Push(std::move(v));
      return;
    }
  }
  Error("global ", Quoted(Concat(module, " ", name)),
        " is not allowed in a state dict (allowed: ", kAllowedGlobalList, ")");
}

void Unpickler::PersistentId() {
  const ValuePtr pid = Pop();
  auto bad = [&](auto&&... why) {
    Error("BINPERSID: a persistent id must be ('storage', <storage class>, key, location, numel); ",
          why...);
  };
  if (pid->kind != Kind::kTuple || pid->items.size() != 5) bad("found ", Describe(*pid));
  const Value& tag = *pid->items[0];
  const Value& cls = *pid->items[1];
  const Value& key = *pid->items[2];
  const Value& location = *pid->items[3];
  const Value& numel = *pid->items[4];
  if (tag.kind != Kind::kString || tag.text != "storage") bad("element 0 is ", Describe(tag));
  const std::optional<DType> dtype =
      cls.kind == Kind::kGlobal ? StorageDType(cls.global) : std::nullopt;
  if (!dtype) bad("element 1 (the storage class) is ", Describe(cls));
  if (key.kind != Kind::kString) bad("element 2 (the key) is ", Describe(key));
  if (location.kind != Kind::kString) bad("element 3 (the location) is ", Describe(location));
  if (numel.kind != Kind::kInt || numel.number < 0) {
    bad("element 4 (the element count) is ", Describe(numel));
  }

  const auto it = storages_.find(key.text);
  if (it == storages_.end()) {
    Error("storage ", Quoted(key.text), " has no zip entry ",
          Quoted(Concat(storage_dir_, key.text)));
  }
  const ZipEntry& entry = *it->second;
  const auto bytes = CheckedMul(static_cast<uint64_t>(numel.number), DTypeSize(*dtype));
  if (!bytes || *bytes != entry.size) {
    Error("storage ", Quoted(key.text), " of ", numel.number, " ", DTypeName(*dtype),
          " elements needs ", bytes ? Concat(*bytes) : std::string("too many"),
          " bytes, but its entry holds ", entry.size);
  }
  const std::string_view stable_key = entry.name.substr(storage_dir_.size());
  const auto [seen, inserted] = storage_dtypes_.emplace(stable_key, *dtype);
  if (!inserted && seen->second != *dtype) {
    Error("storage ", Quoted(key.text), " is used as both ", DTypeName(seen->second), " and ",
          DTypeName(*dtype));
  }
  ValuePtr v = New(Kind::kStorage);
  v->entry = &entry;
  v->key = stable_key;
  v->dtype = *dtype;
  v->numel = static_cast<uint64_t>(numel.number);
  Push(std::move(v));
}

std::vector<int64_t> Unpickler::IntTuple(const Value& v, const char* what) {
  if (v.kind != Kind::kTuple)
    Error("_rebuild_tensor_v2: ", what, " is ", Describe(v), ", not a tuple");
  if (v.items.size() > kTorchMaxTensorRank) {
    Error("_rebuild_tensor_v2: ", what, " has ", v.items.size(), " dimensions, more than ",
          kTorchMaxTensorRank);
  }
  std::vector<int64_t> out;
  out.reserve(v.items.size());
  for (size_t k = 0; k < v.items.size(); ++k) {
    const Value& d = *v.items[k];
    if (d.kind != Kind::kInt || d.number < 0) {
      Error("_rebuild_tensor_v2: ", what, "[", k, "] is ", Describe(d), ", not a non-negative int");
    }
    out.push_back(d.number);
  }
  return out;
}

void Unpickler::Reduce() {
  const ValuePtr args = Pop();
  const ValuePtr callable = Pop();
  const bool allowed =
      callable->kind == Kind::kGlobal && (callable->global == GlobalId::kOrderedDict ||
                                          callable->global == GlobalId::kRebuildTensorV2);
  if (!allowed) {
    Error("REDUCE calls ", Describe(*callable),
          "; only collections.OrderedDict and torch._utils._rebuild_tensor_v2 may be called");
  }
  if (args->kind != Kind::kTuple)
    Error("REDUCE arguments must be a tuple, found ", Describe(*args));
  const std::vector<ValuePtr>& a = args->items;
  if (callable->global == GlobalId::kOrderedDict) {
    if (!a.empty()) {
      Error("collections.OrderedDict must be called without arguments, found ", a.size());
    }
    ValuePtr dict = New(Kind::kDict);
    dict->ordered = true;
    Push(std::move(dict));
    return;
  }

  if (a.size() != 6) {
    Error("_rebuild_tensor_v2 takes 6 arguments (storage, storage_offset, size, stride, ",
          "requires_grad, backward_hooks), found ", a.size());
  }
  const Value& storage = *a[0];
  const Value& offset = *a[1];
  if (storage.kind != Kind::kStorage) {
    Error("_rebuild_tensor_v2: storage is ", Describe(storage), ", not a storage");
  }
  if (offset.kind != Kind::kInt || offset.number < 0) {
    Error("_rebuild_tensor_v2: storage_offset is ", Describe(offset), ", not a non-negative int");
  }
  auto t = std::make_unique<TensorArgs>();
  t->shape = IntTuple(*a[2], "size");
  t->stride = IntTuple(*a[3], "stride");
  if (t->shape.size() != t->stride.size()) {
    Error("_rebuild_tensor_v2: size ", FormatShape(t->shape), " and stride ",
          FormatShape(t->stride), " differ in length");
  }
  if (a[4]->kind != Kind::kBool) {
    Error("_rebuild_tensor_v2: requires_grad is ", Describe(*a[4]), ", not a bool");
  }
  if (a[5]->kind != Kind::kDict || !a[5]->items.empty()) {
    Error("_rebuild_tensor_v2: backward_hooks must be an empty OrderedDict, found ",
          a[5]->kind == Kind::kDict ? Concat(Describe(*a[5]), " of ", a[5]->items.size() / 2)
                                    : Describe(*a[5]));
  }
  t->storage = storage.entry;
  t->key = storage.key;
  t->dtype = storage.dtype;
  t->storage_numel = storage.numel;
  t->offset = static_cast<uint64_t>(offset.number);
  t->op_offset = op_;
  ValuePtr tensor = New(Kind::kTensor);
  tensor->tensor = std::move(t);
  Push(std::move(tensor));
}

void Unpickler::Build() {
  const ValuePtr state = Pop();
  const Value& target = Top();
  if (target.kind != Kind::kDict || !target.ordered) {
    Error("BUILD on ", Describe(target),
          "; only an OrderedDict's state (a state dict's _metadata) may be set");
  }
  if (state->kind != Kind::kDict) Error("BUILD state must be a dict, found ", Describe(*state));
  // The state ({'_metadata': {module: {'version': 1}, ...}}) only matters to
  // nn.Module.load_state_dict; it is accepted and dropped.
}

void Unpickler::SetItem(Value& dict, const ValuePtr& key, const ValuePtr& value) {
  const char* op = OpcodeName(opcode_);
  if (dict.kind != Kind::kDict) Error(op, " on ", Describe(dict), ", not a dict");
  if (dict.frozen) Error(op, " on a dict that is already inside another container");
  if (value.get() == &dict) Error(op, ": a dict cannot contain itself");
  if (key->kind != Kind::kString) Error(op, ": keys must be strings, found ", Describe(*key));
  const auto [it, inserted] = dict.keys.emplace(key->text, dict.items.size());
  if (!inserted) Error(op, ": duplicate key ", Quoted(key->text));
  Contain(dict, *value);
  dict.items.push_back(key);
  dict.items.push_back(value);
}

}  // namespace

std::string Describe(const Value& v) {
  switch (v.kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return v.number ? "True" : "False";
    case Kind::kInt: return Concat("int ", v.number);
    case Kind::kString: return Concat("string ", Quoted(v.text));
    case Kind::kTuple: return Concat("a tuple of ", v.items.size());
    case Kind::kDict: return v.ordered ? "an OrderedDict" : "a dict";
    case Kind::kGlobal: return Concat("global ", GlobalName(v.global));
    case Kind::kStorage: return Concat("storage ", Quoted(v.key));
    case Kind::kTensor: return "a tensor";
  }
  return "?";
}

ValuePtr RunStateDictPickle(const std::string& source, std::string_view pickle,
                            std::string_view storage_dir, const StorageMap& storages) {
  return Unpickler(source, pickle, storage_dir, storages).Run();
}

}  // namespace starling::torch_pickle
