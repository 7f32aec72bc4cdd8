// Q4_0 interleaved eight rows at a time: the repacking keeps every value, the scalar dot
// products agree with double-precision sums, the AVX2 kernel returns the scalar twin's bits for
// every tile shape, and MatMul over the interleaved layout agrees with the row-major one.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr double kUnit = 1.0 / (1 << 24);  // float's unit roundoff

// `rows` Q4_0 rows of n columns from random bytes: every nibble occurs, fp16 scales in
// [2^-12, 2^4).
Bytes RandomQ4_0(int64_t rows, int64_t n, std::mt19937& rng) {
  Bytes w(QuantRowBytes(QuantType::kQ4_0, n) * rows);
  std::uniform_int_distribution<int> byte(0, 255), half(0x0C00, 0x4BFF);
  for (auto& b : w) b = static_cast<uint8_t>(byte(rng));
  for (size_t p = 0; p < w.size(); p += sizeof(BlockQ4_0)) {
    const auto d = static_cast<uint16_t>(half(rng));
    std::memcpy(&w[p], &d, 2);
  }
  return w;
}

// Q8_0 activation rows with quants anywhere in [-128, 127] (the kernel's whole contract).
Bytes RandomQ8_0(int64_t rows, int64_t n, std::mt19937& rng) {
  Bytes a(QuantRowBytes(QuantType::kQ8_0, n) * rows);
  std::uniform_int_distribution<int> byte(0, 255), half(0x0C00, 0x4BFF);
  for (auto& b : a) b = static_cast<uint8_t>(byte(rng));
  for (size_t p = 0; p < a.size(); p += sizeof(BlockQ8_0)) {
    const auto d = static_cast<uint16_t>(half(rng));
    std::memcpy(&a[p], &d, 2);
  }
  return a;
}

Bytes Repack(const Bytes& w, int64_t rows, int64_t n) {
  Bytes out(static_cast<size_t>(Q4_0x8BlockCount(rows, n)) * sizeof(BlockQ4_0x8), 0xAA);
  RepackQ4_0x8(w.data(), rows, n, out.data());
  return out;
}

std::vector<Q8_0BlockTerms> Terms(const Bytes& a, int64_t tokens, int64_t n) {
  const int64_t blocks = n / 32;
  std::vector<Q8_0BlockTerms> terms(static_cast<size_t>(blocks * tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    ComputeQ8_0BlockTerms(&a[t * QuantRowBytes(QuantType::kQ8_0, n)], n, &terms[t * blocks]);
  }
  return terms;
}

TEST(Q4_0x8, RepackKeepsEveryValueAndPadsWithZeroRows) {
  std::mt19937 rng(5);
  for (int64_t rows : {1, 7, 8, 9, 16, 21}) {
    const int64_t n = 96;
    const Bytes w = RandomQ4_0(rows, n, rng);
    const Bytes packed = Repack(w, rows, n);
    std::vector<float> want(n), got(n);
    const int64_t padded = (rows + 7) / 8 * 8;
    for (int64_t r = 0; r < padded; ++r) {
      DequantizeRowQ4_0x8(packed.data(), r, n, got.data());
      if (r < rows) {
        DequantizeRow(QuantType::kQ4_0, &w[r * QuantRowBytes(QuantType::kQ4_0, n)], n, want.data());
      } else {
        std::fill(want.begin(), want.end(), -0.0f);  // scale 0 times the nibble 0 - 8
      }
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
            << "rows=" << rows << " row " << r << " element " << i;
      }
    }
  }
}

TEST(Q4_0x8, BlockTermsAreScaleAndMinusEightTimesTheSum) {
  std::mt19937 rng(6);
  const Bytes a = RandomQ8_0(1, 64, rng);
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

// Scalar twin against the exact sum in double: sum_b d_w d_a sumi_b, with the products' error
// bounded by (blocks + 2) * 2^-24 * sum_b |d_w d_a sumi_b| (each block's scale rounded once,
// then `blocks` fma additions, first order).
TEST(Q4_0x8, ScalarDotsMatchDoubleSumsAndTheRowDot) {
  std::mt19937 rng(7);
  for (int64_t n : {32, 256, 4096}) {
    const int64_t rows = 11, tokens = 3, blocks = n / 32;
    const Bytes w = RandomQ4_0(rows, n, rng);
    const Bytes a = RandomQ8_0(tokens, n, rng);
    const Bytes packed = Repack(w, rows, n);
    const auto terms = Terms(a, tokens, n);
    const size_t a_stride = QuantRowBytes(QuantType::kQ8_0, n);
    std::vector<float> out(rows * tokens);
    DotsQ4_0x8Q8_0(packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n, out.data(),
                   rows);
    for (int64_t r = 0; r < rows; ++r) {
      const auto* x =
          reinterpret_cast<const BlockQ4_0*>(&w[r * QuantRowBytes(QuantType::kQ4_0, n)]);
      for (int64_t t = 0; t < tokens; ++t) {
        const auto* y = reinterpret_cast<const BlockQ8_0*>(&a[t * a_stride]);
        double exact = 0, magnitude = 0;
        for (int64_t b = 0; b < blocks; ++b) {
          int64_t sumi = 0;
          for (int j = 0; j < 16; ++j) {
            sumi +=
                ((x[b].qs[j] & 15) - 8) * y[b].qs[j] + ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
          }
          const double term =
              double{HalfToFloat(x[b].d)} * HalfToFloat(y[b].d) * static_cast<double>(sumi);
          exact += term;
          magnitude += std::fabs(term);
        }
        const double bound = static_cast<double>(blocks + 2) * kUnit * magnitude;
        EXPECT_NEAR(out[t * rows + r], exact, bound) << "n=" << n << " row " << r << " token " << t;
        // The row-major product (mul then add per block) within the same kind of bound.
        EXPECT_NEAR(out[t * rows + r], DotQ4_0Q8_0(x, y, n), 2 * bound);
      }
    }
  }
}

TEST(Q4_0x8, Avx2DotsEqualScalarBitsForEveryTileShape) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  std::mt19937 rng(8);
  for (int64_t n : {32, 96, 288}) {
    for (int64_t rows = 1; rows <= 17; ++rows) {
      for (int64_t tokens = 1; tokens <= 9; ++tokens) {
        const Bytes packed = Repack(RandomQ4_0(rows, n, rng), rows, n);
        const size_t a_stride = QuantRowBytes(QuantType::kQ8_0, n);
        const Bytes a = RandomQ8_0(tokens, n, rng);
        const auto terms = Terms(a, tokens, n);
        const int64_t out_stride = rows + 3;
        std::vector<float> want(out_stride * tokens, -1.0f), got(out_stride * tokens, -1.0f);
        DotsQ4_0x8Q8_0(packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n,
                       want.data(), out_stride);
        DotsQ4_0x8Q8_0_Avx2(packed.data(), rows, a.data(), a_stride, terms.data(), tokens, n,
                            got.data(), out_stride);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
              << "n=" << n << " rows=" << rows << " tokens=" << tokens << " output " << i
              << (static_cast<int64_t>(i) % out_stride >= rows ? " (outside the outputs)" : "");
        }
      }
    }
  }
}

// MatMul over the interleaved layout against the row-major layout: the same activation
// quantization, per block only the fma instead of mul + add, so within twice the Dot bound.
TEST(Q4_0x8, MatMulOverInterleavedLayoutMatchesRowLayout) {
  std::mt19937 rng(9);
  const int64_t rows = 77, n = 256;  // a partial last group; 70 tokens cross a token block
  std::vector<float> weights(rows * n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : weights) v = normal(rng);
  Bytes w(QuantRowBytes(QuantType::kQ4_0, n) * rows);
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(QuantType::kQ4_0, &weights[r * n], n, &w[r * QuantRowBytes(QuantType::kQ4_0, n)]);
  }
  const WeightMatrix row_major{WeightFormat::kQ4_0, w.data(), rows, n};
  ASSERT_TRUE(HasFasterLayout(row_major));
  std::vector<uint8_t> buffer;
  const WeightMatrix interleaved = ToFasterLayout(row_major, buffer);
  EXPECT_EQ(interleaved.layout, WeightLayout::kInterleaved8);
  EXPECT_FALSE(HasFasterLayout(interleaved));
  for (int64_t tokens : {1, 5, 70}) {
    std::vector<float> x(tokens * n);
    for (float& v : x) v = normal(rng);
    std::vector<float> want(tokens * rows), got(tokens * rows);
    MatMul(row_major, x.data(), tokens, want.data());
    MatMul(interleaved, x.data(), tokens, got.data());
    for (size_t i = 0; i < got.size(); ++i) {
      // |terms| are ~ |w| |x| ~ 1 each over n = 256 products: 1e-4 leaves ~50x headroom over
      // (blocks + 2) * 2^-24 * sum |terms|.
      ASSERT_NEAR(got[i], want[i], 1e-4 * (1.0 + std::fabs(want[i])))
          << "tokens=" << tokens << " at " << i;
    }
    std::vector<float> row(n);
    ReadRow(interleaved, rows - 1, row.data());
    std::vector<float> stored(n);
    ReadRow(row_major, rows - 1, stored.data());
    EXPECT_EQ(row, stored);
  }
}

}  // namespace
}  // namespace starling
