#include "formats/torch_checkpoint.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "core/utf8.h"

namespace starling {

// Zip fields and pickle integers are read with memcpy, and storage bytes are handed out as
// stored (little-endian), which is only right on a little-endian host.
static_assert(std::endian::native == std::endian::little,
              "torch checkpoint reading assumes a little-endian host");

namespace {

std::string Quoted(std::string_view s) {
  return Concat("'", PrintableForError(s), "'");
}

std::string Hex(uint64_t v) {
  return Concat("0x", std::hex, v);
}

std::string FormatShape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t k = 0; k < shape.size(); ++k) out += Concat(k ? ", " : "", shape[k]);
  return out + "]";
}

std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

uint16_t Le16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t Le32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t Le64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Zip: the central directory, then each entry's local header. Only what torch.save writes is
// accepted: one disk, STORED entries, no encryption; ZIP64 sizes and offsets are fine.

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kMaxCommentSize = 0xFFFF;
constexpr uint32_t kSaturated32 = 0xFFFFFFFF;  // "see the zip64 field"
constexpr uint16_t kSaturated16 = 0xFFFF;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kFlagDataDescriptor = 0x0008;
constexpr uint16_t kFlagStrongEncryption = 0x0040;
constexpr uint16_t kZip64ExtraId = 0x0001;

struct ZipEntry {
  std::string_view name;      // points into the file's bytes
  uint64_t local_offset = 0;  // of the local header
  uint64_t data_offset = 0;   // of the entry's bytes
  uint64_t size = 0;
};

const char* CompressionName(uint16_t method) {
  switch (method) {
    case 8: return "deflate";
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "lzma";
    case 93: return "zstd";
    case 95: return "xz";
    case 99: return "AES encryption";
    default: return "unknown";
  }
}

// Reads the zip64 extended information extra field: the 64-bit values of exactly those fields
// whose 32-bit (or 16-bit) central directory value is saturated, in the order the spec fixes.
void ReadZip64Extra(std::string_view extra, const std::string& where, uint64_t* uncompressed,
                    uint64_t* compressed, uint64_t* local_offset, uint32_t* disk) {
  size_t q = 0;
  while (extra.size() - q >= 4) {
    const uint16_t id = Le16(extra.data() + q);
    const uint16_t len = Le16(extra.data() + q + 2);
    if (len > extra.size() - q - 4) {
      Fail(where, ": extra field ", Hex(id), " of ", len, " bytes runs past the ", extra.size(),
           "-byte extra data");
    }
    if (id == kZip64ExtraId) {
      const std::string_view z = extra.substr(q + 4, len);
      size_t r = 0;
      auto take = [&](uint64_t* value, size_t bytes, const char* what) {
        if (z.size() - r < bytes) {
          Fail(where, ": the zip64 extra field (", z.size(), " bytes) lacks the ", what);
        }
        uint64_t v = 0;
        std::memcpy(&v, z.data() + r, bytes);
        *value = v;
        r += bytes;
      };
      if (*uncompressed == kSaturated32) take(uncompressed, 8, "uncompressed size");
      if (*compressed == kSaturated32) take(compressed, 8, "compressed size");
      if (*local_offset == kSaturated32) take(local_offset, 8, "local header offset");
      if (*disk == kSaturated16) {
        uint64_t d = 0;
        take(&d, 4, "disk number");
        *disk = static_cast<uint32_t>(d);
      }
      return;
    }
    q += 4 + size_t{len};
  }
  Fail(where, ": a size, offset or disk number is saturated (0xFFFFFFFF) but there is no zip64 ",
       "extra field");
}

std::vector<ZipEntry> ReadZip(std::string_view bytes, const std::string& src) {
  const char* base = bytes.data();
  const uint64_t file_size = bytes.size();
  if (file_size > 0 && static_cast<uint8_t>(base[0]) == 0x80) {
    Fail(src, ": a bare pickle, not a zip archive: the legacy torch.save format (PyTorch < 1.6) ",
         "is not supported; re-save it with a current PyTorch, or convert it to safetensors");
  }
  if (file_size < kEndSize) {
    Fail(src, ": file is ", file_size, " bytes long, too short for a zip archive (torch.save ",
         "writes one)");
  }

  // The end record sits in the last 22 bytes + a comment of up to 64 KiB; its comment length
  // must reach exactly to the end of the file.
  const uint64_t lowest =
      file_size - kEndSize > kMaxCommentSize ? file_size - kEndSize - kMaxCommentSize : 0;
  std::optional<uint64_t> end_offset;
  for (uint64_t pos = file_size - kEndSize;; --pos) {
    if (Le32(base + pos) == kEndSig && pos + kEndSize + Le16(base + pos + 20) == file_size) {
      end_offset = pos;
      break;
    }
    if (pos == lowest) break;
  }
  if (!end_offset) {
    Fail(src, ": no zip end-of-central-directory record in the last ", file_size - lowest,
         " bytes: not a zip archive, or a truncated one");
  }
  const uint64_t eocd = *end_offset;
  const char* e = base + eocd;
  const uint16_t disk = Le16(e + 4);
  const uint16_t cd_disk = Le16(e + 6);
  uint64_t entries_here = Le16(e + 8);
  uint64_t entries = Le16(e + 10);
  uint64_t cd_size = Le32(e + 12);
  uint64_t cd_offset = Le32(e + 16);
  uint64_t cd_limit = eocd;  // the central directory must end by here
  bool zip64 = false;

  if (eocd >= kZip64LocatorSize && Le32(e - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint64_t locator = eocd - kZip64LocatorSize;
    const char* l = base + locator;
    const uint32_t record_disk = Le32(l + 4);
    const uint64_t record = Le64(l + 8);
    const uint32_t disks = Le32(l + 16);
    const std::string where = Concat(src, ": zip64 end record locator at offset ", locator);
    if (record_disk != 0 || disks > 1) {
      Fail(where, ": multi-disk archives are not supported (", disks, " disks)");
    }
    if (record > locator || locator - record < kZip64EndSize) {
      Fail(where, ": it points to offset ", record, ", which leaves no room for the ",
           kZip64EndSize, "-byte zip64 end record before the locator");
    }
    const char* z = base + record;
    const std::string rwhere = Concat(src, ": zip64 end record at offset ", record);
    if (Le32(z) != kZip64EndSig) Fail(rwhere, ": bad signature ", Hex(Le32(z)));
    const uint64_t record_size = Le64(z + 4);  // what follows this field
    if (record_size < kZip64EndSize - 12 || record_size > locator - record - 12) {
      Fail(rwhere, ": its size ", record_size, " does not fit between ", kZip64EndSize - 12,
           " and the locator at offset ", locator);
    }
    if (Le32(z + 16) != 0 || Le32(z + 20) != 0) {
      Fail(rwhere, ": multi-disk archives are not supported");
    }
    const uint64_t z_here = Le64(z + 24), z_entries = Le64(z + 32);
    const uint64_t z_cd_size = Le64(z + 40), z_cd_offset = Le64(z + 48);
    // The short fields must agree with the zip64 ones unless saturated: two readers must not
    // see two different archives.
    auto agree = [&](uint64_t narrow, uint64_t saturated, uint64_t wide, const char* what) {
      if (narrow != saturated && narrow != wide) {
        Fail(src, ": the zip end record says ", what, " = ", narrow, ", the zip64 end record says ",
             wide);
      }
    };
    agree(entries_here, kSaturated16, z_here, "entries on this disk");
    agree(entries, kSaturated16, z_entries, "entry count");
    agree(cd_size, kSaturated32, z_cd_size, "central directory size");
    agree(cd_offset, kSaturated32, z_cd_offset, "central directory offset");
    entries_here = z_here;
    entries = z_entries;
    cd_size = z_cd_size;
    cd_offset = z_cd_offset;
    cd_limit = record;
    zip64 = true;
  }
  const bool disk_ok = disk == 0 || (zip64 && disk == kSaturated16);
  const bool cd_disk_ok = cd_disk == 0 || (zip64 && cd_disk == kSaturated16);
  if (!disk_ok || !cd_disk_ok || entries_here != entries) {
    Fail(src, ": zip end record at offset ", eocd, ": multi-disk archives are not supported (disk ",
         disk, ", central directory on disk ", cd_disk, ", ", entries_here, " of ", entries,
         " entries here)");
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
    Fail(src, ": the zip central directory (", cd_size, " bytes at offset ", cd_offset,
         ") does not end before the end record at offset ", cd_limit);
  }
  if (entries > cd_size / kCentralHeaderSize) {
    Fail(src, ": ", entries, " zip entries cannot fit in a central directory of ", cd_size,
         " bytes");
  }

  std::vector<ZipEntry> out;
  out.reserve(entries);
  std::map<std::string_view, size_t> names;
  const uint64_t cd_end = cd_offset + cd_size;
  uint64_t p = cd_offset;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::string where = Concat(src, ": zip central directory entry ", i, " (offset ", p, ")");
    if (cd_end - p < kCentralHeaderSize)
      Fail(where, ": runs past the end of the central directory");
    const char* c = base + p;
    if (Le32(c) != kCentralHeaderSig) Fail(where, ": bad signature ", Hex(Le32(c)));
    const uint16_t flags = Le16(c + 8);
    const uint16_t method = Le16(c + 10);
    uint64_t compressed = Le32(c + 20);
    uint64_t uncompressed = Le32(c + 24);
    const uint64_t name_len = Le16(c + 28), extra_len = Le16(c + 30), comment_len = Le16(c + 32);
    uint32_t disk_start = Le16(c + 34);
    uint64_t local_offset = Le32(c + 42);
    if (cd_end - p - kCentralHeaderSize < name_len + extra_len + comment_len) {
      Fail(where, ": its name, extra field and comment (", name_len + extra_len + comment_len,
           " bytes) run past the end of the central directory");
    }
    const std::string_view name(c + kCentralHeaderSize, name_len);
    const std::string_view extra(c + kCentralHeaderSize + name_len, extra_len);
    const std::string named = Concat(where, " ", Quoted(name));
    if (compressed == kSaturated32 || uncompressed == kSaturated32 ||
        local_offset == kSaturated32 || disk_start == kSaturated16) {
      ReadZip64Extra(extra, named, &uncompressed, &compressed, &local_offset, &disk_start);
    }
    if (name.empty()) Fail(where, ": empty name");
    if (name.find('\0') != std::string_view::npos) Fail(named, ": the name holds a NUL byte");
    if ((flags & (kFlagEncrypted | kFlagStrongEncryption)) != 0) {
      Fail(named, ": encrypted entries are not supported");
    }
    if (method != 0) {
      Fail(named, ": compression method ", method, " (", CompressionName(method),
           ") is not supported: torch.save stores entries uncompressed (method 0)");
    }
    if (compressed != uncompressed) {
      Fail(named, ": a stored entry, but its compressed size ", compressed,
           " differs from its size ", uncompressed);
    }
    if (disk_start != 0) Fail(named, ": starts on disk ", disk_start, " (multi-disk archive)");
    const auto [it, inserted] = names.emplace(name, out.size());
    if (!inserted) Fail(named, ": duplicate name (also entry ", it->second, ")");
    out.push_back(ZipEntry{name, local_offset, 0, uncompressed});
    p += kCentralHeaderSize + name_len + extra_len + comment_len;
  }
  if (p != cd_end) {
    Fail(src, ": the zip central directory is ", cd_size, " bytes, but its ", entries,
         " entries take ", p - cd_offset);
  }

  // Local headers: their own name and extra lengths place the data (torch pads the extra field
  // so that data starts 64-byte aligned). With flag bit 3 the local sizes are zero and the
  // central directory's are the real ones.
  for (ZipEntry& entry : out) {
    const std::string where = Concat(src, ": zip entry ", Quoted(entry.name),
                                     " (local header at offset ", entry.local_offset, ")");
    if (entry.local_offset > cd_offset || cd_offset - entry.local_offset < kLocalHeaderSize) {
      Fail(where, ": the local header does not lie before the central directory (offset ",
           cd_offset, ")");
    }
    const char* l = base + entry.local_offset;
    if (Le32(l) != kLocalHeaderSig) Fail(where, ": bad local header signature ", Hex(Le32(l)));
    const uint16_t flags = Le16(l + 6);
    const uint16_t method = Le16(l + 8);
    const uint32_t compressed = Le32(l + 18), uncompressed = Le32(l + 22);
    const uint64_t name_len = Le16(l + 26), extra_len = Le16(l + 28);
    if (method != 0) {
      Fail(where, ": the local header says compression method ", method, " (",
           CompressionName(method), "); torch.save stores entries uncompressed (method 0)");
    }
    if ((flags & (kFlagEncrypted | kFlagStrongEncryption)) != 0) {
      Fail(where, ": encrypted entries are not supported");
    }
    if (cd_offset - entry.local_offset - kLocalHeaderSize < name_len + extra_len) {
      Fail(where, ": the local header's name and extra field run into the central directory");
    }
    const std::string_view local_name(l + kLocalHeaderSize, name_len);
    if (local_name != entry.name) {
      Fail(where, ": the local header names it ", Quoted(local_name));
    }
    if ((flags & kFlagDataDescriptor) == 0) {
      for (const uint32_t local_size : {compressed, uncompressed}) {
        if (local_size != kSaturated32 && local_size != entry.size) {
          Fail(where, ": the local header says ", local_size, " bytes, the central directory says ",
               entry.size);
        }
      }
    }
    entry.data_offset = entry.local_offset + kLocalHeaderSize + name_len + extra_len;
    if (entry.size > cd_offset - entry.data_offset) {
      Fail(where, ": its ", entry.size, " bytes at offset ", entry.data_offset,
           " run into the central directory at offset ", cd_offset);
    }
  }

  // No two entries may share bytes: each entry's header and data end before the next header.
  std::vector<const ZipEntry*> order;
  order.reserve(out.size());
  for (const ZipEntry& entry : out) order.push_back(&entry);
  std::sort(order.begin(), order.end(),
            [](const ZipEntry* a, const ZipEntry* b) { return a->local_offset < b->local_offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const ZipEntry& prev = *order[k - 1];
    const ZipEntry& next = *order[k];
    if (next.local_offset < prev.data_offset + prev.size) {
      Fail(src, ": zip entries ", Quoted(prev.name), " (bytes ", prev.local_offset, "..",
           prev.data_offset + prev.size, ") and ", Quoted(next.name), " (local header at offset ",
           next.local_offset, ") overlap");
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pickle: a stack machine for the opcodes a state dict needs, building only inert values.

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

enum class GlobalId : uint8_t {
  kOrderedDict,
  kRebuildTensorV2,
  kFloatStorage,
  kHalfStorage,
  kBFloat16Storage
};

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

using StorageMap = std::map<std::string_view, const ZipEntry*, std::less<>>;

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

// ---------------------------------------------------------------------------------------------
// TorchCheckpoint

TorchCheckpoint TorchCheckpoint::Open(const std::string& path) {
  MappedFile mapping(path);
  TorchCheckpoint checkpoint = Parse(mapping.bytes(), path);
  // Moving a MappedFile keeps its address, so the data pointers parsed above stay valid.
  checkpoint.mapping_ = std::move(mapping);
  return checkpoint;
}

TorchCheckpoint TorchCheckpoint::Parse(std::string_view bytes, std::string source) {
  TorchCheckpoint checkpoint;
  checkpoint.source_ = std::move(source);
  checkpoint.bytes_ = bytes;
  checkpoint.ParseArchive();
  return checkpoint;
}

void TorchCheckpoint::ParseArchive() {
  const std::string& src = source_;
  const std::vector<ZipEntry> entries = ReadZip(bytes_, src);

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
  const ValuePtr top = Unpickler(src, pkl, storage_dir, storages).Run();
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
