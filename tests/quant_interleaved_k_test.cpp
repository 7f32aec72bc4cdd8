// The K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) interleaved eight rows at a time (BlockQ2_Kx8, ...):
// the repacking keeps every value (dequantized rows have DequantizeRow's bits, padding rows are
// zero), the scalar twins return the row-major dots' bits on the original rows, the vector kernels
// (every level) the scalar twins' bits for every tile shape, and MatMul over LoadForMatMul's copy
// the bits of MatMul over the row-major matrix.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/dot.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

using Bytes = std::vector<uint8_t>;

// The vector levels, in the order of each format's `fast` kernels.
constexpr SimdLevel kVectorLevels[] = {SimdLevel::kAvx2, SimdLevel::kAvxVnni, SimdLevel::kAvx512};

// An interleaved K-quant format and its functions.
struct Format {
  WeightFormat format;
  WeightFormat type;
  void (*repack)(const void*, int64_t, int64_t, void*);
  void (*dequantize_row)(const void*, int64_t, int64_t, float*);
  using Dots = void (*)(const void*, int64_t, const void*, size_t, int64_t, int64_t, float*,
                        int64_t);
  Dots dots;
  Dots fast[3];                                         // at kVectorLevels
  float (*row_dot)(const void*, const void*, int64_t);  // the row-major product
};
const Format kFormats[] = {
    {WeightFormat::kQ2_K,
     WeightFormat::kQ2_K,
     RepackQ2_Kx8,
     DequantizeRowQ2_Kx8,
     DotsQ2_Kx8Q8_K,
     {DotsQ2_Kx8Q8_K_Avx2, DotsQ2_Kx8Q8_K_AvxVnni, DotsQ2_Kx8Q8_K_Avx512Vnni},
     DotQ2_KQ8_K},
    {WeightFormat::kQ3_K,
     WeightFormat::kQ3_K,
     RepackQ3_Kx8,
     DequantizeRowQ3_Kx8,
     DotsQ3_Kx8Q8_K,
     {DotsQ3_Kx8Q8_K_Avx2, DotsQ3_Kx8Q8_K_AvxVnni, DotsQ3_Kx8Q8_K_Avx512Vnni},
     DotQ3_KQ8_K},
    {WeightFormat::kQ4_K,
     WeightFormat::kQ4_K,
     RepackQ4_Kx8,
     DequantizeRowQ4_Kx8,
     DotsQ4_Kx8Q8_K,
     {DotsQ4_Kx8Q8_K_Avx2, DotsQ4_Kx8Q8_K_AvxVnni, DotsQ4_Kx8Q8_K_Avx512Vnni},
     DotQ4_KQ8_K},
    {WeightFormat::kQ5_K,
     WeightFormat::kQ5_K,
     RepackQ5_Kx8,
     DequantizeRowQ5_Kx8,
     DotsQ5_Kx8Q8_K,
     {DotsQ5_Kx8Q8_K_Avx2, DotsQ5_Kx8Q8_K_AvxVnni, DotsQ5_Kx8Q8_K_Avx512Vnni},
     DotQ5_KQ8_K},
    {WeightFormat::kQ6_K,
     WeightFormat::kQ6_K,
     RepackQ6_Kx8,
     DequantizeRowQ6_Kx8,
     DotsQ6_Kx8Q8_K,
     {DotsQ6_Kx8Q8_K_Avx2, DotsQ6_Kx8Q8_K_AvxVnni, DotsQ6_Kx8Q8_K_Avx512Vnni},
     DotQ6_KQ8_K}};

// Where a block keeps its fp16 scales (d, and dmin where it has one).
std::vector<size_t> HalfScaleOffsets(WeightFormat type) {
  switch (type) {
    case WeightFormat::kQ2_K: return {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)};
    case WeightFormat::kQ3_K: return {offsetof(BlockQ3_K, d)};
    case WeightFormat::kQ4_K: return {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)};
    case WeightFormat::kQ5_K: return {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)};
    case WeightFormat::kQ6_K: return {offsetof(BlockQ6_K, d)};
    default: ADD_FAILURE() << "no K-quant: " << WeightFormatName(type); return {};
  }
}

// `rows` weight rows of n columns from random bytes (every quant, scale and min byte occurs),
// with fp16 scales in [2^-12, 2^4) at the block's d (and dmin).
Bytes RandomRows(WeightFormat type, int64_t rows, int64_t n, std::mt19937& rng) {
  Bytes w(QuantRowBytes(type, n) * rows);
  std::uniform_int_distribution<int> byte(0, 255), half(0x0C00, 0x4BFF);
  for (auto& b : w) b = static_cast<uint8_t>(byte(rng));
  for (size_t p = 0; p < w.size(); p += QuantBlockBytes(type)) {
    for (const size_t at : HalfScaleOffsets(type)) {
      const auto d = static_cast<uint16_t>(half(rng));
      std::memcpy(&w[p + at], &d, 2);
    }
  }
  return w;
}

// Q8_K activation rows: quants in [-127, 127] (QuantizeRow's range), consistent bsums, scales
// of either sign.
Bytes RandomActivations(int64_t tokens, int64_t n, std::mt19937& rng) {
  std::vector<BlockQ8_K> blocks(static_cast<size_t>(tokens * n / 256));
  std::uniform_int_distribution<int> quant(-127, 127);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  for (BlockQ8_K& b : blocks) {
    b.d = scale(rng);
    for (auto& q : b.qs) q = static_cast<int8_t>(quant(rng));
    for (int k = 0; k < 16; ++k) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[16 * k + l];
      b.bsums[k] = static_cast<int16_t>(sum);
    }
  }
  Bytes out(blocks.size() * sizeof(BlockQ8_K));
  std::memcpy(out.data(), blocks.data(), out.size());
  return out;
}

Bytes Repack(const Format& f, const Bytes& w, int64_t rows, int64_t n) {
  // 0xAA: bytes the repacking leaves unwritten would show.
  Bytes out(static_cast<size_t>((rows + 7) / 8 * 8) * QuantRowBytes(f.type, n), 0xAA);
  f.repack(w.data(), rows, n, out.data());
  return out;
}

void ExpectSameBits(const std::vector<float>& got, const std::vector<float>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
        << what << " at " << i << ": " << got[i] << " vs " << want[i];
  }
}

TEST(QuantInterleavedK, RepackKeepsEveryValueAndPadsWithZeroRows) {
  std::mt19937 rng(1);
  for (const Format& f : kFormats) {
    for (int64_t rows = 1; rows <= 17; ++rows) {
      const int64_t n = 512;
      const Bytes w = RandomRows(f.type, rows, n, rng);
      const Bytes packed = Repack(f, w, rows, n);
      std::vector<float> want(n), got(n);
      for (int64_t r = 0; r < (rows + 7) / 8 * 8; ++r) {
        f.dequantize_row(packed.data(), r, n, got.data());
        if (r < rows) {
          DequantizeRow(f.type, &w[r * QuantRowBytes(f.type, n)], n, want.data());
        } else {
          // Zero bytes: Q2_K, Q4_K, Q5_K 0 * q - 0; Q6_K (0 * 0) * (0 - 32) = -0; Q3_K
          // (0 * -32) * (0 - 4) = 0.
          std::fill(want.begin(), want.end(), f.type == WeightFormat::kQ6_K ? -0.0f : 0.0f);
        }
        ExpectSameBits(got, want,
                       std::string(WeightFormatName(f.type)) + " rows=" + std::to_string(rows) +
                           " row " + std::to_string(r));
      }
    }
  }
}

TEST(QuantInterleavedK, ScalarDotsEqualTheRowDotBits) {
  std::mt19937 rng(2);
  for (const Format& f : kFormats) {
    for (int64_t n : {256, 1024, 4096}) {
      const int64_t rows = 11, tokens = 3;
      const Bytes w = RandomRows(f.type, rows, n, rng);
      const Bytes a = RandomActivations(tokens, n, rng);
      const Bytes packed = Repack(f, w, rows, n);
      const size_t w_stride = QuantRowBytes(f.type, n),
                   a_stride = QuantRowBytes(WeightFormat::kQ8_K, n);
      std::vector<float> got(rows * tokens), want(rows * tokens);
      f.dots(packed.data(), rows, a.data(), a_stride, tokens, n, got.data(), rows);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t t = 0; t < tokens; ++t) {
          want[t * rows + r] = f.row_dot(&w[r * w_stride], &a[t * a_stride], n);
        }
      }
      ExpectSameBits(got, want, std::string(WeightFormatName(f.type)) + " n=" + std::to_string(n));
    }
  }
}

// Every vector level this CPU has (AVX2; AVX-VNNI and AVX-512 VNNI where present).
// Row counts for the tile tests: every remainder of a group (1..17), and 41, 75 and 130 rows
// (6, 10 and 17 groups, partial last groups).
std::vector<int64_t> TileShapeRows() {
  std::vector<int64_t> rows;
  for (int64_t r = 1; r <= 17; ++r) rows.push_back(r);
  for (const int64_t r : {41, 75, 130}) rows.push_back(r);
  return rows;
}

TEST(QuantInterleavedK, VectorDotsEqualScalarBitsForEveryTileShape) {
  if (!CpuHasSimdLevel(SimdLevel::kAvx2)) GTEST_SKIP() << "no AVX2/FMA/F16C";
  std::mt19937 rng(3);
  for (int level = 0; level < 3; ++level) {
    if (!CpuHasSimdLevel(kVectorLevels[level])) continue;
    for (const Format& f : kFormats) {
      for (int64_t n : {256, 768}) {
        for (int64_t rows : TileShapeRows()) {
          for (int64_t tokens = 1; tokens <= 9; ++tokens) {
            const Bytes packed = Repack(f, RandomRows(f.type, rows, n, rng), rows, n);
            const Bytes a = RandomActivations(tokens, n, rng);
            const size_t a_stride = QuantRowBytes(WeightFormat::kQ8_K, n);
            const int64_t out_stride = rows + 3;  // outputs between rows stay untouched
            std::vector<float> want(out_stride * tokens, -1.0f), got(out_stride * tokens, -1.0f);
            f.dots(packed.data(), rows, a.data(), a_stride, tokens, n, want.data(), out_stride);
            f.fast[level](packed.data(), rows, a.data(), a_stride, tokens, n, got.data(),
                          out_stride);
            ExpectSameBits(got, want,
                           std::string(SimdLevelName(kVectorLevels[level])) + " " +
                               WeightFormatName(f.type) + " n=" + std::to_string(n) + " rows=" +
                               std::to_string(rows) + " tokens=" + std::to_string(tokens));
          }
        }
      }
    }
  }
}

// The vector kernels' integer sums at their bounds (AVX2's int16 sums, VNNI's int32 ones): all
// quants at their maximum (3, 7, 15, 31 or 63), all activations 127, -127 or -128 (outside
// QuantizeRow's range, but the bounds hold), all scales and mins at their maximum (Q6_K: -128).
TEST(QuantInterleavedK, VectorDotsAreExactAtTheExtremes) {
  if (!CpuHasSimdLevel(SimdLevel::kAvx2)) GTEST_SKIP() << "no AVX2/FMA/F16C";
  const int64_t rows = 8, tokens = 2, n = 256;
  for (const Format& f : kFormats) {
    for (const int8_t extreme : {int8_t{127}, int8_t{-127}, int8_t{-128}}) {
      Bytes w(QuantRowBytes(f.type, n) * rows, 0xFF);
      for (size_t p = 0; p < w.size(); p += QuantBlockBytes(f.type)) {
        const uint16_t one = 0x3C00;
        for (const size_t at : HalfScaleOffsets(f.type)) std::memcpy(&w[p + at], &one, 2);
        if (f.type == WeightFormat::kQ6_K) {
          std::fill(&w[p + offsetof(BlockQ6_K, scales)], &w[p + offsetof(BlockQ6_K, d)],
                    0x80);  // scales -128
        }
      }
      std::vector<BlockQ8_K> a(tokens);
      for (BlockQ8_K& b : a) {
        b.d = 1.0f;
        std::fill(std::begin(b.qs), std::end(b.qs), extreme);
        std::fill(std::begin(b.bsums), std::end(b.bsums), static_cast<int16_t>(16 * extreme));
      }
      const Bytes packed = Repack(f, w, rows, n);
      std::vector<float> want(rows * tokens), got(rows * tokens);
      f.dots(packed.data(), rows, a.data(), sizeof(BlockQ8_K), tokens, n, want.data(), rows);
      for (int level = 0; level < 3; ++level) {
        if (!CpuHasSimdLevel(kVectorLevels[level])) continue;
        f.fast[level](packed.data(), rows, a.data(), sizeof(BlockQ8_K), tokens, n, got.data(),
                      rows);
        ExpectSameBits(
            got, want,
            std::string(SimdLevelName(kVectorLevels[level])) + " " + WeightFormatName(f.type));
      }
      EXPECT_EQ(want[0], f.row_dot(w.data(), a.data(), n));
    }
  }
}

// MatMul over LoadForMatMul's interleaved copy against MatMul over the row-major matrix (the
// row-major kernels), bit for bit: generation (1 token), a few tokens, and more than a token
// block; rows with a partial last group and more than one thread's share.
TEST(QuantInterleavedK, MatMulOverInterleavedLayoutHasTheRowLayoutBits) {
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 203, n = 512;
  std::vector<float> weights(rows * n);
  for (float& v : weights) v = normal(rng);
  for (const Format& f : kFormats) {
    const size_t row_bytes = QuantRowBytes(f.type, n);
    Bytes w(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r) QuantizeRow(f.type, &weights[r * n], n, &w[r * row_bytes]);
    const WeightMatrix row_major{f.format, w.data(), rows, n};
    ASSERT_TRUE(LoadsForMatMul(row_major));
    HugePageBuffer buffer;
    const WeightMatrix interleaved = LoadForMatMul(row_major, buffer);
    ASSERT_EQ(interleaved.layout, WeightLayout::kInterleaved8);  // at every SIMD level
    EXPECT_FALSE(LoadsForMatMul(interleaved));
    EXPECT_EQ(buffer.size(), (rows + 7) / 8 * 8 * row_bytes);
    for (int64_t tokens : {1, 2, 5, 9, 70}) {
      std::vector<float> x(tokens * n);
      for (float& v : x) v = normal(rng);
      std::vector<float> want(tokens * rows), got(tokens * rows);
      MatMul(row_major, x.data(), tokens, want.data());
      MatMul(interleaved, x.data(), tokens, got.data());
      ExpectSameBits(got, want,
                     std::string(WeightFormatName(f.type)) + " tokens=" + std::to_string(tokens));
    }
    std::vector<float> row(n), stored(n);
    for (int64_t r = 0; r < rows; ++r) {
      ReadRow(interleaved, r, row.data());
      ReadRow(row_major, r, stored.data());
      ExpectSameBits(row, stored,
                     std::string(WeightFormatName(f.type)) + " ReadRow " + std::to_string(r));
    }
  }
}

}  // namespace
}  // namespace starling
