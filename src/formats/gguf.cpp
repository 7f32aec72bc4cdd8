#include "formats/gguf.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <utility>

#include "core/error.h"

namespace starling {

// Values are copied out of the file with memcpy, which is only right on a little-endian host.
static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace {

constexpr uint32_t kMaxDims = 4;
// Nested arrays are legal but never used by real models. The depth bound keeps recursion shallow;
// the count bound keeps memory in check, since each nested element costs 12 bytes in the file but
// a whole GgufValue in memory.
constexpr int kMaxArrayDepth = 4;
constexpr uint64_t kMaxNestedArrays = uint64_t{1} << 16;
constexpr uint64_t kDefaultAlignment = 32;
// The spec allows any power of two; real files use 32 or 64. The bound keeps the padding a writer
// emits (and the data offset a reader computes) sane for forged values such as 2^31.
constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;
constexpr uint32_t kLastValueType = static_cast<uint32_t>(GgufType::kFloat64);
constexpr uint64_t kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
constexpr std::string_view kAlignmentKey = "general.alignment";

// Smallest encodings, used to bound counts by the bytes that remain before allocating.
constexpr uint64_t kMinKeyValueBytes = 8 + 4 + 1;            // key length, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name, n_dims, 1 dim, type, offset
constexpr uint64_t kMinStringBytes = 8;
constexpr uint64_t kMinArrayBytes = 4 + 8;

// Size in bytes of a fixed-size value type; 0 for string, array and unknown types.
uint64_t FixedSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool: return 1;
    case GgufType::kUint16:
    case GgufType::kInt16: return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32: return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64: return 8;
    case GgufType::kString:
    case GgufType::kArray: return 0;
  }
  return 0;
}

bool IsUnsigned(GgufType t) {
  return t == GgufType::kUint8 || t == GgufType::kUint16 || t == GgufType::kUint32 ||
         t == GgufType::kUint64;
}
bool IsSigned(GgufType t) {
  return t == GgufType::kInt8 || t == GgufType::kInt16 || t == GgufType::kInt32 ||
         t == GgufType::kInt64;
}
bool IsFloat(GgufType t) {
  return t == GgufType::kFloat32 || t == GgufType::kFloat64;
}

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Decodes one fixed-size scalar of `type` at `p` into the widened fields of `out`.
void DecodeScalar(GgufType type, const char* p, GgufValue& out) {
  switch (type) {
    case GgufType::kUint8: out.u = Load<uint8_t>(p); break;
    case GgufType::kUint16: out.u = Load<uint16_t>(p); break;
    case GgufType::kUint32: out.u = Load<uint32_t>(p); break;
    case GgufType::kUint64: out.u = Load<uint64_t>(p); break;
    case GgufType::kInt8: out.i = Load<int8_t>(p); break;
    case GgufType::kInt16: out.i = Load<int16_t>(p); break;
    case GgufType::kInt32: out.i = Load<int32_t>(p); break;
    case GgufType::kInt64: out.i = Load<int64_t>(p); break;
    case GgufType::kFloat32: out.f = Load<float>(p); break;
    case GgufType::kFloat64: out.f = Load<double>(p); break;
    case GgufType::kBool: out.b = Load<uint8_t>(p) != 0; break;
    case GgufType::kString:
    case GgufType::kArray: break;
  }
}

std::string FormatDims(std::span<const uint64_t> dims) {
  std::string out = "[";
  for (size_t k = 0; k < dims.size(); ++k) out += Concat(k ? ", " : "", dims[k]);
  return out + "]";
}

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Sizes a tensor; returns an error description (without context), or "" on success.
std::string SizeTensor(uint32_t ggml_type, std::span<const uint64_t> dims, uint64_t& n_elements,
                       uint64_t& size_bytes) {
  const GgmlTypeTraits* traits = FindGgmlType(ggml_type);
  if (traits == nullptr) return Concat("unknown ggml type ", ggml_type);
  // ggml stores shapes as int64_t, so both every dimension and the product must fit.
  n_elements = 1;
  for (size_t k = 0; k < dims.size(); ++k) {
    if (dims[k] > kInt64Max) return Concat("dimension ", k, " (", dims[k], ") is too large");
    if (dims[k] != 0 && n_elements > kInt64Max / dims[k]) {
      return Concat("element count of shape ", FormatDims(dims), " overflows");
    }
    n_elements *= dims[k];
  }
  const uint64_t row = dims.empty() ? 1 : dims[0];
  if (row % traits->block_size != 0) {
    return Concat("row length ", row, " is not a multiple of the ", traits->name, " block size ",
                  traits->block_size);
  }
  const uint64_t blocks = n_elements / traits->block_size;
  if (blocks > kInt64Max / traits->type_size) {
    return Concat("byte size of shape ", FormatDims(dims), " overflows");
  }
  size_bytes = blocks * traits->type_size;
  return "";
}

// A cursor over untrusted bytes. Every read is bounds-checked; failures name the source, the item
// being read (the context) and the offset.
class Reader {
 public:
  Reader(std::string_view bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  void set_context(std::string context) { context_ = std::move(context); }

  template <typename... Parts>
  [[noreturn]] void FailAt(size_t offset, Parts&&... parts) const {
    Fail(source_, ": ", context_, context_.empty() ? "" : ": ", std::forward<Parts>(parts)...,
         " at offset ", offset);
  }

  template <typename T>
  T Read(const char* what) {
    if (remaining() < sizeof(T)) {
      FailAt(pos_, "unexpected end of file reading ", what, " (", sizeof(T), " bytes needed, ",
             remaining(), " left)");
    }
    const T v = Load<T>(bytes_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }

  // Reads `n` bytes; `what` describes them for the error.
  std::string_view ReadBytes(uint64_t n, const char* what) {
    if (n > remaining()) {
      FailAt(pos_, what, " (", n, " bytes) runs past end of file (", remaining(), " bytes left)");
    }
    const std::string_view out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }

  // A GGUF string: uint64 length, then the bytes. `index` >= 0 names an array element.
  std::string_view ReadString(const char* what, int64_t index = -1) {
    const size_t at = pos_;
    if (remaining() < 8) {
      FailAt(at, "unexpected end of file reading ", what, " length (8 bytes needed, ", remaining(),
             " left)");
    }
    const auto length = Read<uint64_t>(what);
    if (length > remaining()) {
      if (index >= 0) {
        FailAt(at, "array element ", index, ": ", what, " length ", length,
               " runs past end of file (", remaining(), " bytes left)");
      }
      FailAt(at, what, " length ", length, " runs past end of file (", remaining(), " bytes left)");
    }
    const std::string_view out = bytes_.substr(pos_, length);
    pos_ += length;
    return out;
  }

 private:
  std::string_view bytes_;
  const std::string& source_;
  std::string context_;
  size_t pos_ = 0;
};

GgufType ReadValueType(Reader& r, const char* what) {
  const size_t at = r.pos();
  const auto raw = r.Read<uint32_t>(what);
  if (raw > kLastValueType) r.FailAt(at, "unknown ", what, " ", raw);
  return static_cast<GgufType>(raw);
}

// `nested_left` counts down the nested arrays the whole file may still hold.
void ReadArray(Reader& r, GgufValue& out, int depth, uint64_t& nested_left) {
  const size_t at = r.pos();
  out.array_type = ReadValueType(r, "array element type");
  out.array_size = r.Read<uint64_t>("array length");
  const GgufType elem = out.array_type;
  if (elem == GgufType::kArray && depth + 1 >= kMaxArrayDepth) {
    r.FailAt(at, "arrays nested more than ", kMaxArrayDepth, " deep");
  }
  const uint64_t elem_size = FixedSize(elem);
  const uint64_t min_size = elem == GgufType::kString  ? kMinStringBytes
                            : elem == GgufType::kArray ? kMinArrayBytes
                                                       : elem_size;
  // Checked before anything is reserved, so a forged count cannot trigger a huge allocation.
  if (out.array_size > r.remaining() / min_size) {
    r.FailAt(at, "array length ", out.array_size, " of ", GgufValueTypeName(elem),
             " runs past end of file (at least ", min_size, " bytes per element, ", r.remaining(),
             " bytes left)");
  }
  if (elem_size != 0) {
    const size_t data_at = r.pos();
    const std::string_view raw = r.ReadBytes(out.array_size * elem_size, "array data");
    if (elem == GgufType::kBool) {
      for (size_t k = 0; k < raw.size(); ++k) {
        if (static_cast<unsigned char>(raw[k]) > 1) {
          r.FailAt(data_at + k, "array element ", k, ": bool value ",
                   static_cast<int>(static_cast<unsigned char>(raw[k])), " is neither 0 nor 1");
        }
      }
    }
    out.raw.assign(raw);
  } else if (elem == GgufType::kString) {
    // Bounded so that a forged length in a large file cannot reserve far more than it holds.
    out.strings.reserve(std::min<uint64_t>(out.array_size, uint64_t{1} << 20));
    for (uint64_t k = 0; k < out.array_size; ++k) {
      out.strings.emplace_back(r.ReadString("string", static_cast<int64_t>(k)));
    }
  } else {
    if (out.array_size > nested_left) {
      r.FailAt(at, "more than ", kMaxNestedArrays, " nested arrays in the file");
    }
    nested_left -= out.array_size;
    for (uint64_t k = 0; k < out.array_size; ++k) {
      GgufValue& child = out.arrays.emplace_back();
      child.type = GgufType::kArray;
      ReadArray(r, child, depth + 1, nested_left);
    }
  }
}

void ReadValue(Reader& r, GgufType type, GgufValue& out, uint64_t& nested_left) {
  out.type = type;
  if (type == GgufType::kString) {
    out.s = r.ReadString("string");
  } else if (type == GgufType::kArray) {
    ReadArray(r, out, 0, nested_left);
  } else {
    const size_t at = r.pos();
    const std::string_view bytes = r.ReadBytes(FixedSize(type), GgufValueTypeName(type));
    if (type == GgufType::kBool && static_cast<unsigned char>(bytes[0]) > 1) {
      r.FailAt(at, "bool value ", static_cast<int>(static_cast<unsigned char>(bytes[0])),
               " is neither 0 nor 1");
    }
    DecodeScalar(type, bytes.data(), out);
  }
}

// Shortest text that reads back as the same number.
template <typename F>
std::string FormatFloat(F value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, result.ptr);
}

std::string QuoteString(std::string_view s) {
  std::string out = "\"";
  for (const char c : PrintableForError(s, 80))
    out += c == '"' ? std::string("\\\"") : std::string(1, c);
  return out + "\"";
}

std::string ScalarToString(const GgufValue& v) {
  if (IsUnsigned(v.type)) return Concat(v.u);
  if (IsSigned(v.type)) return Concat(v.i);
  if (v.type == GgufType::kFloat32) return FormatFloat(static_cast<float>(v.f));
  if (v.type == GgufType::kFloat64) return FormatFloat(v.f);
  if (v.type == GgufType::kBool) return v.b ? "true" : "false";
  if (v.type == GgufType::kString) return QuoteString(v.s);
  return "?";
}

void AppendBytes(std::string& out, const void* p, size_t n) {
  out.append(static_cast<const char*>(p), n);
}
template <typename T>
void Append(std::string& out, T v) {
  AppendBytes(out, &v, sizeof v);
}
void AppendString(std::string& out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out.append(s);
}

// Encodes an array value (without key or type tag), checking that its contents agree with
// array_size so that a hand-built value cannot produce a corrupt file.
void EncodeArray(const GgufValue& value, std::string& out, int depth) {
  const GgufType elem = value.array_type;
  if (static_cast<uint32_t>(elem) > kLastValueType) {
    Fail("GgufWriter: unknown array element type ", static_cast<uint32_t>(elem));
  }
  if (elem == GgufType::kArray && depth + 1 >= kMaxArrayDepth) {
    Fail("GgufWriter: arrays nested more than ", kMaxArrayDepth, " deep");
  }
  Append<uint32_t>(out, static_cast<uint32_t>(elem));
  Append<uint64_t>(out, value.array_size);
  if (elem == GgufType::kString) {
    if (value.strings.size() != value.array_size) Fail("GgufWriter: string array size mismatch");
    for (const std::string& s : value.strings) AppendString(out, s);
  } else if (elem == GgufType::kArray) {
    if (value.arrays.size() != value.array_size) Fail("GgufWriter: nested array size mismatch");
    for (const GgufValue& child : value.arrays) {
      if (child.type != GgufType::kArray) Fail("GgufWriter: nested array element is not an array");
      EncodeArray(child, out, depth + 1);
    }
  } else {
    if (value.raw.size() / FixedSize(elem) != value.array_size ||
        value.raw.size() % FixedSize(elem) != 0) {
      Fail("GgufWriter: array of ", value.array_size, " ", GgufValueTypeName(elem), " has ",
           value.raw.size(), " raw bytes");
    }
    out += value.raw;
  }
}

void EncodeValue(const GgufValue& value, std::string& out) {
  switch (value.type) {
    case GgufType::kUint8: Append<uint8_t>(out, static_cast<uint8_t>(value.u)); break;
    case GgufType::kUint16: Append<uint16_t>(out, static_cast<uint16_t>(value.u)); break;
    case GgufType::kUint32: Append<uint32_t>(out, static_cast<uint32_t>(value.u)); break;
    case GgufType::kUint64: Append<uint64_t>(out, value.u); break;
    case GgufType::kInt8: Append<int8_t>(out, static_cast<int8_t>(value.i)); break;
    case GgufType::kInt16: Append<int16_t>(out, static_cast<int16_t>(value.i)); break;
    case GgufType::kInt32: Append<int32_t>(out, static_cast<int32_t>(value.i)); break;
    case GgufType::kInt64: Append<int64_t>(out, value.i); break;
    case GgufType::kFloat32: Append<float>(out, static_cast<float>(value.f)); break;
    case GgufType::kFloat64: Append<double>(out, value.f); break;
    case GgufType::kBool: Append<uint8_t>(out, value.b ? 1 : 0); break;
    case GgufType::kString: AppendString(out, value.s); break;
    case GgufType::kArray: EncodeArray(value, out, 0); break;
    default: Fail("GgufWriter: unknown value type ", static_cast<uint32_t>(value.type));
  }
}

// Decodes raw array element `k` of an integer type; false if it does not fit in int64_t.
bool RawIntAt(const GgufValue& v, size_t k, int64_t& out) {
  const char* p = v.raw.data() + k * FixedSize(v.array_type);
  switch (v.array_type) {
    case GgufType::kUint8: out = Load<uint8_t>(p); return true;
    case GgufType::kUint16: out = Load<uint16_t>(p); return true;
    case GgufType::kUint32: out = Load<uint32_t>(p); return true;
    case GgufType::kInt8: out = Load<int8_t>(p); return true;
    case GgufType::kInt16: out = Load<int16_t>(p); return true;
    case GgufType::kInt32: out = Load<int32_t>(p); return true;
    case GgufType::kInt64: out = Load<int64_t>(p); return true;
    case GgufType::kUint64: {
      const auto u = Load<uint64_t>(p);
      out = static_cast<int64_t>(u);
      return u <= kInt64Max;
    }
    default: return false;
  }
}

void CheckRawArray(const GgufValue& value, std::string_view what) {
  const uint64_t size = FixedSize(value.array_type);
  if (size == 0 || value.raw.size() % size != 0 || value.raw.size() / size != value.array_size) {
    Fail(what, ": array data does not match its length ", value.array_size);
  }
}

}  // namespace

const char* GgufValueTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8: return "uint8";
    case GgufType::kInt8: return "int8";
    case GgufType::kUint16: return "uint16";
    case GgufType::kInt16: return "int16";
    case GgufType::kUint32: return "uint32";
    case GgufType::kInt32: return "int32";
    case GgufType::kFloat32: return "float32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kUint64: return "uint64";
    case GgufType::kInt64: return "int64";
    case GgufType::kFloat64: return "float64";
  }
  return "unknown";
}

const GgmlTypeTraits* FindGgmlType(uint32_t ggml_type) {
  // Every type of ggml.h (ggml commit d99724f, 2026-08) with its block geometry from the
  // block_* structs of ggml-common.h, so that any GGUF file parses and `info` can list it, runnable
  // or not; ids 4, 5 and 31-33, 36-38 were removed from ggml and stay unknown.
  static constexpr GgmlTypeTraits kTypes[] = {
      {"F32", 1, 4},        {"F16", 1, 2},       {"Q4_0", 32, 18},     {"Q4_1", 32, 20},
      {nullptr, 0, 0},      {nullptr, 0, 0},     {"Q5_0", 32, 22},     {"Q5_1", 32, 24},
      {"Q8_0", 32, 34},     {"Q8_1", 32, 36},    {"Q2_K", 256, 84},    {"Q3_K", 256, 110},
      {"Q4_K", 256, 144},   {"Q5_K", 256, 176},  {"Q6_K", 256, 210},   {"Q8_K", 256, 292},
      {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
      {"IQ4_NL", 32, 18},   {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82},   {"IQ4_XS", 256, 136},
      {"I8", 1, 1},         {"I16", 1, 2},       {"I32", 1, 4},        {"I64", 1, 8},
      {"F64", 1, 8},        {"IQ1_M", 256, 56},  {"BF16", 1, 2},       {nullptr, 0, 0},
      {nullptr, 0, 0},      {nullptr, 0, 0},     {"TQ1_0", 256, 54},   {"TQ2_0", 256, 66},
      {nullptr, 0, 0},      {nullptr, 0, 0},     {nullptr, 0, 0},      {"MXFP4", 32, 17},
      {"NVFP4", 64, 36},    {"Q1_0", 128, 18},   {"Q2_0", 64, 18},
  };
  if (ggml_type >= std::size(kTypes) || kTypes[ggml_type].name == nullptr) return nullptr;
  return &kTypes[ggml_type];
}

std::string GgufTypeName(uint32_t ggml_type) {
  const GgmlTypeTraits* traits = FindGgmlType(ggml_type);
  return traits != nullptr ? std::string(traits->name) : Concat("unknown(", ggml_type, ")");
}

uint64_t GgmlTensorBytes(uint32_t ggml_type, std::span<const uint64_t> dims) {
  uint64_t n_elements = 0;
  uint64_t size_bytes = 0;
  const std::string error = SizeTensor(ggml_type, dims, n_elements, size_bytes);
  if (!error.empty()) Fail(error);
  return size_bytes;
}

std::vector<float> GgufArrayAsFloats(const GgufValue& value, std::string_view what) {
  if (!value.is_array() || !IsFloat(value.array_type)) {
    Fail(what, " has type ", GgufDescribeType(value), ", expected an array of float32");
  }
  CheckRawArray(value, what);
  std::vector<float> out(value.array_size);
  if (value.array_type == GgufType::kFloat32) {
    std::memcpy(out.data(), value.raw.data(), value.raw.size());
  } else {
    for (size_t k = 0; k < out.size(); ++k) {
      out[k] = static_cast<float>(Load<double>(value.raw.data() + k * 8));
    }
  }
  return out;
}

std::vector<int64_t> GgufArrayAsInts(const GgufValue& value, std::string_view what) {
  if (!value.is_array() || !(IsSigned(value.array_type) || IsUnsigned(value.array_type))) {
    Fail(what, " has type ", GgufDescribeType(value), ", expected an array of integers");
  }
  CheckRawArray(value, what);
  std::vector<int64_t> out(value.array_size);
  for (size_t k = 0; k < out.size(); ++k) {
    if (!RawIntAt(value, k, out[k])) Fail(what, ": array element ", k, " does not fit in int64");
  }
  return out;
}

std::string GgufDescribeType(const GgufValue& value) {
  if (!value.is_array()) return GgufValueTypeName(value.type);
  return Concat("array[", GgufValueTypeName(value.array_type), ", ", value.array_size, "]");
}

std::string GgufValueToString(const GgufValue& value, size_t max_elements) {
  if (!value.is_array()) return ScalarToString(value);
  std::string out = "[";
  const size_t shown = static_cast<size_t>(std::min<uint64_t>(value.array_size, max_elements));
  for (size_t k = 0; k < shown; ++k) {
    if (k > 0) out += ", ";
    if (value.array_type == GgufType::kString) {
      out += k < value.strings.size() ? QuoteString(value.strings[k]) : "?";
    } else if (value.array_type == GgufType::kArray) {
      out += k < value.arrays.size() ? GgufValueToString(value.arrays[k], max_elements) : "?";
    } else {
      const uint64_t size = FixedSize(value.array_type);
      if (size == 0 || (k + 1) * size > value.raw.size()) {
        out += "?";
        continue;
      }
      GgufValue scalar;
      scalar.type = value.array_type;
      DecodeScalar(value.array_type, value.raw.data() + k * size, scalar);
      out += ScalarToString(scalar);
    }
  }
  if (shown < value.array_size)
    out += Concat(shown > 0 ? ", " : "", "... (", value.array_size, " total)");
  return out + "]";
}

GgufFile GgufFile::Open(const std::string& path) {
  MappedFile mapping(path);
  GgufFile file = Parse(mapping.bytes(), path);
  // Moving the mapping does not move the mapped pages, so the views taken by Parse stay valid.
  file.mapping_ = std::move(mapping);
  return file;
}

GgufFile GgufFile::Parse(std::string_view bytes, std::string source_name) {
  GgufFile file;
  file.source_ = std::move(source_name);
  file.bytes_ = bytes;
  const std::string& source = file.source_;
  Reader r(bytes, source);

  r.set_context("header");
  const std::string_view magic = r.ReadBytes(4, "magic");
  if (magic != "GGUF") {
    r.FailAt(0, "not a GGUF file: bad magic '", PrintableForError(magic), "' (expected 'GGUF')");
  }
  const auto version = r.Read<uint32_t>("version");
  if (version == 1) {
    r.FailAt(4,
             "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model "
             "with a current llama.cpp");
  }
  if (version != 2 && version != 3) {
    const uint32_t swapped = (version >> 24) | ((version >> 8) & 0xFF00u) |
                             ((version << 8) & 0xFF0000u) | (version << 24);
    if (swapped == 2 || swapped == 3) {
      r.FailAt(4, "big-endian GGUF files are not supported");
    }
    r.FailAt(4, "unsupported GGUF version ", version, " (only versions 2 and 3 are supported)");
  }
  file.version_ = version;
  const size_t tensor_count_at = r.pos();
  const auto tensor_count = r.Read<uint64_t>("tensor count");
  const size_t kv_count_at = r.pos();
  const auto kv_count = r.Read<uint64_t>("metadata key count");
  if (kv_count > r.remaining() / kMinKeyValueBytes) {
    r.FailAt(kv_count_at, "metadata key count ", kv_count, " is impossible: only ", r.remaining(),
             " bytes follow");
  }
  if (tensor_count > r.remaining() / kMinTensorInfoBytes) {
    r.FailAt(tensor_count_at, "tensor count ", tensor_count, " is impossible: only ", r.remaining(),
             " bytes follow");
  }

  std::vector<size_t> value_offsets;
  uint64_t nested_left = kMaxNestedArrays;
  for (uint64_t k = 0; k < kv_count; ++k) {
    r.set_context(Concat("metadata key ", k));
    const size_t key_at = r.pos();
    const std::string_view key = r.ReadString("key");
    r.set_context(Concat("metadata key ", k, " ('", PrintableForError(key), "')"));
    if (file.key_index_.find(key) != file.key_index_.end()) r.FailAt(key_at, "duplicate key");
    const GgufType type = ReadValueType(r, "value type");
    value_offsets.push_back(r.pos());
    GgufKeyValue& kv = file.metadata_.emplace_back();
    kv.key = key;
    ReadValue(r, type, kv.value, nested_left);
    file.key_index_.emplace(kv.key, file.metadata_.size() - 1);
  }

  if (const auto it = file.key_index_.find(kAlignmentKey); it != file.key_index_.end()) {
    r.set_context(Concat("metadata key ", it->second, " ('", kAlignmentKey, "')"));
    const GgufValue& value = file.metadata_[it->second].value;
    const size_t at = value_offsets[it->second];
    if (value.type != GgufType::kUint32) {
      r.FailAt(at, "alignment has type ", GgufDescribeType(value), ", expected uint32");
    }
    if (value.u == 0 || !std::has_single_bit(value.u)) {
      r.FailAt(at, "alignment ", value.u, " is not a nonzero power of two");
    }
    if (value.u > kMaxAlignment) {
      r.FailAt(at, "alignment ", value.u, " is larger than the supported maximum ", kMaxAlignment);
    }
    file.alignment_ = static_cast<size_t>(value.u);
  } else {
    file.alignment_ = kDefaultAlignment;
  }

  std::vector<size_t> offset_field_at;
  for (uint64_t t = 0; t < tensor_count; ++t) {
    r.set_context(Concat("tensor info ", t));
    const size_t name_at = r.pos();
    const std::string_view name = r.ReadString("tensor name");
    r.set_context(Concat("tensor ", t, " ('", PrintableForError(name), "')"));
    if (file.tensor_index_.find(name) != file.tensor_index_.end()) {
      r.FailAt(name_at, "duplicate tensor name");
    }
    GgufTensorInfo& info = file.tensors_.emplace_back();
    info.name = name;
    const size_t dims_at = r.pos();
    const auto n_dims = r.Read<uint32_t>("n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      r.FailAt(dims_at, "n_dims ", n_dims, " is out of range (1 to ", kMaxDims, ")");
    }
    info.dims.resize(n_dims);
    for (uint64_t& d : info.dims) d = r.Read<uint64_t>("dimension");
    const size_t type_at = r.pos();
    info.ggml_type = r.Read<uint32_t>("ggml type");
    if (FindGgmlType(info.ggml_type) == nullptr) {
      r.FailAt(type_at, "unknown ggml type ", info.ggml_type);
    }
    const std::string error =
        SizeTensor(info.ggml_type, info.dims, info.n_elements, info.size_bytes);
    if (!error.empty()) r.FailAt(dims_at, error);
    offset_field_at.push_back(r.pos());
    info.offset = r.Read<uint64_t>("data offset");
    if (info.offset % file.alignment_ != 0) {
      r.FailAt(offset_field_at.back(), "data offset ", info.offset,
               " is not a multiple of the alignment ", file.alignment_);
    }
    file.tensor_index_.emplace(info.name, t);
  }

  // The data section starts after the infos, padded; a file without tensors may omit the padding.
  file.data_offset_ = AlignUp(r.pos(), file.alignment_);
  const uint64_t size = bytes.size();
  for (size_t t = 0; t < file.tensors_.size(); ++t) {
    const GgufTensorInfo& info = file.tensors_[t];
    const bool inside = file.data_offset_ <= size && info.offset <= size - file.data_offset_ &&
                        info.size_bytes <= size - file.data_offset_ - info.offset;
    if (!inside) {
      r.set_context(Concat("tensor ", t, " ('", PrintableForError(info.name), "')"));
      r.FailAt(offset_field_at[t], "data (", info.size_bytes, " bytes at data offset ", info.offset,
               ") runs past end of file (data section starts at ", file.data_offset_,
               ", file size ", size, ")");
    }
  }
  // No two tensors may share bytes: two names over one byte range is a corrupt or deliberately
  // confusing file (a write through one would change the other). Padding between tensors is
  // fine; an empty tensor owns no bytes.
  std::vector<size_t> by_offset;
  for (size_t t = 0; t < file.tensors_.size(); ++t) {
    if (file.tensors_[t].size_bytes > 0) by_offset.push_back(t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [&](size_t a, size_t b) {
    return file.tensors_[a].offset != file.tensors_[b].offset
               ? file.tensors_[a].offset < file.tensors_[b].offset
               : a < b;
  });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    // Sorted by start and disjoint so far, so the previous tensor reaches furthest.
    const GgufTensorInfo& prev = file.tensors_[by_offset[k - 1]];
    const GgufTensorInfo& next = file.tensors_[by_offset[k]];
    if (next.offset < prev.offset + prev.size_bytes) {
      r.set_context(Concat("tensor ", by_offset[k], " ('", PrintableForError(next.name), "')"));
      r.FailAt(offset_field_at[by_offset[k]], "data (bytes ", next.offset, "..",
               next.offset + next.size_bytes, " of the data section) overlaps tensor ",
               by_offset[k - 1], " ('", PrintableForError(prev.name), "', bytes ", prev.offset,
               "..", prev.offset + prev.size_bytes, ")");
    }
  }
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  const auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second].value;
}

const GgufValue& GgufFile::Require(std::string_view key) const {
  const GgufValue* value = Find(key);
  if (value == nullptr) Fail(source_, ": missing metadata key '", key, "'");
  return *value;
}

void GgufFile::FailType(std::string_view key, const GgufValue& value,
                        std::string_view expected) const {
  Fail(source_, ": metadata key '", key, "' has type ", GgufDescribeType(value), ", expected ",
       expected);
}

std::string GgufFile::GetString(std::string_view key) const {
  const GgufValue& v = Require(key);
  if (v.type != GgufType::kString) FailType(key, v, "string");
  return v.s;
}

uint64_t GgufFile::GetUint(std::string_view key) const {
  const GgufValue& v = Require(key);
  if (IsUnsigned(v.type)) return v.u;
  if (!IsSigned(v.type)) FailType(key, v, "an unsigned integer");
  if (v.i < 0) Fail(source_, ": metadata key '", key, "' is negative (", v.i, ")");
  return static_cast<uint64_t>(v.i);
}

int64_t GgufFile::GetInt(std::string_view key) const {
  const GgufValue& v = Require(key);
  if (IsSigned(v.type)) return v.i;
  if (!IsUnsigned(v.type)) FailType(key, v, "an integer");
  if (v.u > kInt64Max) Fail(source_, ": metadata key '", key, "' is too large (", v.u, ")");
  return static_cast<int64_t>(v.u);
}

double GgufFile::GetFloat(std::string_view key) const {
  const GgufValue& v = Require(key);
  if (!IsFloat(v.type)) FailType(key, v, "float32 or float64");
  return v.f;
}

bool GgufFile::GetBool(std::string_view key) const {
  const GgufValue& v = Require(key);
  if (v.type != GgufType::kBool) FailType(key, v, "bool");
  return v.b;
}

const std::vector<std::string>& GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue& v = Require(key);
  if (!v.is_array() || v.array_type != GgufType::kString) FailType(key, v, "an array of string");
  return v.strings;
}

std::vector<float> GgufFile::GetFloatArray(std::string_view key) const {
  return GgufArrayAsFloats(Require(key), Concat(source_, ": metadata key '", key, "'"));
}

std::vector<int64_t> GgufFile::GetIntArray(std::string_view key) const {
  return GgufArrayAsInts(Require(key), Concat(source_, ": metadata key '", key, "'"));
}

std::string GgufFile::GetStringOr(std::string_view key, std::string_view fallback) const {
  return Has(key) ? GetString(key) : std::string(fallback);
}
uint64_t GgufFile::GetUintOr(std::string_view key, uint64_t fallback) const {
  return Has(key) ? GetUint(key) : fallback;
}
int64_t GgufFile::GetIntOr(std::string_view key, int64_t fallback) const {
  return Has(key) ? GetInt(key) : fallback;
}
double GgufFile::GetFloatOr(std::string_view key, double fallback) const {
  return Has(key) ? GetFloat(key) : fallback;
}
bool GgufFile::GetBoolOr(std::string_view key, bool fallback) const {
  return Has(key) ? GetBool(key) : fallback;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::string_view GgufFile::TensorData(const GgufTensorInfo& tensor) const {
  const uint64_t size = bytes_.size();
  if (data_offset_ > size || tensor.offset > size - data_offset_ ||
      tensor.size_bytes > size - data_offset_ - tensor.offset) {
    Fail(source_, ": tensor '", PrintableForError(tensor.name), "' (", tensor.size_bytes,
         " bytes at data offset ", tensor.offset, ") lies outside the file");
  }
  return bytes_.substr(data_offset_ + tensor.offset, tensor.size_bytes);
}

void GgufWriter::BeginKey(std::string_view key, GgufType type) {
  if (keys_.find(key) != keys_.end()) Fail("GgufWriter: duplicate metadata key '", key, "'");
  keys_.emplace(key);
  AppendString(kv_bytes_, key);
  Append<uint32_t>(kv_bytes_, static_cast<uint32_t>(type));
  ++kv_count_;
}

void GgufWriter::AddString(std::string_view key, std::string_view value) {
  GgufValue v;
  v.type = GgufType::kString;
  v.s = value;
  AddValue(key, v);
}

void GgufWriter::AddUint32(std::string_view key, uint32_t value) {
  GgufValue v;
  v.type = GgufType::kUint32;
  v.u = value;
  AddValue(key, v);
}

void GgufWriter::AddInt32(std::string_view key, int32_t value) {
  GgufValue v;
  v.type = GgufType::kInt32;
  v.i = value;
  AddValue(key, v);
}

void GgufWriter::AddUint64(std::string_view key, uint64_t value) {
  GgufValue v;
  v.type = GgufType::kUint64;
  v.u = value;
  AddValue(key, v);
}

void GgufWriter::AddFloat32(std::string_view key, float value) {
  GgufValue v;
  v.type = GgufType::kFloat32;
  v.f = value;
  AddValue(key, v);
}

void GgufWriter::AddBool(std::string_view key, bool value) {
  GgufValue v;
  v.type = GgufType::kBool;
  v.b = value;
  AddValue(key, v);
}

void GgufWriter::AddStringArray(std::string_view key, const std::vector<std::string>& values) {
  GgufValue v;
  v.type = GgufType::kArray;
  v.array_type = GgufType::kString;
  v.array_size = values.size();
  v.strings = values;
  AddValue(key, v);
}

void GgufWriter::AddFloat32Array(std::string_view key, std::span<const float> values) {
  GgufValue v;
  v.type = GgufType::kArray;
  v.array_type = GgufType::kFloat32;
  v.array_size = values.size();
  v.raw.assign(reinterpret_cast<const char*>(values.data()), values.size_bytes());
  AddValue(key, v);
}

void GgufWriter::AddInt32Array(std::string_view key, std::span<const int32_t> values) {
  GgufValue v;
  v.type = GgufType::kArray;
  v.array_type = GgufType::kInt32;
  v.array_size = values.size();
  v.raw.assign(reinterpret_cast<const char*>(values.data()), values.size_bytes());
  AddValue(key, v);
}

void GgufWriter::AddValue(std::string_view key, const GgufValue& value) {
  if (key == kAlignmentKey) {
    // Readers (ours and ggml's) only accept a uint32 power of two here.
    if (value.type != GgufType::kUint32 || value.u == 0 || value.u > kMaxAlignment ||
        !std::has_single_bit(value.u)) {
      Fail("GgufWriter: general.alignment must be a uint32 power of two from 1 to ", kMaxAlignment);
    }
  }
  // Encode first so that a rejected value leaves the writer unchanged.
  std::string encoded;
  EncodeValue(value, encoded);
  BeginKey(key, value.type);
  kv_bytes_ += encoded;
  if (key == kAlignmentKey) alignment_ = static_cast<size_t>(value.u);
}

void GgufWriter::AddTensor(std::string_view name, std::vector<uint64_t> dims, uint32_t ggml_type,
                           std::string_view raw_bytes) {
  if (tensor_names_.find(name) != tensor_names_.end()) {
    Fail("GgufWriter: duplicate tensor name '", name, "'");
  }
  if (dims.empty() || dims.size() > kMaxDims) {
    Fail("GgufWriter: tensor '", name, "' has ", dims.size(), " dimensions (1 to ", kMaxDims,
         " allowed)");
  }
  uint64_t n_elements = 0;
  uint64_t expected = 0;
  const std::string error = SizeTensor(ggml_type, dims, n_elements, expected);
  if (!error.empty()) Fail("GgufWriter: tensor '", name, "': ", error);
  if (raw_bytes.size() != expected) {
    Fail("GgufWriter: tensor '", name, "' has ", raw_bytes.size(), " bytes, expected ", expected,
         " for ", GgufTypeName(ggml_type), " ", FormatDims(dims));
  }
  tensor_names_.emplace(name);
  tensors_.push_back(Tensor{std::string(name), std::move(dims), ggml_type, std::string(raw_bytes)});
}

void GgufWriter::Emit(const std::function<void(std::string_view)>& sink) const {
  std::string head;
  head += "GGUF";
  Append<uint32_t>(head, 3);
  Append<uint64_t>(head, tensors_.size());
  Append<uint64_t>(head, kv_count_);
  head += kv_bytes_;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    AppendString(head, t.name);
    Append<uint32_t>(head, static_cast<uint32_t>(t.dims.size()));
    for (const uint64_t d : t.dims) Append<uint64_t>(head, d);
    Append<uint32_t>(head, t.ggml_type);
    Append<uint64_t>(head, offset);
    offset = AlignUp(offset + t.data.size(), alignment_);
  }
  head.resize(AlignUp(head.size(), alignment_), '\0');
  sink(head);
  const std::string padding(alignment_, '\0');
  for (const Tensor& t : tensors_) {
    sink(t.data);
    sink(std::string_view(padding).substr(0, AlignUp(t.data.size(), alignment_) - t.data.size()));
  }
}

std::string GgufWriter::Finish() const {
  std::string out;
  Emit([&out](std::string_view piece) { out += piece; });
  return out;
}

void GgufWriter::WriteTo(const std::string& path) const {
  WriteFileAtomically(path, [&](const ByteSink& sink) { Emit(sink); });
}

}  // namespace starling
