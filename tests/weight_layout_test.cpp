// The layouts matrices are loaded into for the matmul. Q4_0, Q8_0, Q4_1, Q5_0 and Q5_1
// interleaved eight rows at a time: the repacking keeps every value, the scalar dot products agree
// with double-precision sums, the AVX2 kernels return the scalar twins' bits for every tile shape,
// and MatMul over the interleaved layout agrees with the row-major one. The K-quants: interleaved
// too.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "kernels/dot.h"
#include "kernels/kernels.h"
#include "quant/format.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr double kUnit = 1.0 / (1 << 24);  // float's unit roundoff

// The vector levels, in the order of each format's `fast` kernels.
constexpr SimdLevel kVectorLevels[] = {SimdLevel::kAvx2, SimdLevel::kAvxVnni, SimdLevel::kAvx512};

// An interleaved format and its functions.
struct Interleaved {
  WeightFormat format;
  WeightFormat type;
  void (*repack)(const void*, int64_t, int64_t, void*);
  void (*dequantize_row)(const void*, int64_t, int64_t, float*);
  using Dots = void (*)(const void*, int64_t, const void*, size_t, const Q8_0BlockTerms*, int64_t,
                        int64_t, float*, int64_t);
  Dots dots;
  Dots fast[3];                                         // at kVectorLevels
  float (*row_dot)(const void*, const void*, int64_t);  // the row-major product
};
const Interleaved kFormats[] = {
    {WeightFormat::kQ4_0,
     WeightFormat::kQ4_0,
     RepackQ4_0x8,
     DequantizeRowQ4_0x8,
     DotsQ4_0x8Q8_0,
     {DotsQ4_0x8Q8_0_Avx2, DotsQ4_0x8Q8_0_AvxVnni, DotsQ4_0x8Q8_0_Avx512Vnni},
     DotQ4_0Q8_0},
    {WeightFormat::kQ8_0,
     WeightFormat::kQ8_0,
     RepackQ8_0x8,
     DequantizeRowQ8_0x8,
     DotsQ8_0x8Q8_0,
     {DotsQ8_0x8Q8_0_Avx2, DotsQ8_0x8Q8_0_AvxVnni, DotsQ8_0x8Q8_0_Avx512Vnni},
     DotQ8_0Q8_0},
    {WeightFormat::kQ4_1,
     WeightFormat::kQ4_1,
     RepackQ4_1x8,
     DequantizeRowQ4_1x8,
     DotsQ4_1x8Q8_0,
     {DotsQ4_1x8Q8_0_Avx2, DotsQ4_1x8Q8_0_AvxVnni, DotsQ4_1x8Q8_0_Avx512Vnni},
     DotQ4_1Q8_0},
    {WeightFormat::kQ5_0,
     WeightFormat::kQ5_0,
     RepackQ5_0x8,
     DequantizeRowQ5_0x8,
     DotsQ5_0x8Q8_0,
     {DotsQ5_0x8Q8_0_Avx2, DotsQ5_0x8Q8_0_AvxVnni, DotsQ5_0x8Q8_0_Avx512Vnni},
     DotQ5_0Q8_0},
    {WeightFormat::kQ5_1,
     WeightFormat::kQ5_1,
     RepackQ5_1x8,
     DequantizeRowQ5_1x8,
     DotsQ5_1x8Q8_0,
     {DotsQ5_1x8Q8_0_Avx2, DotsQ5_1x8Q8_0_AvxVnni, DotsQ5_1x8Q8_0_Avx512Vnni},
     DotQ5_1Q8_0}};

// Q4_1 and Q5_1 keep an fp16 min after d.
bool HasMin(WeightFormat type) {
  return type == WeightFormat::kQ4_1 || type == WeightFormat::kQ5_1;
}

// Q4_0 and Q8_0 add one fma per block; the others perform the row-major product's float
// operations and so return its bits.
bool FusesTheBlockTerm(WeightFormat type) {
  return type == WeightFormat::kQ4_0 || type == WeightFormat::kQ8_0;
}

// `rows` rows of n columns from random bytes: every quant occurs (weights: any byte, -128 for
// Q8_0 included; activations: [-127, 127], the kernels' contract), fp16 scales (and mins) in
// [2^-12, 2^4).
Bytes RandomRows(WeightFormat type, int64_t rows, int64_t n, std::mt19937& rng,
                 bool activation = false) {
  Bytes w(QuantRowBytes(type, n) * rows);
  std::uniform_int_distribution<int> byte(0, 255), quant(-127, 127), half(0x0C00, 0x4BFF);
  for (auto& b : w) b = static_cast<uint8_t>(activation ? quant(rng) : byte(rng));
  for (size_t p = 0; p < w.size(); p += QuantBlockBytes(type)) {
    for (size_t at = 0; at < (!activation && HasMin(type) ? 4u : 2u); at += 2) {
      const auto d = static_cast<uint16_t>(half(rng));
      std::memcpy(&w[p + at], &d, 2);
    }
  }
  return w;
}

Bytes Repack(const Interleaved& f, const Bytes& w, int64_t rows, int64_t n) {
  Bytes out(static_cast<size_t>(InterleavedBlockCount(rows, n)) * 8 * QuantBlockBytes(f.type),
            0xAA);
  f.repack(w.data(), rows, n, out.data());
  return out;
}

std::vector<Q8_0BlockTerms> Terms(const Bytes& a, int64_t tokens, int64_t n) {
  const int64_t blocks = n / 32;
  std::vector<Q8_0BlockTerms> terms(static_cast<size_t>(blocks * tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    ComputeQ8_0BlockTerms(&a[t * QuantRowBytes(WeightFormat::kQ8_0, n)], n, &terms[t * blocks]);
  }
  return terms;
}

TEST(WeightLayout, RepackKeepsEveryValueAndPadsWithZeroRows) {
  std::mt19937 rng(5);
  for (const Interleaved& f : kFormats) {
    for (int64_t rows : {1, 7, 8, 9, 16, 21}) {
      const int64_t n = 96;
      const Bytes w = RandomRows(f.type, rows, n, rng);
      const Bytes packed = Repack(f, w, rows, n);
      std::vector<float> want(n), got(n);
      const int64_t padded = (rows + 7) / 8 * 8;
      for (int64_t r = 0; r < padded; ++r) {
        f.dequantize_row(packed.data(), r, n, got.data());
        if (r < rows) {
          DequantizeRow(f.type, &w[r * QuantRowBytes(f.type, n)], n, want.data());
        } else {
          // Scale 0 times quant 0 (Q8_0), nibble 0 - 8 (Q4_0) or 0 - 16 (Q5_0); 0 * 0 + 0.
          const bool negative = f.type == WeightFormat::kQ4_0 || f.type == WeightFormat::kQ5_0;
          std::fill(want.begin(), want.end(), negative ? -0.0f : 0.0f);
        }
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
              << WeightFormatName(f.type) << " rows=" << rows << " row " << r << " element " << i;
        }
      }
    }
  }
}

TEST(WeightLayout, BlockTermsAreScaleAndMinusEightTimesTheSum) {
  std::mt19937 rng(6);
  const Bytes a = RandomRows(WeightFormat::kQ8_0, 1, 64, rng, true);
  Q8_0BlockTerms terms[2];
  ComputeQ8_0BlockTerms(a.data(), 64, terms);
  for (int b = 0; b < 2; ++b) {
    const auto& block = reinterpret_cast<const BlockQ8_0*>(a.data())[b];
    int sum = 0;
    for (int8_t q : block.qs) sum += q;
    EXPECT_EQ(terms[b].d, HalfToFloat(block.d));
    EXPECT_EQ(terms[b].offset, -8 * sum);
  }
}

// Scalar twins against the exact sum in double: sum_b d_w d_a sumi_b, with the products'
// error bounded by (blocks + 2) * 2^-24 * sum_b |d_w d_a sumi_b| (each block's scale rounded
// once, then `blocks` fma additions, first order). The exact sum comes from the dequantized
// rows: d_w q_w[i] and d_a q_a[i] are exact floats, their products exact in double. With a
// min (Q4_1, Q5_1) a dequantized weight q d + m is rounded once and the block has two terms,
// sumi d d_a and suma m d_a, so the magnitude is sum_i (|w_i| + 2 |m|) |a_i| (>= sum_i (|q_i
// d| + |m|) |a_i|), with 2 * blocks + 3 roundings.
TEST(WeightLayout, ScalarDotsMatchDoubleSumsAndTheRowDot) {
  std::mt19937 rng(7);
  for (const Interleaved& f : kFormats) {
    for (int64_t n : {32, 256, 4096}) {
      const int64_t rows = 11, tokens = 3, blocks = n / 32;
      const Bytes w = RandomRows(f.type, rows, n, rng);
      const Bytes a = RandomRows(WeightFormat::kQ8_0, tokens, n, rng, true);
      const Bytes packed = Repack(f, w, rows, n);
      const auto terms = Terms(a, tokens, n);
      const size_t w_stride = QuantRowBytes(f.type, n),
                   a_stride = QuantRowBytes(WeightFormat::kQ8_0, n);
      std::vector<float> out(rows * tokens);
      f.dots(packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n, out.data(), rows);
      std::vector<float> wr(n), ar(n);
      for (int64_t r = 0; r < rows; ++r) {
        DequantizeRow(f.type, &w[r * w_stride], n, wr.data());
        for (int64_t t = 0; t < tokens; ++t) {
          DequantizeRow(WeightFormat::kQ8_0, &a[t * a_stride], n, ar.data());
          double exact = 0, magnitude = 0;
          for (int64_t b = 0; b < blocks; ++b) {
            double term = 0, min_magnitude = 0;
            const uint8_t* block = &w[r * w_stride + b * QuantBlockBytes(f.type)];
            const double m = HasMin(f.type) ? std::fabs(HalfToFloat(block[2] | block[3] << 8)) : 0;
            for (int64_t i = 32 * b; i < 32 * b + 32; ++i) {
              term += double{wr[i]} * ar[i];
              min_magnitude += (std::fabs(wr[i]) + 2 * m) * std::fabs(ar[i]);
            }
            exact += term;
            magnitude += HasMin(f.type) ? min_magnitude : std::fabs(term);
          }
          const auto roundings = static_cast<double>(HasMin(f.type) ? 2 * blocks + 3 : blocks + 2);
          const double bound = roundings * kUnit * magnitude;
          const float got = out[t * rows + r];
          EXPECT_NEAR(got, exact, bound)
              << WeightFormatName(f.type) << " n=" << n << " row " << r << " token " << t;
          // The row-major product (mul then add per block): within the same kind of bound
          // (Q4_0, Q8_0), or its bits.
          const float row_dot = f.row_dot(&w[r * w_stride], &a[t * a_stride], n);
          if (FusesTheBlockTerm(f.type)) {
            EXPECT_NEAR(got, row_dot, 2 * bound);
          } else {
            EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(row_dot))
                << WeightFormatName(f.type) << " n=" << n << " row " << r << " token " << t;
          }
        }
      }
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

TEST(WeightLayout, VectorDotsEqualScalarBitsForEveryTileShape) {
  if (!CpuHasSimdLevel(SimdLevel::kAvx2)) GTEST_SKIP() << "no AVX2/FMA/F16C";
  std::mt19937 rng(8);
  for (int level = 0; level < 3; ++level) {
    if (!CpuHasSimdLevel(kVectorLevels[level])) continue;
    for (const Interleaved& f : kFormats) {
      for (int64_t n : {32, 96, 288}) {
        for (int64_t rows : TileShapeRows()) {
          for (int64_t tokens = 1; tokens <= 9; ++tokens) {
            const Bytes packed = Repack(f, RandomRows(f.type, rows, n, rng), rows, n);
            const size_t a_stride = QuantRowBytes(WeightFormat::kQ8_0, n);
            const Bytes a = RandomRows(WeightFormat::kQ8_0, tokens, n, rng, true);
            const auto terms = Terms(a, tokens, n);
            const int64_t out_stride = rows + 3;
            std::vector<float> want(out_stride * tokens, -1.0f), got(out_stride * tokens, -1.0f);
            f.dots(packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n, want.data(),
                   out_stride);
            f.fast[level](packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n,
                          got.data(), out_stride);
            for (size_t i = 0; i < got.size(); ++i) {
              ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
                  << SimdLevelName(kVectorLevels[level]) << " " << WeightFormatName(f.type)
                  << " n=" << n << " rows=" << rows << " tokens=" << tokens << " output " << i
                  << (static_cast<int64_t>(i) % out_stride >= rows ? " (outside the outputs)" : "");
            }
          }
        }
      }
    }
  }
}

// The vector kernels' integer sums at their bounds (AVX2's int16 pair sums): every weight byte
// 0xFF (nibbles 15, fifth bits set: u5 = 31; Q8_0: -1) with scales (and mins) 1, all
// activations 127 or -127.
TEST(WeightLayout, VectorDotsAreExactAtTheExtremes) {
  if (!CpuHasSimdLevel(SimdLevel::kAvx2)) GTEST_SKIP() << "no AVX2/FMA/F16C";
  const int64_t rows = 8, tokens = 2, n = 128;
  for (const Interleaved& f : kFormats) {
    for (const int8_t extreme : {int8_t{127}, int8_t{-127}}) {
      Bytes w(QuantRowBytes(f.type, n) * rows, 0xFF);
      for (size_t p = 0; p < w.size(); p += QuantBlockBytes(f.type)) {
        const uint16_t one = 0x3C00;
        std::memcpy(&w[p], &one, 2);
        if (HasMin(f.type)) std::memcpy(&w[p + 2], &one, 2);
      }
      std::vector<BlockQ8_0> a(tokens * n / 32);
      for (BlockQ8_0& b : a) {
        b.d = 0x3C00;
        std::fill(std::begin(b.qs), std::end(b.qs), extreme);
      }
      const size_t a_stride = QuantRowBytes(WeightFormat::kQ8_0, n);
      const Bytes a_bytes(reinterpret_cast<const uint8_t*>(a.data()),
                          reinterpret_cast<const uint8_t*>(a.data() + a.size()));
      const auto terms = Terms(a_bytes, tokens, n);
      const Bytes packed = Repack(f, w, rows, n);
      std::vector<float> want(rows * tokens), got(rows * tokens);
      f.dots(packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n, want.data(), rows);
      for (int level = 0; level < 3; ++level) {
        if (!CpuHasSimdLevel(kVectorLevels[level])) continue;
        f.fast[level](packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n, got.data(),
                      rows);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
              << SimdLevelName(kVectorLevels[level]) << " " << WeightFormatName(f.type) << " "
              << int{extreme} << " output " << i;
        }
      }
      if (!FusesTheBlockTerm(f.type)) {
        EXPECT_EQ(want[0], f.row_dot(w.data(), a.data(), n));
      }
    }
  }
}

// MatMul over the interleaved layout against the row-major layout: the same activation
// quantization, per block only the fma instead of mul + add, so within twice the Dot bound.
TEST(WeightLayout, MatMulOverInterleavedLayoutMatchesRowLayout) {
  std::mt19937 rng(9);
  const int64_t rows = 77, n = 256;  // a partial last group; 70 tokens cross a token block
  std::vector<float> weights(rows * n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : weights) v = normal(rng);
  for (const Interleaved& f : kFormats) {
    const size_t row_bytes = QuantRowBytes(f.type, n);
    Bytes w(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r) QuantizeRow(f.type, &weights[r * n], n, &w[r * row_bytes]);
    const WeightMatrix row_major{f.format, w.data(), rows, n};
    ASSERT_TRUE(LoadsForMatMul(row_major));
    HugePageBuffer buffer;
    const WeightMatrix interleaved = LoadForMatMul(row_major, buffer);
    EXPECT_EQ(interleaved.layout, WeightLayout::kInterleaved8);
    EXPECT_FALSE(LoadsForMatMul(interleaved));
    for (int64_t tokens : {1, 5, 70}) {
      std::vector<float> x(tokens * n);
      for (float& v : x) v = normal(rng);
      std::vector<float> want(tokens * rows), got(tokens * rows);
      MatMul(row_major, x.data(), tokens, want.data());
      MatMul(interleaved, x.data(), tokens, got.data());
      for (size_t i = 0; i < got.size(); ++i) {
        // |terms| are ~ |w| |x| ~ 1 each over n = 256 products: 1e-4 leaves ~50x headroom
        // over (blocks + 2) * 2^-24 * sum |terms|.
        ASSERT_NEAR(got[i], want[i], 1e-4 * (1.0 + std::fabs(want[i])))
            << WeightFormatName(f.type) << " tokens=" << tokens << " at " << i;
        if (!FusesTheBlockTerm(f.type)) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
              << WeightFormatName(f.type) << " tokens=" << tokens << " at " << i;
        }
      }
    }
    std::vector<float> row(n), stored(n);
    ReadRow(interleaved, rows - 1, row.data());
    ReadRow(row_major, rows - 1, stored.data());
    EXPECT_EQ(row, stored);
  }
}

// The K-quants are interleaved at every SIMD level (BlockQ2_Kx8 ... BlockQ6_Kx8; their own tests
// are in quant_interleaved_k_test.cpp), with MatMul's bits unchanged.
TEST(WeightLayout, KQuantsAreInterleavedWithTheSameMatMulBits) {
  std::mt19937 rng(10);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 300, n = 512, tokens = 3;  // rows: more than one thread's share
  std::vector<float> x(tokens * n), weights(rows * n);
  for (float& v : x) v = normal(rng);
  for (float& v : weights) v = normal(rng);
  for (const WeightFormat format : {WeightFormat::kQ2_K, WeightFormat::kQ3_K, WeightFormat::kQ4_K,
                                    WeightFormat::kQ5_K, WeightFormat::kQ6_K}) {
    const WeightFormat type = format;
    const size_t row_bytes = QuantRowBytes(type, n);
    Bytes w(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r) QuantizeRow(type, &weights[r * n], n, &w[r * row_bytes]);
    const WeightMatrix stored{format, w.data(), rows, n};
    ASSERT_TRUE(LoadsForMatMul(stored));
    HugePageBuffer buffer;
    const WeightMatrix loaded = LoadForMatMul(stored, buffer);
    EXPECT_EQ(loaded.layout, WeightLayout::kInterleaved8);
    // 300 rows: 37.5 groups, the last padded to 8 rows.
    EXPECT_EQ(buffer.size(), 38 * 8 * row_bytes);
    std::vector<float> want(tokens * rows), got(tokens * rows);
    MatMul(stored, x.data(), tokens, want.data());
    MatMul(loaded, x.data(), tokens, got.data());
    EXPECT_EQ(got, want) << WeightFormatName(format);
  }
  const WeightMatrix dense{WeightFormat::kF16, nullptr, 1, 8};
  EXPECT_FALSE(LoadsForMatMul(dense));  // dense matrices stay memory-mapped
}

// Every block format of the format table loads into an interleaved layout, reads back its rows
// and multiplies (the layout table in weight.cpp has a row for each).
TEST(WeightLayout, EveryBlockFormatIsInterleaved) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 9, n = 256;
  std::vector<float> weights(rows * n), x(n);
  for (float& v : weights) v = normal(rng);
  for (float& v : x) v = normal(rng);
  for (const FormatTraits& f : AllFormats()) {
    if (!f.quantized || !f.weight) continue;
    const size_t row_bytes = QuantRowBytes(f.format, n);
    Bytes w(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(f.format, &weights[r * n], n, &w[r * row_bytes]);
    }
    const WeightMatrix stored{f.format, w.data(), rows, n};
    HugePageBuffer buffer;
    const WeightMatrix loaded = LoadForMatMul(stored, buffer);
    EXPECT_EQ(loaded.layout, WeightLayout::kInterleaved8) << f.name;
    std::vector<float> want(rows), got(rows), row(n), stored_row(n);
    MatMul(stored, x.data(), 1, want.data());
    MatMul(loaded, x.data(), 1, got.data());
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_NEAR(got[r], want[r], 1e-4 * (1.0 + std::fabs(want[r]))) << f.name << " row " << r;
      ReadRow(loaded, r, row.data());
      ReadRow(stored, r, stored_row.data());
      EXPECT_EQ(row, stored_row) << f.name << " row " << r;
    }
  }
}

}  // namespace
}  // namespace starling
