#include "formats/safetensors.h"

#include "formats/json.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "core/error.h"
#include "formats/parse_util.h"

namespace starling {

// The length prefix is read with memcpy and tensor bytes are handed out as stored, which is only
// right on a little-endian host.
static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr uint64_t kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
// Real headers nest three deep (header -> tensor -> shape). The bound keeps a hostile header from
// building a deep tree, whose destruction would recurse.
constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kIndexFile = "model.safetensors.index.json";
constexpr std::string_view kSingleFile = "model.safetensors";

// "number 2.5", "string \"x\"", "array", ...: what a JSON value is, for "found ..." messages.
std::string Describe(const Json& value) {
  switch (value.type()) {
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "number " + value.dump();
    case Json::value_t::string:
      return "string \"" + PrintableForError(value.get_ref<const std::string&>(), 40) + "\"";
    case Json::value_t::boolean: return value.get<bool>() ? "true" : "false";
    default: return value.type_name();
  }
}

std::string JoinPath(const std::string& dir, std::string_view name) {
  if (!dir.empty() && dir.back() == '/') return dir + std::string(name);
  return dir + "/" + std::string(name);
}

// Reads a JSON integer in [0, limit]; `what` names it for the error.
uint64_t NonNegativeInt(const Json& value, uint64_t limit, const std::string& where,
                        const std::string& what) {
  // nlohmann stores "-0" as a signed integer, so the sign has to be checked on the value.
  if (value.is_number_integer() && (value.is_number_unsigned() || value.get<int64_t>() >= 0)) {
    const uint64_t v = value.get<uint64_t>();
    if (v <= limit) return v;
    Fail(where, what, " = ", v, " is too large (at most ", limit, ")");
  }
  if (value.is_number_integer()) Fail(where, what, " = ", value.get<int64_t>(), " is negative");
  Fail(where, what, " must be a non-negative integer, found ", Describe(value));
}

// Element count and byte size of `shape`, or nullopt when either exceeds int64_t.
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t count = 1;
  for (const int64_t d : shape) {
    const auto next = CheckedMul(count, static_cast<uint64_t>(d));
    if (!next || *next > kInt64Max) return std::nullopt;
    count = *next;
  }
  const auto bytes = CheckedMul(count, DTypeSize(dtype));
  if (!bytes || *bytes > kInt64Max) return std::nullopt;
  return bytes;
}

// Parses one tensor entry of the header. `data_size` is the length of the data buffer, which
// starts at `data_offset` in the file.
SafetensorsTensor ParseTensorEntry(const std::string& name, const Json& entry,
                                   const std::string& source, uint64_t data_offset,
                                   uint64_t data_size) {
  const std::string where = Concat(source, ": tensor ", Quoted(name), ": ");
  if (!entry.is_object()) {
    Fail(where, "expected an object with \"dtype\", \"shape\" and \"data_offsets\", found ",
         Describe(entry));
  }
  auto field = [&](const char* key) -> const Json& {
    const auto it = entry.find(key);
    if (it == entry.end()) Fail(where, "missing \"", key, "\"");
    return *it;
  };

  SafetensorsTensor t;
  t.name = name;

  const Json& dtype = field("dtype");
  if (!dtype.is_string()) Fail(where, "\"dtype\" must be a string, found ", Describe(dtype));
  const std::string& dtype_name = dtype.get_ref<const std::string&>();
  const std::optional<DType> parsed_dtype = SafetensorsDTypeFromName(dtype_name);
  if (!parsed_dtype) {
    Fail(where, "unknown dtype \"", PrintableForError(dtype_name, 40),
         "\" (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  }
  t.dtype = *parsed_dtype;

  const Json& shape = field("shape");
  if (!shape.is_array()) Fail(where, "\"shape\" must be an array, found ", Describe(shape));
  t.shape.reserve(shape.size());
  for (size_t k = 0; k < shape.size(); ++k) {
    t.shape.push_back(
        static_cast<int64_t>(NonNegativeInt(shape[k], kInt64Max, where, Concat("shape[", k, "]"))));
  }

  const Json& offsets = field("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2) {
    Fail(where, "\"data_offsets\" must be an array of two integers [begin, end], found ",
         offsets.is_array() ? Concat("an array of ", offsets.size()) : Describe(offsets));
  }
  const uint64_t begin = NonNegativeInt(offsets[0], std::numeric_limits<uint64_t>::max(), where,
                                        "data_offsets[0] (begin)");
  const uint64_t end = NonNegativeInt(offsets[1], std::numeric_limits<uint64_t>::max(), where,
                                      "data_offsets[1] (end)");
  const std::string range = Concat("data_offsets [", begin, ", ", end, "]");
  if (begin > end) Fail(where, range, ": begin is after end");

  const std::optional<uint64_t> expected = ByteSize(t.shape, t.dtype);
  if (!expected) {
    Fail(where, "the size of shape ", FormatShape(t.shape), " of ", DTypeName(t.dtype),
         " overflows");
  }
  if (end - begin != *expected) {
    Fail(where, range, " hold ", end - begin, " bytes, but shape ", FormatShape(t.shape), " of ",
         DTypeName(t.dtype), " needs ", *expected);
  }
  if (end > data_size) {
    Fail(where, range, " run past the end of the data (", data_size, " bytes from offset ",
         data_offset, " to the end of the file)");
  }
  t.offset = data_offset + begin;
  t.size_bytes = end - begin;
  return t;
}

}  // namespace

std::optional<DType> SafetensorsDTypeFromName(std::string_view name) {
  static constexpr DType kAll[] = {DType::kF32,  DType::kF16, DType::kBF16, DType::kI8,
                                   DType::kI16,  DType::kI32, DType::kI64,  DType::kU8,
                                   DType::kBool, DType::kF64};
  for (const DType d : kAll) {
    if (name == DTypeName(d)) return d;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile SafetensorsFile::Open(const std::string& path) {
  MappedFile mapping(path);
  SafetensorsFile file = Parse(mapping.bytes(), path);
  // Moving a MappedFile keeps its address, so the views parsed above stay valid.
  file.mapping_ = std::move(mapping);
  return file;
}

SafetensorsFile SafetensorsFile::Parse(std::string_view bytes, std::string source) {
  SafetensorsFile file;
  file.source_ = std::move(source);
  file.bytes_ = bytes;
  file.ParseHeader();
  return file;
}

void SafetensorsFile::ParseHeader() {
  const std::string& src = source_;
  if (bytes_.size() < 8) {
    Fail(src, ": file is ", bytes_.size(), " bytes long, too short for the 8-byte header length");
  }
  uint64_t n = 0;
  std::memcpy(&n, bytes_.data(), 8);
  if (n > kSafetensorsMaxHeaderBytes) {
    Fail(src, ": header length ", n, " is larger than the ", kSafetensorsMaxHeaderBytes,
         "-byte limit");
  }
  if (n > bytes_.size() - 8) {
    Fail(src, ": header length ", n, " runs past the end of the file (", bytes_.size() - 8,
         " bytes follow the length)");
  }
  header_size_ = n;
  const std::string_view header = bytes_.substr(8, n);
  // The spec requires '{' first; it also rules out leading whitespace and an empty header.
  if (header.empty() || header[0] != '{') {
    Fail(src, ": header must start with '{' at offset 8, found ",
         header.empty() ? std::string("an empty header")
                        : Concat("byte 0x", std::hex,
                                 static_cast<int>(static_cast<unsigned char>(header[0]))));
  }
  const Json json = ParseStrictJson(header, src, "header");
  if (!json.is_object()) Fail(src, ": header must be a JSON object, found ", Describe(json));

  const uint64_t data_offset = 8 + n;
  const uint64_t data_size = bytes_.size() - data_offset;
  tensors_.reserve(json.size());
  for (const auto& [key, value] : json.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) {
        Fail(src, ": \"__metadata__\" must be an object of strings, found ", Describe(value));
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          Fail(src, ": \"__metadata__\" key ", Quoted(mkey), ": expected a string, found ",
               Describe(mvalue));
        }
        metadata_.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    tensors_.push_back(ParseTensorEntry(key, value, src, data_offset, data_size));
  }

  std::sort(tensors_.begin(), tensors_.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return a.offset != b.offset ? a.offset < b.offset : a.name < b.name;
            });
  // The spec asks for the data to be covered exactly, without holes or overlap. Overlap is
  // refused: two names aliasing one byte range is a corrupt or deliberately confusing file.
  // Holes (including bytes after the last tensor) are allowed: they harm no reader of this
  // file, and some writers align tensors. Empty tensors own no bytes and may sit anywhere.
  const SafetensorsTensor* previous = nullptr;  // the non-empty tensor reaching furthest
  for (const SafetensorsTensor& t : tensors_) {
    if (t.size_bytes == 0) continue;
    if (previous != nullptr && t.offset < previous->offset + previous->size_bytes) {
      Fail(src, ": tensor ", Quoted(t.name), " (bytes ", t.offset - data_offset, "..",
           t.offset - data_offset + t.size_bytes, " of the data) overlaps tensor ",
           Quoted(previous->name), " (bytes ", previous->offset - data_offset, "..",
           previous->offset - data_offset + previous->size_bytes, ")");
    }
    // Sorted by start and disjoint so far, so the latest tensor reaches furthest.
    previous = &t;
  }
  for (size_t k = 0; k < tensors_.size(); ++k) index_.emplace(tensors_[k].name, k);
}

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::string_view SafetensorsFile::Data(const SafetensorsTensor& tensor) const {
  if (tensor.offset > bytes_.size() || tensor.size_bytes > bytes_.size() - tensor.offset) {
    Fail(source_, ": tensor ", Quoted(tensor.name), " (", tensor.size_bytes, " bytes at offset ",
         tensor.offset, ") does not lie inside this file (", bytes_.size(), " bytes)");
  }
  return bytes_.substr(tensor.offset, tensor.size_bytes);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsModel

void SafetensorsModel::AddEntry(const SafetensorsTensor* tensor, const SafetensorsFile* file) {
  entry_index_.emplace(tensor->name, entries_.size());
  entries_.push_back(Entry{tensor, file});
}

SafetensorsModel SafetensorsModel::OpenDirectory(const std::string& dir) {
  if (!IsDirectory(dir)) Fail(dir, ": not a directory");
  SafetensorsModel model;
  model.dir_ = dir;
  const std::string index_path = JoinPath(dir, kIndexFile);
  const std::string single_path = JoinPath(dir, kSingleFile);

  if (!FileExists(index_path)) {
    if (!FileExists(single_path)) {
      Fail(dir, ": holds neither ", kSingleFile, " nor ", kIndexFile);
    }
    model.source_ = single_path;
    model.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::Open(single_path)));
    const SafetensorsFile* file = model.files_.back().get();
    for (const SafetensorsTensor& t : file->tensors()) model.AddEntry(&t, file);
  } else {
    model.source_ = index_path;
    model.sharded_ = true;
    const Json index = ParseStrictJson(ReadFile(index_path), index_path, "index");
    if (!index.is_object()) Fail(index_path, ": expected a JSON object, found ", Describe(index));
    if (const auto it = index.find("metadata"); it != index.end() && !it->is_null()) {
      if (!it->is_object()) {
        Fail(index_path, ": \"metadata\" must be an object, found ", Describe(*it));
      }
      for (const auto& [key, value] : it->items()) {
        model.index_metadata_.emplace(key,
                                      value.is_string() ? value.get<std::string>() : value.dump());
      }
    }
    const auto map_it = index.find("weight_map");
    if (map_it == index.end()) Fail(index_path, ": missing \"weight_map\"");
    if (!map_it->is_object()) {
      Fail(index_path, ": \"weight_map\" must be an object, found ", Describe(*map_it));
    }

    // Shard name -> position in files_; files_ ends up in name order.
    std::map<std::string, size_t> shards;
    for (const auto& [tensor, shard] : map_it->items()) {
      if (!shard.is_string()) {
        Fail(index_path, ": weight_map entry for tensor ", Quoted(tensor),
             ": expected a shard file name, found ", Describe(shard));
      }
      const std::string& name = shard.get_ref<const std::string&>();
      // Shards live beside the index; a name that leaves the directory is not a shard.
      const bool escapes = name.empty() || name.front() == '/' || name == ".." ||
                           name.starts_with("../") || name.ends_with("/..") ||
                           name.find("/../") != std::string::npos ||
                           name.find('\0') != std::string::npos;
      if (escapes) {
        Fail(index_path, ": weight_map entry for tensor ", Quoted(tensor), ": shard name ",
             Quoted(name), " is not a file name inside ", dir);
      }
      shards.emplace(name, 0);
    }
    for (auto& [name, position] : shards) {
      const std::string path = JoinPath(dir, name);
      if (!FileExists(path)) {
        Fail(index_path, ": weight_map names shard ", Quoted(name), ", but ", path,
             " does not exist");
      }
      position = model.files_.size();
      model.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::Open(path)));
    }

    for (const auto& [tensor, shard] : map_it->items()) {
      const std::string& name = shard.get_ref<const std::string&>();
      const SafetensorsFile* file = model.files_[shards.at(name)].get();
      const SafetensorsTensor* t = file->Find(tensor);
      if (t == nullptr) {
        Fail(index_path, ": weight_map puts tensor ", Quoted(tensor), " in shard ", Quoted(name),
             ", but ", file->source(), " does not hold it");
      }
      model.AddEntry(t, file);
    }
    // Tensors the index does not list: part of the model unless their name is ambiguous.
    std::map<std::string, const SafetensorsFile*, std::less<>> unlisted;
    for (const auto& file : model.files_) {
      for (const SafetensorsTensor& t : file->tensors()) {
        if (map_it->contains(t.name)) continue;
        const auto [it, inserted] = unlisted.emplace(t.name, file.get());
        if (!inserted) {
          Fail(index_path, ": tensor ", Quoted(t.name), " is in both ", it->second->source(),
               " and ", file->source(), ", and weight_map names neither");
        }
        model.AddEntry(&t, file.get());
      }
    }
  }

  // Sorted by name; rebuild the name index to match.
  std::sort(model.entries_.begin(), model.entries_.end(),
            [](const Entry& a, const Entry& b) { return a.tensor->name < b.tensor->name; });
  model.entry_index_.clear();
  for (size_t k = 0; k < model.entries_.size(); ++k) {
    model.entry_index_.emplace(model.entries_[k].tensor->name, k);
    model.total_bytes_ += model.entries_[k].tensor->size_bytes;
  }
  return model;
}

const SafetensorsTensor* SafetensorsModel::Find(std::string_view name,
                                                const SafetensorsFile** file) const {
  const auto it = entry_index_.find(name);
  if (it == entry_index_.end()) {
    if (file != nullptr) *file = nullptr;
    return nullptr;
  }
  const Entry& entry = entries_[it->second];
  if (file != nullptr) *file = entry.file;
  return entry.tensor;
}

std::string_view SafetensorsModel::Data(std::string_view name) const {
  const SafetensorsFile* file = nullptr;
  const SafetensorsTensor* tensor = Find(name, &file);
  if (tensor == nullptr) Fail(source_, ": no tensor ", Quoted(name));
  return file->Data(*tensor);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

namespace {

// nlohmann refuses to serialize strings that are not UTF-8; fail early, naming the string.
void CheckUtf8(std::string_view s, const char* what) {
  try {
    (void)Json(std::string(s)).dump();
  } catch (const Json::exception&) {
    Fail("SafetensorsWriter: ", what, " ", Quoted(s), " is not valid UTF-8");
  }
}

}  // namespace

void SafetensorsWriter::SetMetadata(std::string_view key, std::string_view value) {
  CheckUtf8(key, "metadata key");
  CheckUtf8(value, "metadata value");
  metadata_[std::string(key)] = std::string(value);
}

void SafetensorsWriter::AddTensor(std::string_view name, DType dtype, std::vector<int64_t> shape,
                                  std::string_view raw_bytes) {
  if (name == kMetadataKey) Fail("SafetensorsWriter: \"__metadata__\" is not a tensor name");
  CheckUtf8(name, "tensor name");
  if (names_.contains(name)) Fail("SafetensorsWriter: duplicate tensor ", Quoted(name));
  for (const int64_t d : shape) {
    if (d < 0) {
      Fail("SafetensorsWriter: tensor ", Quoted(name), ": shape ", FormatShape(shape),
           " has a negative dimension");
    }
  }
  const std::optional<uint64_t> expected = ByteSize(shape, dtype);
  if (!expected || *expected != raw_bytes.size()) {
    Fail("SafetensorsWriter: tensor ", Quoted(name), ": shape ", FormatShape(shape), " of ",
         DTypeName(dtype), " needs ", expected ? Concat(*expected) : std::string("too many"),
         " bytes, got ", raw_bytes.size());
  }
  names_.emplace(std::string(name), tensors_.size());
  tensors_.push_back(Tensor{std::string(name), dtype, std::move(shape), std::string(raw_bytes)});
}

std::string SafetensorsWriter::Finish() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata_) meta[key] = value;
    header[std::string(kMetadataKey)] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = DTypeName(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.data.size()};
    header[t.name] = std::move(entry);
    offset += t.data.size();
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');

  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t n = text.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  out += text;
  for (const Tensor& t : tensors_) out += t.data;
  return out;
}

void SafetensorsWriter::WriteTo(const std::string& path) const {
  WriteFileAtomically(path, [&](const ByteSink& sink) { sink(Finish()); });
}

}  // namespace starling
