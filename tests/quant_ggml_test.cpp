// Every block format against ggml itself: tests/data/ggml-quants/ggml_quants.bin holds inputs,
// the bytes ggml's reference quantizers wrote for them and ggml's dequantization of those bytes
// (tools/ggml_quant_fixture.c, compiled from ggml commit d99724f). Also the format table's
// consistency with the GGUF reader, and each format's dot product against a double-precision
// sum.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/gguf.h"
#include "quant/format.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

struct GgmlCase {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<float> x;        // input
  std::vector<uint8_t> bytes;  // ggml's quantize_row_*_ref(x)
  std::vector<float> y;        // ggml's dequantize_row_*(bytes)
};

std::vector<GgmlCase> ReadFixture() {
  const std::string path = std::string(STARLING_TEST_DATA_DIR) + "/ggml-quants/ggml_quants.bin";
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot open " << path;
  auto u32 = [&] {
    uint32_t v = 0;
    in.read(reinterpret_cast<char*>(&v), 4);
    return v;
  };
  char magic[4] = {};
  in.read(magic, 4);
  EXPECT_EQ(std::string(magic, 4), "SGQF");
  EXPECT_EQ(u32(), 1u);
  const uint32_t count = u32();
  std::vector<GgmlCase> cases(count);
  for (GgmlCase& c : cases) {
    char name[8] = {};
    in.read(name, 8);
    c.name = std::string(name, strnlen(name, 8));
    c.ggml_type = u32();
    const uint32_t n = u32();
    const uint32_t bytes = u32();
    c.x.resize(n);
    c.bytes.resize(bytes);
    c.y.resize(n);
    in.read(reinterpret_cast<char*>(c.x.data()), n * 4);
    in.read(reinterpret_cast<char*>(c.bytes.data()), bytes);
    in.read(reinterpret_cast<char*>(c.y.data()), n * 4);
  }
  EXPECT_TRUE(in.good()) << path << " is truncated";
  return cases;
}

const std::vector<GgmlCase>& Cases() {
  static const std::vector<GgmlCase> cases = ReadFixture();
  return cases;
}

WeightFormat FormatOf(const GgmlCase& c) {
  const FormatTraits* t = FindFormatByGgmlType(c.ggml_type);
  EXPECT_NE(t, nullptr) << c.name;
  EXPECT_STREQ(t->name, c.name.c_str());
  return t->format;
}

TEST(QuantGgml, FixtureCoversEveryBlockFormat) {
  std::vector<std::string> names;
  for (const GgmlCase& c : Cases()) names.push_back(c.name);
  for (const FormatTraits& t : AllFormats()) {
    if (t.quantized) {
      EXPECT_NE(std::find(names.begin(), names.end(), t.name), names.end()) << t.name;
    }
  }
}

TEST(QuantGgml, TableAgreesWithTheGgufReader) {
  for (const FormatTraits& t : AllFormats()) {
    const GgmlTypeTraits* g = FindGgmlType(t.ggml_type);
    ASSERT_NE(g, nullptr) << t.name;
    EXPECT_STREQ(g->name, t.name);
    EXPECT_EQ(static_cast<int32_t>(g->block_size), t.block_size) << t.name;
    EXPECT_EQ(static_cast<int32_t>(g->type_size), t.block_bytes) << t.name;
    EXPECT_EQ(WeightFormatFromName(t.name).has_value(), t.weight) << t.name;
    if (t.weight) {
      EXPECT_EQ(*WeightFormatFromName(t.name), t.format);
    }
  }
  EXPECT_EQ(WeightFormatFromName("q5_k_m"), std::nullopt);
  EXPECT_EQ(WeightFormatFromName("q5_k"), WeightFormat::kQ5_K);
}

// Bit for bit: the layouts are ggml's.
TEST(QuantGgml, DequantizeEqualsGgml) {
  for (const GgmlCase& c : Cases()) {
    const WeightFormat f = FormatOf(c);
    std::vector<float> ours(c.x.size());
    DequantizeRow(f, c.bytes.data(), static_cast<int64_t>(c.x.size()), ours.data());
    int mismatches = 0;
    for (size_t i = 0; i < ours.size(); ++i) {
      if (std::memcmp(&ours[i], &c.y[i], 4) != 0 && ++mismatches <= 3) {
        ADD_FAILURE() << c.name << " element " << i << ": ours " << ours[i] << ", ggml " << c.y[i];
      }
    }
    EXPECT_EQ(mismatches, 0) << c.name;
  }
}

// Byte for byte: the quantizers are ggml's reference algorithms, compiled (as the fixture's ggml
// was) without fma contraction.
TEST(QuantGgml, QuantizeEqualsGgml) {
  for (const GgmlCase& c : Cases()) {
    const WeightFormat f = FormatOf(c);
    std::vector<uint8_t> ours(c.bytes.size());
    QuantizeRow(f, c.x.data(), static_cast<int64_t>(c.x.size()), ours.data());
    const size_t block = static_cast<size_t>(Traits(f).block_bytes);
    int bad_blocks = 0;
    for (size_t b = 0; b < ours.size() / block; ++b) {
      if (std::memcmp(ours.data() + b * block, c.bytes.data() + b * block, block) != 0 &&
          ++bad_blocks <= 3) {
        ADD_FAILURE() << c.name << " block " << b << " differs from ggml's";
      }
    }
    EXPECT_EQ(bad_blocks, 0) << c.name;
  }
}

// Each weight format's dot product (the table's scalar twin, and MatMul at this CPU's level)
// against the double-precision sum of ggml's dequantized weights times the dequantized
// activations. The twin rounds each block's scale product and partial sums (at most 3 roundings
// per block, plus the accumulation: (blocks + 3) roundings of at most 2^-24 of the running
// magnitude), and ggml's dequantized y rounds d*q (+ m) once or twice; so against
// S = sum_i (|y_i| + m_i) |a_i|, with m_i the largest |y| of i's block (a bound on the block's
// offset term), the error is below (blocks + 8) * 2^-23 * S. A wrong element order or bit
// position errs by a sizeable fraction of sum |y_i a_i|.
TEST(QuantGgml, DotProductsMatchDoubleSums) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const GgmlCase& c : Cases()) {
    const WeightFormat f = FormatOf(c);
    const FormatTraits& t = Traits(f);
    if (!t.weight) continue;
    const auto n = static_cast<int64_t>(c.x.size());
    std::vector<float> act(c.x.size());
    for (float& v : act) v = normal(rng);
    std::vector<uint8_t> qa(QuantRowBytes(t.activation, n));
    QuantizeRow(t.activation, act.data(), n, qa.data());
    std::vector<float> a(act.size());
    DequantizeRow(t.activation, qa.data(), n, a.data());
    double exact = 0;
    double magnitude = 0;
    for (int64_t b = 0; b < n / t.block_size; ++b) {
      double block_max = 0;
      for (int64_t i = b * t.block_size; i < (b + 1) * t.block_size; ++i) {
        block_max = std::max(block_max, std::fabs(static_cast<double>(c.y[i])));
      }
      for (int64_t i = b * t.block_size; i < (b + 1) * t.block_size; ++i) {
        exact += static_cast<double>(c.y[i]) * a[i];
        magnitude += (std::fabs(static_cast<double>(c.y[i])) + block_max) * std::fabs(a[i]);
      }
    }
    const double blocks = static_cast<double>(n / t.block_size);
    const double bound = (blocks + 8) * std::ldexp(1.0, -23) * magnitude;
    const float twin = t.dot(c.bytes.data(), qa.data(), n);
    EXPECT_NEAR(twin, exact, bound) << c.name << " scalar twin";

    // MatMul (whatever kernel this CPU's level picks) on two copies of the row.
    std::vector<uint8_t> matrix(c.bytes);
    matrix.insert(matrix.end(), c.bytes.begin(), c.bytes.end());
    const WeightMatrix w{f, matrix.data(), 2, n, WeightLayout::kRows};
    float out[2];
    MatMul(w, act.data(), 1, out);
    EXPECT_NEAR(out[0], exact, bound) << c.name << " MatMul";
    EXPECT_EQ(out[0], out[1]) << c.name;
  }
}

// Bad row lengths are errors, not reads past the row.
TEST(QuantGgml, RowLengthsThatAreNotWholeBlocksAreRefused) {
  for (const FormatTraits& t : AllFormats()) {
    if (!t.quantized) continue;
    std::vector<float> x(static_cast<size_t>(t.block_size) + 1);
    std::vector<uint8_t> out(static_cast<size_t>(2 * t.block_bytes));
    EXPECT_THROW(QuantizeRow(t.format, x.data(), t.block_size + 1, out.data()), Error) << t.name;
    EXPECT_THROW(DequantizeRow(t.format, out.data(), t.block_size - 1, x.data()), Error) << t.name;
  }
}

}  // namespace
}  // namespace starling
