#include "formats/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file.h"
#include "error_message.h"
#include "test_dir.h"

namespace starling {
namespace {

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// A file with a hand-written header, for the headers the writer refuses to produce.
std::string RawFile(std::string_view header, std::string_view data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out += header;
  out += data;
  return out;
}

// The message of the Error that parsing `bytes` throws ("" if it parses).
std::string ParseError(const std::string& bytes) {
  return testing::ErrorMessage([&] { SafetensorsFile::Parse(bytes, "test.safetensors"); });
}

// Asserts that parsing `bytes` fails with a message naming the file and containing every part.
void ExpectParseError(const std::string& bytes, std::initializer_list<std::string_view> parts) {
  testing::ExpectErrorNaming(ParseError(bytes), "test.safetensors", parts);
}

// A header holding one tensor entry `entry` called "w", over `data_bytes` zero bytes.
std::string OneTensor(std::string_view entry, size_t data_bytes = 16) {
  return RawFile(std::string("{\"w\": ") + std::string(entry) + "}", std::string(data_bytes, '\0'));
}

// A small file with several dtypes, a scalar, an empty tensor and metadata. The last tensor is
// non-empty, so the file ends exactly where its data ends.
SafetensorsWriter SmallWriter() {
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  w.SetMetadata("note", "caf\xc3\xa9");
  w.AddTensor("model.norm.weight", DType::kF32, {4}, Floats({1, 2, 3, 4}));
  w.AddTensor("bf16", DType::kBF16, {2, 3},
              std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c"));
  w.AddTensor("scalar", DType::kI64, {}, std::string("\x2a\0\0\0\0\0\0\0", 8));
  w.AddTensor("empty", DType::kF16, {0, 3}, "");
  w.AddTensor("flags", DType::kBool, {3}, std::string("\x01\x00\x01", 3));
  w.AddTensor("z.last", DType::kF64, {1}, std::string("\0\0\0\0\0\0\xf0\x3f", 8));
  return w;
}

using testing::TempDir;

TEST(Safetensors, DTypeTable) {
  const std::vector<std::pair<std::string, size_t>> expected = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  for (const auto& [name, size] : expected) {
    const std::optional<DType> dtype = SafetensorsDTypeFromName(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(DTypeName(*dtype), name);
    EXPECT_EQ(DTypeSize(*dtype), size) << name;
  }
  EXPECT_FALSE(SafetensorsDTypeFromName("F8_E4M3").has_value());
  EXPECT_FALSE(SafetensorsDTypeFromName("f32").has_value());
  EXPECT_FALSE(SafetensorsDTypeFromName("").has_value());
}

TEST(Safetensors, WriterRoundTrip) {
  const std::string bytes = SmallWriter().Finish();
  const SafetensorsFile f = SafetensorsFile::Parse(bytes, "small.safetensors");
  EXPECT_EQ(f.source(), "small.safetensors");
  EXPECT_EQ(f.file_size(), bytes.size());
  EXPECT_EQ(f.header_size() % 8, 0u) << "the writer pads the header like Hugging Face's";
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "caf\xc3\xa9");

  // File order: by data offset, so the empty tensor (offset of the next) sorts by name.
  std::vector<std::string> names;
  for (const SafetensorsTensor& t : f.tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"model.norm.weight", "bf16", "scalar", "empty",
                                             "flags", "z.last"}));

  const SafetensorsTensor* norm = f.Find("model.norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->dtype, DType::kF32);
  EXPECT_EQ(norm->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(norm->offset, f.data_offset());
  EXPECT_EQ(norm->size_bytes, 16u);
  EXPECT_EQ(f.Data(*norm), Floats({1, 2, 3, 4}));

  const SafetensorsTensor* bf16 = f.Find("bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype, DType::kBF16);
  EXPECT_EQ(bf16->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(bf16->offset, f.data_offset() + 16);
  EXPECT_EQ(f.Data(*bf16), "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c");

  const SafetensorsTensor* scalar = f.Find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->dtype, DType::kI64);
  EXPECT_EQ(f.Data(*scalar), std::string("\x2a\0\0\0\0\0\0\0", 8));

  const SafetensorsTensor* empty = f.Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(empty->size_bytes, 0u);
  EXPECT_TRUE(f.Data(*empty).empty());

  EXPECT_EQ(f.Find("flags")->dtype, DType::kBool);
  EXPECT_EQ(f.Data(*f.Find("z.last")), std::string("\0\0\0\0\0\0\xf0\x3f", 8));
  EXPECT_EQ(f.Find("z.last")->offset + 8, bytes.size());
  EXPECT_EQ(f.Find("missing"), nullptr);
  EXPECT_EQ(f.Find("__metadata__"), nullptr);

  // The writer's output is stable, and a file without metadata has no "__metadata__" key.
  EXPECT_EQ(SmallWriter().Finish(), bytes);
  SafetensorsWriter plain;
  plain.AddTensor("t", DType::kU8, {2}, "ab");
  const std::string plain_bytes = plain.Finish();
  EXPECT_EQ(plain_bytes.find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafetensorsFile::Parse(plain_bytes, "plain").metadata().empty());
}

TEST(Safetensors, WriteToAndOpen) {
  const TempDir dir("write");
  const std::string path = dir.File("x.safetensors");
  SmallWriter().WriteTo(path);
  EXPECT_FALSE(FileExists(path + ".tmp"));
  EXPECT_EQ(ReadFile(path), SmallWriter().Finish());
  SafetensorsFile opened = SafetensorsFile::Open(path);
  EXPECT_EQ(opened.source(), path);
  // Moving keeps the mapping and therefore the views valid.
  const SafetensorsFile moved = std::move(opened);
  EXPECT_EQ(moved.Data(*moved.Find("model.norm.weight")), Floats({1, 2, 3, 4}));
  EXPECT_THROW(SafetensorsFile::Open(dir.File("absent.safetensors")), Error);
}

TEST(Safetensors, HandWrittenHeader) {
  // Keys out of data order, trailing space padding, an unknown extra field, and a tensor whose
  // JSON position differs from its data position.
  const std::string header =
      R"({"b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6], "extra": 1},)"
      R"( "a": {"dtype": "F16", "shape": [1, 2], "data_offsets": [0, 4]},)"
      R"( "__metadata__": {"format": "pt"}}     )";
  const std::string bytes = RawFile(header, "AABBcd");
  const SafetensorsFile f = SafetensorsFile::Parse(bytes, "hand");
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "a");
  EXPECT_EQ(f.tensors()[1].name, "b");
  EXPECT_EQ(f.Data(f.tensors()[0]), "AABB");
  EXPECT_EQ(f.Data(f.tensors()[1]), "cd");
  EXPECT_EQ(f.data_offset(), 8 + header.size());
  EXPECT_EQ(f.metadata().size(), 1u);

  // "-0" is zero.
  EXPECT_EQ(ParseError(OneTensor(R"({"dtype": "U8", "shape": [-0], "data_offsets": [-0, 0]})")),
            "");

  // No tensors at all is a valid (empty) file.
  EXPECT_TRUE(SafetensorsFile::Parse(RawFile("{}", ""), "empty").tensors().empty());
}

TEST(Safetensors, HeaderErrors) {
  ExpectParseError("", {"0 bytes long", "too short"});
  ExpectParseError("1234567", {"7 bytes long"});
  std::string huge(8, '\0');
  const uint64_t too_big = kSafetensorsMaxHeaderBytes + 1;
  std::memcpy(huge.data(), &too_big, 8);
  ExpectParseError(huge + "{}", {"header length 100000001", "100000000-byte limit"});
  std::string past(8, '\0');
  const uint64_t twelve = 12;
  std::memcpy(past.data(), &twelve, 8);
  ExpectParseError(past + "{}", {"header length 12", "past the end of the file", "2 bytes"});
  ExpectParseError(RawFile("", ""), {"must start with '{'", "empty header"});
  ExpectParseError(RawFile(" {}", ""), {"must start with '{'", "0x20"});
  ExpectParseError(RawFile("[1]", ""), {"must start with '{'"});
  ExpectParseError(RawFile("{\"a\": ", ""), {"header is not valid JSON"});
  ExpectParseError(RawFile("{} x", ""), {"header is not valid JSON"});
  // nlohmann alone would stop at the NUL and accept "{}", hiding what follows.
  ExpectParseError(RawFile(std::string("{}\0{\"x\": 1}", 12), ""),
                   {"header is not valid JSON: NUL byte at byte 2"});
  // Not UTF-8 (a lone continuation byte inside a string).
  ExpectParseError(RawFile("{\"\x80\": 1}", ""), {"header is not valid JSON"});
}

TEST(Safetensors, TensorEntryErrors) {
  ExpectParseError(OneTensor("[1]"), {"tensor 'w'", "expected an object", "found array"});
  ExpectParseError(OneTensor(R"({"shape": [4], "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "missing \"dtype\""});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "missing \"shape\""});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4]})"),
                   {"tensor 'w'", "missing \"data_offsets\""});
  ExpectParseError(OneTensor(R"({"dtype": 7, "shape": [4], "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "\"dtype\" must be a string", "found number 7"});
  ExpectParseError(OneTensor(R"({"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "unknown dtype \"F8_E4M3\"", "known: F64"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": 4, "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "\"shape\" must be an array", "found number 4"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "shape[1] = -2 is negative"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]})"),
                   {"tensor 'w'", "shape[0] must be a non-negative integer", "found number 4.0"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": ["4"], "data_offsets": [0, 16]})"),
                   {"shape[0] must be a non-negative integer", "found string \"4\""});
  ExpectParseError(
      OneTensor(R"({"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 16]})"),
      {"shape[0] = 9223372036854775808 is too large"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4], "data_offsets": {"a": 0}})"),
                   {"tensor 'w'", "\"data_offsets\" must be an array of two integers", "object"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]})"),
                   {"\"data_offsets\" must be an array of two integers", "an array of 3"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4], "data_offsets": [-1, 15]})"),
                   {"tensor 'w'", "data_offsets[0] (begin) = -1 is negative"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4], "data_offsets": [0, 16.5]})"),
                   {"data_offsets[1] (end) must be a non-negative integer", "16.5"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [0], "data_offsets": [16, 0]})"),
                   {"tensor 'w'", "data_offsets [16, 0]: begin is after end"});
  ExpectParseError(
      OneTensor(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 16]})"),
      {"tensor 'w'", "data_offsets [0, 16] hold 16 bytes", "shape [3] of F32 needs 12"});
  ExpectParseError(OneTensor(R"({"dtype": "BF16", "shape": [4], "data_offsets": [0, 16]})"),
                   {"hold 16 bytes", "shape [4] of BF16 needs 8"});
  ExpectParseError(
      OneTensor(R"({"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]})"),
      {"tensor 'w'", "size of shape [4294967296, 4294967296] of F32 overflows"});
  ExpectParseError(
      OneTensor(R"({"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 16]})"),
      {"size of shape [2305843009213693952] of F64 overflows"});
  ExpectParseError(OneTensor(R"({"dtype": "F32", "shape": [4], "data_offsets": [4, 20]})"),
                   {"tensor 'w'", "data_offsets [4, 20] run past the end of the data (16 bytes"});
  ExpectParseError(
      OneTensor(R"({"dtype": "U8", "shape": [1], "data_offsets": [18446744073709551615, 0]})"),
      {"begin is after end"});
  // Control bytes in a name are escaped in the message.
  ExpectParseError(RawFile("{\"a\\nb\": 1}", ""), {"tensor 'a\\x0ab'"});
}

TEST(Safetensors, MetadataErrors) {
  ExpectParseError(RawFile(R"({"__metadata__": ["pt"]})", ""),
                   {"\"__metadata__\" must be an object of strings", "found array"});
  ExpectParseError(RawFile(R"({"__metadata__": {"format": "pt", "step": 3}})", ""),
                   {"\"__metadata__\" key 'step'", "expected a string, found number 3"});
  EXPECT_EQ(ParseError(RawFile(R"({"__metadata__": {}})", "")), "");
}

TEST(Safetensors, DuplicateKeysAreRejected) {
  // nlohmann (like Python and serde_json) would keep the second "w" silently.
  ExpectParseError(RawFile(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
                           R"( "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                           "ab"),
                   {"header has the key 'w' twice"});
  ExpectParseError(
      OneTensor(R"({"dtype": "U8", "dtype": "F32", "shape": [16], "data_offsets": [0, 16]})"),
      {"header has the key 'dtype' twice"});
  ExpectParseError(RawFile(R"({"__metadata__": {"a": "1", "a": "2"}})", ""),
                   {"header has the key 'a' twice"});
  // The same key in two different objects is fine.
  EXPECT_EQ(ParseError(RawFile(R"({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
                               R"( "y": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                               "ab")),
            "");
}

TEST(Safetensors, OverlapIsRejectedHolesAreAllowed) {
  const std::string a = R"("a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]})";
  ExpectParseError(
      RawFile("{" + a + R"(, "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})",
              "abcdef"),
      {"tensor 'b' (bytes 2..6 of the data) overlaps tensor 'a' (bytes 0..4)"});
  // Two names for the same bytes.
  ExpectParseError(
      RawFile("{" + a + R"(, "c": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
              "abcd"),
      {"overlaps tensor"});
  // A tensor nested inside a longer one.
  ExpectParseError(RawFile(R"({"big": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},)"
                           R"( "small": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}})",
                           "abcdefgh"),
                   {"tensor 'small'", "overlaps tensor 'big'"});
  // A gap between tensors, bytes after the last one and empty tensors anywhere are accepted.
  const std::string ok = "{" + a +
                         R"(, "b": {"dtype": "U8", "shape": [2], "data_offsets": [6, 8]},)"
                         R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]}})";
  const std::string bytes = RawFile(ok, "abcd..ghTRAILING");
  const SafetensorsFile f = SafetensorsFile::Parse(bytes, "holes");
  EXPECT_EQ(f.Data(*f.Find("b")), "gh");
  EXPECT_TRUE(f.Data(*f.Find("e")).empty());
}

TEST(Safetensors, DeepNestingIsBounded) {
  const std::string deep = "{\"a\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  ExpectParseError(RawFile(deep, ""), {"header nests deeper than"});
  const std::string objects = "{\"a\": " + [] {
    std::string s;
    for (int k = 0; k < 5000; ++k) s += "{\"k\": ";
    s += "1";
    for (int k = 0; k < 5000; ++k) s += "}";
    return s;
  }() + "}";
  ExpectParseError(RawFile(objects, ""), {"header nests deeper than"});
}

TEST(Safetensors, TruncatedAtEveryPrefixThrows) {
  const std::string bytes = SmallWriter().Finish();
  ASSERT_NO_THROW(SafetensorsFile::Parse(bytes, "full"));
  for (size_t n = 0; n < bytes.size(); ++n) {
    // An exactly sized heap copy, so that AddressSanitizer sees any read past the end.
    const std::unique_ptr<char[]> copy(new char[n == 0 ? 1 : n]);
    std::memcpy(copy.get(), bytes.data(), n);
    try {
      SafetensorsFile::Parse(std::string_view(copy.get(), n), "cut.safetensors");
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("cut.safetensors: ", 0), 0u) << e.what();
    }
  }
}

TEST(Safetensors, CorruptedBytesNeverCrash) {
  // Every single-byte change of the header either parses or throws Error; a parsed file's views
  // stay inside the buffer.
  const std::string bytes = SmallWriter().Finish();
  const SafetensorsFile original = SafetensorsFile::Parse(bytes, "orig");
  const size_t end = std::min<size_t>(bytes.size(), original.data_offset());
  for (size_t k = 0; k < end; ++k) {
    for (const char c : {'\0', '"', '9', '-', '}', '\xff'}) {
      std::string mutated = bytes;
      mutated[k] = c;
      try {
        const SafetensorsFile f = SafetensorsFile::Parse(mutated, "mutated");
        for (const SafetensorsTensor& t : f.tensors()) {
          const std::string_view data = f.Data(t);
          EXPECT_EQ(data.size(), t.size_bytes);
          EXPECT_GE(data.data(), mutated.data());
          EXPECT_LE(data.data() + data.size(), mutated.data() + mutated.size());
        }
      } catch (const Error&) {
      }
    }
  }
}

TEST(Safetensors, DataRejectsAForeignTensor) {
  const std::string bytes = SmallWriter().Finish();
  const SafetensorsFile f = SafetensorsFile::Parse(bytes, "small");
  SafetensorsTensor foreign = *f.Find("z.last");
  foreign.offset = bytes.size() - 4;
  try {
    (void)f.Data(foreign);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'z.last'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("does not lie inside this file"), std::string::npos);
  }
  foreign.offset = ~uint64_t{0};
  EXPECT_THROW((void)f.Data(foreign), Error);
}

TEST(Safetensors, WriterRejectsBadInput) {
  SafetensorsWriter w;
  w.AddTensor("a", DType::kF32, {1}, Floats({1}));
  auto expect_error = [](auto&& call, std::string_view part) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error([&] { w.AddTensor("a", DType::kF32, {1}, Floats({1})); }, "duplicate tensor 'a'");
  expect_error([&] { w.AddTensor("__metadata__", DType::kU8, {0}, ""); }, "not a tensor name");
  expect_error([&] { w.AddTensor("b", DType::kF32, {2}, Floats({1})); },
               "shape [2] of F32 needs 8 bytes, got 4");
  expect_error([&] { w.AddTensor("c", DType::kF32, {-1}, ""); }, "negative dimension");
  expect_error(
      [&] {
        w.AddTensor("d", DType::kF32, {int64_t{1} << 62, 8}, "");
      },
      "needs too many bytes");
  expect_error([&] { w.AddTensor("\xff", DType::kU8, {0}, ""); }, "not valid UTF-8");
  expect_error([&] { w.SetMetadata("k", "\xc3"); }, "not valid UTF-8");
  // The failed calls left the writer as it was.
  EXPECT_EQ(SafetensorsFile::Parse(w.Finish(), "w").tensors().size(), 1u);
}

// Writes a two-shard checkpoint laid out like a Hugging Face one (and like the shared tiny-mistral
// checkpoint: layers split across shards out of order).
void WriteShardedModel(const TempDir& dir) {
  SafetensorsWriter one;
  one.SetMetadata("format", "pt");
  one.AddTensor("lm_head.weight", DType::kBF16, {4, 2}, std::string(16, 'L'));
  one.AddTensor("model.embed_tokens.weight", DType::kBF16, {4, 2}, std::string(16, 'E'));
  one.AddTensor("model.layers.1.mlp.up_proj.weight", DType::kF32, {2}, Floats({1, 2}));
  one.WriteTo(dir.File("model-00001-of-00002.safetensors"));
  SafetensorsWriter two;
  two.SetMetadata("format", "pt");
  two.AddTensor("model.layers.0.mlp.up_proj.weight", DType::kF32, {2}, Floats({3, 4}));
  two.AddTensor("model.norm.weight", DType::kF16, {2}, "nnnn");
  two.AddTensor("extra.not_in_index", DType::kU8, {1}, "x");
  two.WriteTo(dir.File("model-00002-of-00002.safetensors"));
  dir.Write("model.safetensors.index.json", R"({
  "metadata": {"total_size": 52, "note": "text"},
  "weight_map": {
    "lm_head.weight": "model-00001-of-00002.safetensors",
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.mlp.up_proj.weight": "model-00002-of-00002.safetensors",
    "model.layers.1.mlp.up_proj.weight": "model-00001-of-00002.safetensors",
    "model.norm.weight": "model-00002-of-00002.safetensors"
  }
})");
}

TEST(Safetensors, ModelSingleFile) {
  const TempDir dir("single");
  SmallWriter().WriteTo(dir.File("model.safetensors"));
  const SafetensorsModel model = SafetensorsModel::OpenDirectory(dir.path());
  EXPECT_FALSE(model.sharded());
  EXPECT_EQ(model.source(), dir.File("model.safetensors"));
  EXPECT_EQ(model.directory(), dir.path());
  ASSERT_EQ(model.files().size(), 1u);
  ASSERT_EQ(model.tensors().size(), 6u);
  EXPECT_EQ(model.tensors()[0].tensor->name, "bf16");  // sorted by name
  EXPECT_EQ(model.total_bytes(), 16u + 12 + 8 + 0 + 3 + 8);
  const SafetensorsFile* file = nullptr;
  const SafetensorsTensor* norm = model.Find("model.norm.weight", &file);
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(file, model.files()[0].get());
  EXPECT_EQ(model.Data("model.norm.weight"), Floats({1, 2, 3, 4}));
  EXPECT_EQ(model.Find("nope", &file), nullptr);
  EXPECT_EQ(file, nullptr);
  EXPECT_TRUE(model.index_metadata().empty());
}

TEST(Safetensors, ModelShardedDirectory) {
  const TempDir dir("sharded");
  WriteShardedModel(dir);
  // A trailing slash in the directory name is fine.
  SafetensorsModel opened = SafetensorsModel::OpenDirectory(dir.path() + "/");
  const SafetensorsModel model = std::move(opened);  // views survive a move
  EXPECT_TRUE(model.sharded());
  EXPECT_EQ(model.source(), dir.File("model.safetensors.index.json"));
  ASSERT_EQ(model.files().size(), 2u);
  EXPECT_EQ(model.files()[0]->source(), dir.File("model-00001-of-00002.safetensors"));
  EXPECT_EQ(model.index_metadata().at("total_size"), "52");
  EXPECT_EQ(model.index_metadata().at("note"), "text");

  std::vector<std::string> names;
  for (const SafetensorsModel::Entry& e : model.tensors()) {
    names.push_back(e.tensor->name);
    EXPECT_EQ(e.file->Find(e.tensor->name), e.tensor);
    EXPECT_EQ(model.Data(e).size(), e.tensor->size_bytes);
  }
  // The unlisted tensor of shard 2 is part of the model.
  EXPECT_EQ(names, (std::vector<std::string>{
                       "extra.not_in_index", "lm_head.weight", "model.embed_tokens.weight",
                       "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight",
                       "model.norm.weight"}));
  const SafetensorsFile* file = nullptr;
  ASSERT_NE(model.Find("model.layers.0.mlp.up_proj.weight", &file), nullptr);
  EXPECT_EQ(file, model.files()[1].get());
  EXPECT_EQ(model.Data("model.layers.0.mlp.up_proj.weight"), Floats({3, 4}));
  EXPECT_EQ(model.Data("model.layers.1.mlp.up_proj.weight"), Floats({1, 2}));
  EXPECT_EQ(model.Data("lm_head.weight"), std::string(16, 'L'));
  EXPECT_EQ(model.total_bytes(), 16u + 16 + 8 + 8 + 4 + 1);
  try {
    (void)model.Data("model.layers.2.mlp.up_proj.weight");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor 'model.layers.2.mlp.up_proj.weight'"),
              std::string::npos);
  }
}

// Asserts that opening `dir` fails with a message containing every part.
void ExpectOpenError(const std::string& dir, std::initializer_list<std::string_view> parts) {
  try {
    SafetensorsModel::OpenDirectory(dir);
    ADD_FAILURE() << "opened without error";
  } catch (const Error& e) {
    for (const std::string_view part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "missing '" << part << "' in: " << e.what();
    }
  }
}

TEST(Safetensors, ModelErrors) {
  const TempDir dir("errors");
  ExpectOpenError(dir.File("absent"), {"absent: not a directory"});
  ExpectOpenError(dir.path(), {"neither model.safetensors nor model.safetensors.index.json"});

  WriteShardedModel(dir);
  const std::string index = dir.File("model.safetensors.index.json");
  auto write_index = [&](std::string_view weight_map) {
    dir.Write("model.safetensors.index.json",
              std::string("{\"weight_map\": ") + std::string(weight_map) + "}");
  };

  write_index(R"({"model.norm.weight": "model-00003-of-00002.safetensors"})");
  ExpectOpenError(dir.path(), {index, "names shard 'model-00003-of-00002.safetensors'",
                               dir.File("model-00003-of-00002.safetensors"), "does not exist"});

  write_index(R"({"model.final.weight": "model-00002-of-00002.safetensors"})");
  ExpectOpenError(dir.path(),
                  {index, "tensor 'model.final.weight'", "shard 'model-00002-of-00002.safetensors'",
                   dir.File("model-00002-of-00002.safetensors"), "does not hold it"});

  write_index(R"({"a": 3})");
  ExpectOpenError(dir.path(), {index, "tensor 'a'", "expected a shard file name, found number 3"});
  write_index(R"({"a": "../model-00001-of-00002.safetensors"})");
  ExpectOpenError(dir.path(), {index, "is not a file name inside"});
  write_index(R"({"a": "/etc/passwd"})");
  ExpectOpenError(dir.path(), {"is not a file name inside"});
  write_index(R"(["a"])");
  ExpectOpenError(dir.path(), {index, "\"weight_map\" must be an object, found array"});
  write_index(R"({"a": "x", "a": "y"})");
  ExpectOpenError(dir.path(), {index, "index has the key 'a' twice"});

  dir.Write("model.safetensors.index.json", R"({"metadata": {}})");
  ExpectOpenError(dir.path(), {index, "missing \"weight_map\""});
  dir.Write("model.safetensors.index.json", R"({"metadata": 1, "weight_map": {}})");
  ExpectOpenError(dir.path(), {index, "\"metadata\" must be an object"});
  dir.Write("model.safetensors.index.json", "{");
  ExpectOpenError(dir.path(), {index, "index is not valid JSON"});
  dir.Write("model.safetensors.index.json", "[]");
  ExpectOpenError(dir.path(), {index, "expected a JSON object, found array"});

  // A tensor that two shards hold and the index does not place is ambiguous.
  SafetensorsWriter three;
  three.AddTensor("extra.not_in_index", DType::kU8, {1}, "y");
  three.AddTensor("lm_head.weight", DType::kU8, {1}, "z");  // placed elsewhere by the index
  three.AddTensor("other", DType::kU8, {1}, "o");
  three.WriteTo(dir.File("model-00003-of-00003.safetensors"));
  write_index(R"({"model.norm.weight": "model-00002-of-00002.safetensors",)"
              R"( "lm_head.weight": "model-00001-of-00002.safetensors",)"
              R"( "other": "model-00003-of-00003.safetensors"})");
  ExpectOpenError(dir.path(),
                  {"tensor 'extra.not_in_index' is in both", "model-00002-of-00002.safetensors",
                   "model-00003-of-00003.safetensors", "weight_map names neither"});

  // A malformed shard: the error names the shard.
  write_index(R"({"x": "broken.safetensors"})");
  dir.Write("broken.safetensors", "1234");
  ExpectOpenError(dir.path(), {dir.File("broken.safetensors"), "too short"});
}

TEST(Safetensors, IndexWinsOverAStrayCopy) {
  // A tensor the index places in one shard and that another shard also holds: the index decides.
  const TempDir dir("stray");
  WriteShardedModel(dir);
  SafetensorsWriter three;
  three.AddTensor("lm_head.weight", DType::kU8, {1}, "z");
  three.AddTensor("model.other", DType::kU8, {1}, "o");
  three.WriteTo(dir.File("three.safetensors"));
  dir.Write("model.safetensors.index.json",
            R"({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors",)"
            R"( "model.other": "three.safetensors"}})");
  const SafetensorsModel model = SafetensorsModel::OpenDirectory(dir.path());
  EXPECT_EQ(model.Data("lm_head.weight"), std::string(16, 'L'));
  // Shard 2 is not named by the index, so none of its tensors is part of the model.
  EXPECT_EQ(model.files().size(), 2u);
  EXPECT_EQ(model.Find("model.norm.weight"), nullptr);
  EXPECT_EQ(model.tensors().size(), 4u);  // lm_head, embed_tokens, layers.1 up_proj, model.other
}

}  // namespace
}  // namespace starling
