#include "formats/gguf.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"

namespace starling {
namespace {

// Hand-assembled GGUF bytes, for files the writer refuses to produce.
void PutU32(std::string& out, uint32_t v) {
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void PutU64(std::string& out, uint64_t v) {
  out.append(reinterpret_cast<const char*>(&v), 8);
}
void PutStr(std::string& out, std::string_view s) {
  PutU64(out, s.size());
  out.append(s);
}

std::string Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  std::string out = "GGUF";
  PutU32(out, version);
  PutU64(out, n_tensors);
  PutU64(out, n_kv);
  return out;
}

std::string TensorInfo(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type,
                       uint64_t offset) {
  std::string out;
  PutStr(out, name);
  PutU32(out, static_cast<uint32_t>(dims.size()));
  for (const uint64_t d : dims) PutU64(out, d);
  PutU32(out, type);
  PutU64(out, offset);
  return out;
}

// header + kvs + infos, padded to `alignment`, then `data_bytes` zero bytes.
std::string RawFile(uint64_t n_kv, const std::string& kvs, const std::vector<std::string>& infos,
                    size_t data_bytes, size_t alignment = 32) {
  std::string out = Header(infos.size(), n_kv) + kvs;
  for (const std::string& info : infos) out += info;
  out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
  out.append(data_bytes, '\0');
  return out;
}

// The message of the Error that parsing `bytes` throws ("" if it parses).
std::string ParseError(const std::string& bytes) {
  try {
    GgufFile::Parse(bytes, "test.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// A small file with every writer value type and tensors of three ggml types.
std::string SmallFile() {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddUint32("llama.block_count", 5);
  w.AddInt32("test.negative", -7);
  w.AddUint64("test.big", 1ull << 40);
  w.AddFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.AddBool("tokenizer.ggml.add_bos_token", true);
  w.AddStringArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "", "\xe2\x96\x81the"});
  const std::vector<float> scores = {0.f, -1.5f, 2.25f, 3.f};
  w.AddFloat32Array("tokenizer.ggml.scores", scores);
  const std::vector<int32_t> types = {2, 3, 3, 1};
  w.AddInt32Array("tokenizer.ggml.token_type", types);
  w.AddTensor("norm", {5}, kGgmlF32, Floats({1, 2, 3, 4, 5}));
  w.AddTensor("q4", {64, 2}, kGgmlQ4_0, std::string(4 * 18, '\x11'));
  // Last, and 32 bytes long, so the file ends exactly where its data ends.
  w.AddTensor("last", {8}, kGgmlF32, Floats({8, 7, 6, 5, 4, 3, 2, 1}));
  return w.Finish();
}

TEST(Gguf, WriterRoundTrip) {
  const std::string bytes = SmallFile();
  const GgufFile f = GgufFile::Parse(bytes, "small.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.file_size(), bytes.size());
  EXPECT_EQ(f.source(), "small.gguf");

  EXPECT_EQ(f.GetString("general.architecture"), "llama");
  EXPECT_EQ(f.GetUint("llama.block_count"), 5u);
  EXPECT_EQ(f.GetInt("llama.block_count"), 5);
  EXPECT_EQ(f.GetInt("test.negative"), -7);
  EXPECT_EQ(f.GetUint("test.big"), 1ull << 40);
  EXPECT_FLOAT_EQ(static_cast<float>(f.GetFloat("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_TRUE(f.GetBool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"<unk>", "<s>", "", "\xe2\x96\x81the"}));
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores"), (std::vector<float>{0.f, -1.5f, 2.25f, 3.f}));
  EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type"), (std::vector<int64_t>{2, 3, 3, 1}));

  ASSERT_EQ(f.metadata().size(), 9u);
  EXPECT_EQ(f.metadata()[0].key, "general.architecture");
  EXPECT_EQ(GgufDescribeType(f.metadata()[6].value), "array[string, 4]");
  EXPECT_EQ(GgufDescribeType(f.metadata()[1].value), "uint32");

  ASSERT_EQ(f.tensors().size(), 3u);
  const GgufTensorInfo* norm = f.FindTensor("norm");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->dims, (std::vector<uint64_t>{5}));
  EXPECT_EQ(norm->ggml_type, kGgmlF32);
  EXPECT_EQ(norm->size_bytes, 20u);
  EXPECT_EQ(norm->n_elements, 5u);
  EXPECT_EQ(f.TensorData(*norm), Floats({1, 2, 3, 4, 5}));
  const GgufTensorInfo* q4 = f.FindTensor("q4");
  ASSERT_NE(q4, nullptr);
  EXPECT_EQ(q4->offset, 32u);  // 20 bytes of "norm", padded
  EXPECT_EQ(q4->size_bytes, 72u);
  EXPECT_EQ(f.TensorData(*q4), std::string(72, '\x11'));
  EXPECT_EQ(f.TensorData(f.tensors()[2]), Floats({8, 7, 6, 5, 4, 3, 2, 1}));
  EXPECT_EQ(f.data_offset() + f.tensors()[2].offset + 32, bytes.size());
  EXPECT_EQ(f.FindTensor("missing"), nullptr);
}

TEST(Gguf, WriteToAndOpen) {
  GgufWriter w;
  w.AddString("general.name", "disk");
  w.AddTensor("t", {4, 2}, kGgmlF32, Floats({1, 2, 3, 4, 5, 6, 7, 8}));
  const std::string path = ::testing::TempDir() + "/gguf_test_write.gguf";
  w.WriteTo(path);
  {
    const GgufFile f = GgufFile::Open(path);
    EXPECT_EQ(f.source(), path);
    EXPECT_EQ(f.GetString("general.name"), "disk");
    EXPECT_EQ(f.TensorData(*f.FindTensor("t")), Floats({1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(ReadFile(path), w.Finish());
    // Moving keeps the mapping and therefore the tensor views valid.
    GgufFile moved = GgufFile::Open(path);
    const GgufFile target = std::move(moved);
    EXPECT_EQ(target.TensorData(target.tensors()[0]).size(), 32u);
  }
  std::remove(path.c_str());
  EXPECT_THROW(GgufFile::Open(path), Error);
}

TEST(Gguf, CustomAlignment) {
  GgufWriter w;
  w.AddUint32("general.alignment", 64);
  w.AddTensor("a", {3}, kGgmlF32, Floats({1, 2, 3}));
  w.AddTensor("b", {2}, kGgmlF32, Floats({4, 5}));
  const std::string bytes = w.Finish();
  const GgufFile f = GgufFile::Parse(bytes, "aligned.gguf");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.FindTensor("b")->offset, 64u);
  EXPECT_EQ(f.TensorData(*f.FindTensor("b")), Floats({4, 5}));
}

TEST(Gguf, AddValueCopiesEveryType) {
  // Values of every type, including ones only AddValue can write, survive a copy into a new file.
  GgufValue nested;
  nested.type = GgufType::kArray;
  nested.array_type = GgufType::kArray;
  nested.array_size = 2;
  for (int k = 0; k < 2; ++k) {
    GgufValue& inner = nested.arrays.emplace_back();
    inner.type = GgufType::kArray;
    inner.array_type = GgufType::kUint16;
    inner.array_size = 2;
    const uint16_t elems[2] = {static_cast<uint16_t>(k), 65535};
    inner.raw.assign(reinterpret_cast<const char*>(elems), sizeof elems);
  }
  GgufWriter w;
  w.AddValue("nested", nested);
  GgufValue v;
  v.type = GgufType::kInt8;
  v.i = -128;
  w.AddValue("i8", v);
  v = GgufValue{};
  v.type = GgufType::kFloat64;
  v.f = 0.1;
  w.AddValue("f64", v);
  v = GgufValue{};
  v.type = GgufType::kInt64;
  v.i = -(1ll << 62);
  w.AddValue("i64", v);
  v = GgufValue{};
  v.type = GgufType::kArray;
  v.array_type = GgufType::kUint64;
  v.array_size = 1;
  const uint64_t huge = ~0ull;
  v.raw.assign(reinterpret_cast<const char*>(&huge), 8);
  w.AddValue("u64s", v);
  const std::string first = w.Finish();
  const GgufFile a = GgufFile::Parse(first, "a.gguf");

  GgufWriter copy;
  for (const GgufKeyValue& kv : a.metadata()) copy.AddValue(kv.key, kv.value);
  const std::string second = copy.Finish();
  EXPECT_EQ(first, second);

  const GgufFile b = GgufFile::Parse(second, "b.gguf");
  EXPECT_EQ(b.GetInt("i8"), -128);
  EXPECT_EQ(b.GetFloat("f64"), 0.1);
  EXPECT_EQ(b.GetInt("i64"), -(1ll << 62));
  const GgufValue* n = b.Find("nested");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(GgufDescribeType(*n), "array[array, 2]");
  EXPECT_EQ(GgufArrayAsInts(n->arrays[1], "inner"), (std::vector<int64_t>{1, 65535}));
  EXPECT_EQ(GgufValueToString(*n), "[[0, 65535], [1, 65535]]");
  const std::string error = [&] {
    try {
      b.GetIntArray("u64s");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  EXPECT_NE(error.find("does not fit in int64"), std::string::npos) << error;
}

TEST(Gguf, GetterErrorsNameKeyAndTypes) {
  const std::string bytes = SmallFile();
  const GgufFile f = GgufFile::Parse(bytes, "small.gguf");
  auto error_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(error_of([&] { f.GetString("llama.block_count"); }),
            "small.gguf: metadata key 'llama.block_count' has type uint32, expected string");
  EXPECT_EQ(error_of([&] { f.GetUint("nope"); }), "small.gguf: missing metadata key 'nope'");
  EXPECT_NE(error_of([&] { f.GetUint("test.negative"); }).find("is negative (-7)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f.GetFloat("llama.block_count"); }).find("expected float32 or float64"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f.GetBool("general.architecture"); }).find("expected bool"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f.GetIntArray("tokenizer.ggml.tokens"); })
                .find("'tokenizer.ggml.tokens' has type array[string, 4], expected an array of "
                      "integers"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              f.GetStringArray("tokenizer.ggml.scores");
            }).find("expected an array of string"),
            std::string::npos);
  EXPECT_NE(error_of([&] { f.GetFloatArray("general.architecture"); }).find("has type string"),
            std::string::npos);

  EXPECT_EQ(f.GetUintOr("missing", 42), 42u);
  EXPECT_EQ(f.GetUintOr("llama.block_count", 42), 5u);
  EXPECT_EQ(f.GetIntOr("missing", -1), -1);
  EXPECT_EQ(f.GetFloatOr("missing", 0.5), 0.5);
  EXPECT_FALSE(f.GetBoolOr("missing", false));
  EXPECT_EQ(f.GetStringOr("missing", "x"), "x");
  // A present key of the wrong type is an error, not a reason to fall back.
  EXPECT_THROW(f.GetUintOr("general.architecture", 1), Error);

  GgufTensorInfo outside = f.tensors()[0];
  outside.offset = 1ull << 62;
  EXPECT_NE(error_of([&] { f.TensorData(outside); }).find("lies outside the file"),
            std::string::npos);
}

TEST(Gguf, TypeTable) {
  EXPECT_EQ(GgufTypeName(kGgmlF32), "F32");
  EXPECT_EQ(GgufTypeName(kGgmlQ4_K), "Q4_K");
  EXPECT_EQ(GgufTypeName(kGgmlBF16), "BF16");
  EXPECT_EQ(GgufTypeName(99), "unknown(99)");
  EXPECT_EQ(GgufTypeName(4), "unknown(4)");  // the removed Q4_2
  struct Case {
    uint32_t type;
    std::vector<uint64_t> dims;
    uint64_t bytes;
  };
  const Case cases[] = {
      {kGgmlF32, {3, 2}, 24},   {kGgmlF16, {3}, 6},
      {kGgmlBF16, {4}, 8},      {kGgmlQ4_0, {64}, 36},
      {kGgmlQ4_1, {32, 2}, 40}, {kGgmlQ5_0, {32}, 22},
      {kGgmlQ5_1, {32}, 24},    {kGgmlQ8_0, {32, 3}, 102},
      {kGgmlQ8_1, {32}, 36},    {kGgmlQ2_K, {256}, 84},
      {kGgmlQ3_K, {256}, 110},  {kGgmlQ4_K, {512, 10}, 2880},
      {kGgmlQ5_K, {256}, 176},  {kGgmlQ6_K, {256, 1, 2}, 420},
      {kGgmlQ8_K, {256}, 292},  {kGgmlI8, {5}, 5},
      {kGgmlI16, {5}, 10},      {kGgmlI32, {5}, 20},
      {kGgmlI64, {5}, 40},      {kGgmlF64, {5}, 40},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(GgmlTensorBytes(c.type, c.dims), c.bytes) << GgufTypeName(c.type);
  }
  EXPECT_THROW(GgmlTensorBytes(kGgmlQ4_K, std::vector<uint64_t>{128}), Error);
  EXPECT_THROW(GgmlTensorBytes(4, std::vector<uint64_t>{32}), Error);
}

TEST(Gguf, ValueToString) {
  const std::string bytes = SmallFile();
  const GgufFile f = GgufFile::Parse(bytes, "small.gguf");
  EXPECT_EQ(GgufValueToString(*f.Find("general.architecture")), "\"llama\"");
  EXPECT_EQ(GgufValueToString(*f.Find("llama.attention.layer_norm_rms_epsilon")), "1e-05");
  EXPECT_EQ(GgufValueToString(*f.Find("tokenizer.ggml.add_bos_token")), "true");
  EXPECT_EQ(GgufValueToString(*f.Find("tokenizer.ggml.token_type"), 2), "[2, 3, ... (4 total)]");
  EXPECT_EQ(GgufValueToString(*f.Find("tokenizer.ggml.scores")), "[0, -1.5, 2.25, 3]");
}

TEST(Gguf, TruncatedAtEveryPrefixThrows) {
  const std::string bytes = SmallFile();
  ASSERT_NO_THROW(GgufFile::Parse(bytes, "full.gguf"));
  for (size_t n = 0; n < bytes.size(); ++n) {
    // An exactly sized heap copy, so that AddressSanitizer sees any read past the end.
    const std::unique_ptr<char[]> copy(new char[n == 0 ? 1 : n]);
    std::memcpy(copy.get(), bytes.data(), n);
    try {
      GgufFile::Parse(std::string_view(copy.get(), n), "cut.gguf");
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("cut.gguf: ", 0), 0u) << e.what();
    }
  }
}

// Asserts that parsing `bytes` fails with a message containing every one of `parts`.
void ExpectParseError(const std::string& bytes, std::initializer_list<std::string_view> parts) {
  const std::string error = ParseError(bytes);
  ASSERT_FALSE(error.empty()) << "parsed without error";
  EXPECT_EQ(error.rfind("test.gguf: ", 0), 0u) << error;
  for (const std::string_view part : parts) {
    EXPECT_NE(error.find(part), std::string::npos) << "missing '" << part << "' in: " << error;
  }
}

std::string StringKv(std::string_view key, std::string_view value) {
  std::string out;
  PutStr(out, key);
  PutU32(out, static_cast<uint32_t>(GgufType::kString));
  PutStr(out, value);
  return out;
}

std::string Uint32Kv(std::string_view key, uint32_t value) {
  std::string out;
  PutStr(out, key);
  PutU32(out, static_cast<uint32_t>(GgufType::kUint32));
  PutU32(out, value);
  return out;
}

TEST(Gguf, HeaderErrors) {
  ExpectParseError("", {"header: magic (4 bytes) runs past end of file", "at offset 0"});
  ExpectParseError("GGML" + Header(0, 0).substr(4), {"bad magic 'GGML'"});
  ExpectParseError(Header(0, 0, 1), {"GGUF version 1 is not supported", "at offset 4"});
  ExpectParseError(Header(0, 0, 7), {"unsupported GGUF version 7"});
  ExpectParseError(Header(0, 0, 3u << 24), {"big-endian GGUF files are not supported"});
  ExpectParseError(Header(0, 1ull << 62), {"metadata key count 4611686018427387904 is impossible"});
  ExpectParseError(Header(1ull << 62, 0), {"tensor count 4611686018427387904 is impossible"});
  // Version 2 has the same layout as version 3.
  const std::string v2 = Header(0, 1, 2) + StringKv("general.name", "v2");
  const GgufFile f = GgufFile::Parse(v2, "v2.gguf");
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.GetString("general.name"), "v2");
  EXPECT_TRUE(f.tensors().empty());
}

TEST(Gguf, MetadataErrors) {
  // Corrupted string length: header (24 bytes), key (8 + 12), type (4): the length is at 48.
  std::string kv;
  PutStr(kv, "general.name");
  PutU32(kv, static_cast<uint32_t>(GgufType::kString));
  PutU64(kv, 1000000000000ull);
  kv += "abc";
  ExpectParseError(Header(0, 1) + kv,
                   {"metadata key 0 ('general.name'): string length 1000000000000 runs past end "
                    "of file",
                    "at offset 48"});

  // Key length past the end.
  std::string bad_key;
  PutU64(bad_key, 99);
  bad_key += "short";
  ExpectParseError(Header(0, 1) + bad_key, {"metadata key 0: key length 99 runs past end of file"});

  // An array claiming 2^60 elements in a small file fails before allocating anything.
  std::string array;
  PutStr(array, "tokenizer.ggml.scores");
  PutU32(array, static_cast<uint32_t>(GgufType::kArray));
  PutU32(array, static_cast<uint32_t>(GgufType::kFloat32));
  PutU64(array, 1ull << 60);
  array.append(1000, '\0');
  // The counts are checked against the bytes left before anything is allocated.
  ExpectParseError(Header(0, 1) + array, {"'tokenizer.ggml.scores'",
                                          "array length 1152921504606846976 of float32 runs "
                                          "past end of file"});
  std::string strings;
  PutStr(strings, "tokenizer.ggml.tokens");
  PutU32(strings, static_cast<uint32_t>(GgufType::kArray));
  PutU32(strings, static_cast<uint32_t>(GgufType::kString));
  PutU64(strings, 1ull << 60);
  strings.append(1000, '\0');
  ExpectParseError(Header(0, 1) + strings, {"array length 1152921504606846976 of string"});

  // A string array whose third element is cut short names the element.
  std::string tokens;
  PutStr(tokens, "tokens");
  PutU32(tokens, static_cast<uint32_t>(GgufType::kArray));
  PutU32(tokens, static_cast<uint32_t>(GgufType::kString));
  PutU64(tokens, 3);
  PutStr(tokens, "a");
  PutStr(tokens, "b");
  PutU64(tokens, 50);
  ExpectParseError(Header(0, 1) + tokens, {"'tokens'): array element 2: string length 50"});

  std::string unknown;
  PutStr(unknown, "x");
  PutU32(unknown, 13);
  ExpectParseError(Header(0, 1) + unknown, {"metadata key 0 ('x'): unknown value type 13"});

  std::string bad_elem;
  PutStr(bad_elem, "x");
  PutU32(bad_elem, static_cast<uint32_t>(GgufType::kArray));
  PutU32(bad_elem, 77);
  PutU64(bad_elem, 0);
  ExpectParseError(Header(0, 1) + bad_elem, {"unknown array element type 77"});

  std::string bad_bool;
  PutStr(bad_bool, "flag");
  PutU32(bad_bool, static_cast<uint32_t>(GgufType::kBool));
  bad_bool += '\x02';
  ExpectParseError(Header(0, 1) + bad_bool, {"bool value 2 is neither 0 nor 1"});

  ExpectParseError(Header(0, 2) + StringKv("a", "1") + StringKv("a", "2"),
                   {"metadata key 1 ('a'): duplicate key"});

  // Control bytes in untrusted names are escaped in messages.
  ExpectParseError(Header(0, 2) + StringKv("a\n", "1") + StringKv("a\n", "2"),
                   {"('a\\x0a'): duplicate key"});
}

// An array value nested `depth` levels deep (depth 1 = a plain array of uint8).
std::string NestedArrayKv(int depth) {
  std::string out;
  PutStr(out, "nested");
  PutU32(out, static_cast<uint32_t>(GgufType::kArray));
  for (int k = 1; k < depth; ++k) {
    PutU32(out, static_cast<uint32_t>(GgufType::kArray));
    PutU64(out, 1);
  }
  PutU32(out, static_cast<uint32_t>(GgufType::kUint8));
  PutU64(out, 1);
  out += '\x05';
  return out;
}

TEST(Gguf, NestedArrayDepthIsBounded) {
  const std::string ok = Header(0, 1) + NestedArrayKv(4);
  const GgufFile f = GgufFile::Parse(ok, "nested.gguf");
  EXPECT_EQ(GgufValueToString(*f.Find("nested")), "[[[[5]]]]");
  ExpectParseError(Header(0, 1) + NestedArrayKv(5), {"arrays nested more than 4 deep"});

  // Many nested arrays are refused before they are built.
  std::string many;
  PutStr(many, "many");
  PutU32(many, static_cast<uint32_t>(GgufType::kArray));
  PutU32(many, static_cast<uint32_t>(GgufType::kArray));
  PutU64(many, 70000);
  for (int k = 0; k < 70000; ++k) {
    PutU32(many, static_cast<uint32_t>(GgufType::kUint8));
    PutU64(many, 0);
  }
  ExpectParseError(Header(0, 1) + many, {"more than 65536 nested arrays in the file"});
}

TEST(Gguf, AlignmentErrors) {
  ExpectParseError(RawFile(1, Uint32Kv("general.alignment", 48), {}, 0),
                   {"('general.alignment'): alignment 48 is not a nonzero power of two"});
  ExpectParseError(RawFile(1, Uint32Kv("general.alignment", 0), {}, 0),
                   {"alignment 0 is not a nonzero power of two"});
  ExpectParseError(RawFile(1, Uint32Kv("general.alignment", 1u << 30), {}, 0),
                   {"alignment 1073741824 is larger than the supported maximum 1048576"});
  std::string wide;
  PutStr(wide, "general.alignment");
  PutU32(wide, static_cast<uint32_t>(GgufType::kUint64));
  PutU64(wide, 64);
  ExpectParseError(RawFile(1, wide, {}, 0), {"alignment has type uint64, expected uint32"});
}

TEST(Gguf, TensorErrors) {
  // A valid hand-built file first, so that each failure below is down to its one change.
  const std::string good = RawFile(0, "", {TensorInfo("w", {8}, kGgmlF32, 0)}, 32);
  ASSERT_EQ(ParseError(good), "");

  ExpectParseError(RawFile(0, "", {TensorInfo("w", {8}, 99, 0)}, 32),
                   {"tensor 0 ('w'): unknown ggml type 99"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {8}, kGgmlF32, 16)}, 64),
                   {"tensor 0 ('w'): data offset 16 is not a multiple of the alignment 32"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {8}, kGgmlF32, 0)}, 31),
                   {"tensor 0 ('w'): data (32 bytes at data offset 0) runs past end of file"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {8}, kGgmlF32, 1ull << 63)}, 32),
                   {"runs past end of file"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {33, 2}, kGgmlQ4_0, 0)}, 64),
                   {"tensor 0 ('w'): row length 33 is not a multiple of the Q4_0 block size 32"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {1, 1, 1, 1, 1}, kGgmlF32, 0)}, 32),
                   {"n_dims 5 is out of range (1 to 4)"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {}, kGgmlF32, 0)}, 32),
                   {"n_dims 0 is out of range"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {1ull << 40, 1ull << 40}, kGgmlF32, 0)}, 32),
                   {"element count of shape [1099511627776, 1099511627776] overflows"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {1ull << 63}, kGgmlF32, 0)}, 32),
                   {"dimension 0 (9223372036854775808) is too large"});
  ExpectParseError(RawFile(0, "", {TensorInfo("w", {1ull << 62}, kGgmlF32, 0)}, 32),
                   {"byte size of shape [4611686018427387904] overflows"});
  ExpectParseError(
      RawFile(0, "", {TensorInfo("w", {8}, kGgmlF32, 0), TensorInfo("w", {8}, kGgmlF32, 32)}, 64),
      {"tensor 1 ('w'): duplicate tensor name"});
  // Two tensors over the same bytes, or partly over them, in either order of the infos.
  ExpectParseError(
      RawFile(0, "", {TensorInfo("a", {8}, kGgmlF32, 0), TensorInfo("b", {8}, kGgmlF32, 0)}, 64),
      {"tensor 1 ('b'): data (bytes 0..32 of the data section) overlaps tensor 0 ('a', bytes "
       "0..32)"});
  ExpectParseError(
      RawFile(0, "", {TensorInfo("a", {16}, kGgmlF32, 32), TensorInfo("b", {16}, kGgmlF32, 0)}, 96),
      {"tensor 0 ('a'): data (bytes 32..96 of the data section) overlaps tensor 1 ('b', bytes "
       "0..64)"});
  // Adjacent tensors, and tensors with padding between them, are fine.
  EXPECT_EQ(
      ParseError(RawFile(
          0, "", {TensorInfo("a", {8}, kGgmlF32, 32), TensorInfo("b", {8}, kGgmlF32, 0)}, 64)),
      "");
  EXPECT_EQ(
      ParseError(RawFile(
          0, "", {TensorInfo("a", {2}, kGgmlF32, 0), TensorInfo("b", {2}, kGgmlF32, 64)}, 96)),
      "");
  // The alignment from metadata applies to tensor offsets.
  ExpectParseError(
      RawFile(1, Uint32Kv("general.alignment", 64), {TensorInfo("w", {8}, kGgmlF32, 32)}, 128, 64),
      {"data offset 32 is not a multiple of the alignment 64"});
}

TEST(Gguf, WriterRejectsBadInput) {
  GgufWriter w;
  w.AddString("k", "v");
  EXPECT_THROW(w.AddUint32("k", 1), Error);
  EXPECT_THROW(w.AddUint32("general.alignment", 24), Error);
  EXPECT_THROW(w.AddUint32("general.alignment", 1u << 30), Error);
  EXPECT_THROW(w.AddString("general.alignment", "32"), Error);
  EXPECT_THROW(w.AddTensor("t", {8}, kGgmlF32, std::string(31, '\0')), Error);
  EXPECT_THROW(w.AddTensor("t", {8}, 99, std::string(32, '\0')), Error);
  EXPECT_THROW(w.AddTensor("t", {16}, kGgmlQ8_0, std::string(34, '\0')), Error);
  EXPECT_THROW(w.AddTensor("t", {}, kGgmlF32, ""), Error);
  w.AddTensor("t", {8}, kGgmlF32, std::string(32, '\0'));
  EXPECT_THROW(w.AddTensor("t", {8}, kGgmlF32, std::string(32, '\0')), Error);
  GgufValue broken;
  broken.type = GgufType::kArray;
  broken.array_type = GgufType::kFloat32;
  broken.array_size = 3;
  broken.raw = std::string(8, '\0');
  EXPECT_THROW(w.AddValue("broken", broken), Error);
  // Rejected values leave the writer's output valid.
  const std::string bytes = w.Finish();
  const GgufFile f = GgufFile::Parse(bytes, "w.gguf");
  EXPECT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.tensors().size(), 1u);
}

// A full-size vocabulary round-trips (its load time is a benchmark, not a test).
TEST(Gguf, LargeVocabularyRoundTrips) {
  constexpr int kVocab = 32000;
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int k = 0; k < kVocab; ++k) {
    tokens.push_back("\xe2\x96\x81token" + std::to_string(k));
    scores.push_back(-static_cast<float>(k));
    types.push_back(k < 3 ? 3 : 1);
  }
  GgufWriter w;
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.AddFloat32Array("tokenizer.ggml.scores", scores);
  w.AddInt32Array("tokenizer.ggml.token_type", types);
  const std::string bytes = w.Finish();
  const GgufFile f = GgufFile::Parse(bytes, "vocab.gguf");
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens"), tokens);
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores"), scores);
  const std::vector<int64_t> got_types = f.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_EQ(got_types.size(), static_cast<size_t>(kVocab));
  EXPECT_EQ(got_types[2], 3);
  EXPECT_EQ(got_types[5], 1);
}

TEST(Gguf, Stories260K) {
  const std::string path = std::string(STARLING_MODELS_DIR) + "/stories260K.gguf";
  const GgufFile f = GgufFile::Open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), 14176u);
  EXPECT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.GetString("general.architecture"), "llama");
  EXPECT_EQ(f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.GetUint("llama.embedding_length"), 64u);
  EXPECT_EQ(f.GetUint("llama.feed_forward_length"), 172u);
  EXPECT_EQ(f.GetUint("llama.block_count"), 5u);
  EXPECT_EQ(f.GetUint("llama.attention.head_count"), 8u);
  EXPECT_EQ(f.GetUint("llama.attention.head_count_kv"), 4u);
  EXPECT_EQ(f.GetUint("llama.context_length"), 2048u);
  EXPECT_EQ(f.GetUint("llama.rope.dimension_count"), 8u);
  EXPECT_FLOAT_EQ(static_cast<float>(f.GetFloat("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(f.GetUint("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(f.GetUint("tokenizer.ggml.eos_token_id"), 2u);

  const std::vector<std::string>& tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(tokens[258], "<0xFF>");
  EXPECT_EQ(tokens[259], "\xe2\x96\x81t");
  EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores").size(), 512u);
  const std::vector<int64_t> types = f.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 512u);
  EXPECT_EQ(types[0], 2);    // unknown
  EXPECT_EQ(types[1], 3);    // control
  EXPECT_EQ(types[3], 6);    // byte
  EXPECT_EQ(types[259], 1);  // normal

  ASSERT_EQ(f.tensors().size(), 48u);
  EXPECT_EQ(f.tensors()[0].name, "token_embd.weight");
  const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->dims, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(embd->ggml_type, kGgmlF32);
  const GgufTensorInfo* down = f.FindTensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->dims, (std::vector<uint64_t>{172, 64}));
  const GgufTensorInfo* k = f.FindTensor("blk.4.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->dims, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(f.FindTensor("output_norm.weight")->dims, (std::vector<uint64_t>{64}));
  for (const GgufTensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.ggml_type, kGgmlF32) << t.name;
    EXPECT_EQ(f.TensorData(t).size(), t.n_elements * 4) << t.name;
  }
  const GgufTensorInfo& last = f.tensors().back();
  EXPECT_EQ(f.data_offset() + last.offset + last.size_bytes, f.file_size());
}

}  // namespace
}  // namespace starling
