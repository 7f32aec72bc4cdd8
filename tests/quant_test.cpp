// Quantized block formats: byte layouts against hand-built blocks, the quantizers against ggml's
// reference formulas, round-trip error bounds, dot products against double-precision sums, and
// the AVX2 twins against the scalar ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/dot.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr double kUnit = 1.0 / (1 << 24);  // float's unit roundoff, 2^-24

Bytes Quantize(WeightFormat type, const std::vector<float>& x) {
  Bytes out(QuantRowBytes(type, static_cast<int64_t>(x.size())));
  QuantizeRow(type, x.data(), static_cast<int64_t>(x.size()), out.data());
  return out;
}

std::vector<float> Dequantize(WeightFormat type, const Bytes& q, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  DequantizeRow(type, q.data(), n, out.data());
  return out;
}

void PutHalf(uint8_t* p, uint16_t bits) {  // little-endian, as in the files
  p[0] = static_cast<uint8_t>(bits & 0xFF);
  p[1] = static_cast<uint8_t>(bits >> 8);
}

uint16_t GetHalf(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | p[1] << 8);
}

// Rows whose 32-element blocks have magnitudes spread over three decades (so fp16 scales of very
// different sizes occur), with occasional outliers, as real weights and activations have.
std::vector<float> RandomRow(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> decade(-1.5f, 1.5f);
  std::uniform_int_distribution<int> pick(0, 63);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t b = 0; b < n; b += 32) {
    const float scale = std::pow(10.0f, decade(rng));
    for (int64_t i = b; i < b + 32; ++i) {
      x[i] = normal(rng) * scale * (pick(rng) == 0 ? 8.0f : 1.0f);
    }
  }
  return x;
}

// Index of the first differing byte, or -1.
int64_t FirstMismatch(const Bytes& a, const Bytes& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

// ---- fp16

TEST(Quant, FloatToHalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(0.5f), 0x3800);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);  // largest half
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // halfway to 2^16: ties to even = inf
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-INFINITY), 0xFC00);
  EXPECT_EQ(FloatToHalf(NAN), 0x7E00);
  // Halfway between 1 and 1 + 2^-10: to the even 1; between 1 + 2^-10 and 1 + 2^-9: up to even.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3C00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f - 0x1p-20f), 0x3C00);
  // Subnormal halves count units of 2^-24.
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001);
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);             // tie to even 0
  EXPECT_EQ(FloatToHalf(0x1p-25f + 0x1p-40f), 0x0001);  // just above the tie
  EXPECT_EQ(FloatToHalf(1.5f * 0x1p-24f), 0x0002);      // tie to even 2
  EXPECT_EQ(FloatToHalf(-0x1p-14f), 0x8400);            // smallest normal
  EXPECT_EQ(FloatToHalf(0x1p-14f - 0x1p-25f), 0x0400);  // tie between 0x3FF and 0x400
  EXPECT_EQ(FloatToHalf(0x1p-14f - 0x1p-24f), 0x03FF);  // largest subnormal
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalf(-1e-10f), 0x8000);
  // Every half value survives the round trip through float.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) continue;  // NaN payloads
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

// ---- sizes

TEST(Quant, BlockAndRowSizes) {
  EXPECT_EQ(QuantBlockSize(WeightFormat::kQ8_0), 32u);
  EXPECT_EQ(QuantBlockSize(WeightFormat::kQ4_0), 32u);
  EXPECT_EQ(QuantBlockSize(WeightFormat::kQ4_K), 256u);
  EXPECT_EQ(QuantBlockSize(WeightFormat::kQ6_K), 256u);
  EXPECT_EQ(QuantBlockSize(WeightFormat::kQ8_K), 256u);
  EXPECT_EQ(QuantBlockBytes(WeightFormat::kQ8_0), 34u);
  EXPECT_EQ(QuantBlockBytes(WeightFormat::kQ4_0), 18u);
  EXPECT_EQ(QuantBlockBytes(WeightFormat::kQ4_K), 144u);
  EXPECT_EQ(QuantBlockBytes(WeightFormat::kQ6_K), 210u);
  EXPECT_EQ(QuantBlockBytes(WeightFormat::kQ8_K), 292u);
  EXPECT_EQ(QuantRowBytes(WeightFormat::kQ8_0, 4096), 128u * 34);
  EXPECT_EQ(QuantRowBytes(WeightFormat::kQ4_0, 4096), 128u * 18);
  EXPECT_EQ(QuantRowBytes(WeightFormat::kQ4_K, 4096), 16u * 144);
  EXPECT_EQ(QuantRowBytes(WeightFormat::kQ6_K, 14336), 56u * 210);
  EXPECT_EQ(QuantRowBytes(WeightFormat::kQ8_K, 256), 292u);
  EXPECT_EQ(QuantRowBytes(WeightFormat::kQ4_K, 0), 0u);
}

TEST(Quant, BadRowLengthsThrow) {
  EXPECT_THROW(QuantRowBytes(WeightFormat::kQ8_0, 33), Error);
  EXPECT_THROW(QuantRowBytes(WeightFormat::kQ8_0, 31), Error);
  EXPECT_THROW(QuantRowBytes(WeightFormat::kQ4_0, -32), Error);
  EXPECT_THROW(QuantRowBytes(WeightFormat::kQ4_K, 32), Error);
  EXPECT_THROW(QuantRowBytes(WeightFormat::kQ6_K, 4096 + 128), Error);
  EXPECT_THROW(QuantRowBytes(WeightFormat::kQ8_K, 255), Error);
  try {
    QuantRowBytes(WeightFormat::kQ4_K, 100);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_K"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("100"), std::string::npos) << e.what();
  }
  std::vector<float> x(512, 1.0f);
  Bytes buf(4096);
  EXPECT_THROW(QuantizeRow(WeightFormat::kQ4_K, x.data(), 300, buf.data()), Error);
  EXPECT_THROW(DequantizeRow(WeightFormat::kQ8_0, buf.data(), 48, x.data()), Error);
  EXPECT_THROW(DotQ8_0Q8_0(buf.data(), buf.data(), 40), Error);
  EXPECT_THROW(DotQ4_0Q8_0(buf.data(), buf.data(), -32), Error);
  EXPECT_THROW(DotQ4_KQ8_K(buf.data(), buf.data(), 128), Error);
  EXPECT_THROW(DotQ6_KQ8_K(buf.data(), buf.data(), 257), Error);
  if (CpuHasAvx2Fma()) {
    EXPECT_THROW(DotQ4_KQ8_K_Avx2(buf.data(), buf.data(), 128), Error);
    EXPECT_THROW(QuantizeRowQ8_0_Avx2(x.data(), 20, buf.data()), Error);
  }
}

// ---- layouts: hand-built blocks, expectations written from the format definitions

TEST(Quant, Q8_0Layout) {
  Bytes block(34);
  PutHalf(block.data(), 0x3555);  // 2^-2 * (1 + 341/1024) = 1365/4096
  for (int j = 0; j < 32; ++j) block[2 + j] = static_cast<uint8_t>(j * 8 - 128);  // -128..120
  const auto out = Dequantize(WeightFormat::kQ8_0, block, 32);
  for (int j = 0; j < 32; ++j)
    EXPECT_EQ(out[j], 1365.0f / 4096.0f * static_cast<float>(j * 8 - 128)) << j;
  EXPECT_EQ(out[0], -42.65625f);
}

TEST(Quant, Q4_0Layout) {
  Bytes block(18);
  PutHalf(block.data(), 0xC000);  // d = -2
  // Byte j holds element j (low nibble, = j) and element j + 16 (high nibble, = 15 - j).
  for (int j = 0; j < 16; ++j) block[2 + j] = static_cast<uint8_t>(j | (15 - j) << 4);
  const auto out = Dequantize(WeightFormat::kQ4_0, block, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], -2.0f * static_cast<float>(j - 8)) << j;
    EXPECT_EQ(out[j + 16], -2.0f * static_cast<float>(7 - j)) << j;
  }
  EXPECT_EQ(out[0], 16.0f);
  EXPECT_EQ(out[15], -14.0f);
  EXPECT_EQ(out[16], -14.0f);
  EXPECT_EQ(out[31], 16.0f);
}

TEST(Quant, Q4_KLayout) {
  // Sub-block scales and mins (6 bits each), then their packing worked out by hand:
  //   bytes 0..3:  sc[j] | (sc[j+4] >> 4) << 6     sc[4..7] >> 4 = 1, 2, 3, 3
  //   bytes 4..7:  m[j]  | (m[j+4] >> 4) << 6      m[4..7] >> 4  = 1, 2, 3, 3
  //   bytes 8..11: (sc[j+4] & 15) | (m[j+4] & 15) << 4
  const float sc[8] = {1, 2, 3, 4, 17, 37, 50, 63};
  const float m[8] = {0, 1, 2, 3, 20, 36, 48, 63};
  const uint8_t scales[12] = {0x41, 0x82, 0xC3, 0xC4, 0x40, 0x81,
                              0xC2, 0xC3, 0x41, 0x45, 0x02, 0xFF};
  Bytes block(144);
  PutHalf(block.data(), 0x3C00);      // d = 1
  PutHalf(block.data() + 2, 0x3800);  // dmin = 0.5
  std::memcpy(block.data() + 4, scales, 12);
  // qs[32g + l]: low nibble l % 16 (element 64g + l), high nibble 15 - l % 16 (64g + 32 + l).
  for (int i = 0; i < 128; ++i) block[16 + i] = static_cast<uint8_t>(i % 16 | (15 - i % 16) << 4);
  const auto out = Dequantize(WeightFormat::kQ4_K, block, 256);
  for (int g = 0; g < 4; ++g) {
    for (int l = 0; l < 32; ++l) {
      const auto lo = static_cast<float>(l % 16);
      EXPECT_EQ(out[64 * g + l], 1.0f * sc[2 * g] * lo - 0.5f * m[2 * g]) << g << " " << l;
      EXPECT_EQ(out[64 * g + 32 + l], 1.0f * sc[2 * g + 1] * (15 - lo) - 0.5f * m[2 * g + 1])
          << g << " " << l;
    }
  }
  EXPECT_EQ(out[255], -31.5f);  // sub-block 7, q = 0
  EXPECT_EQ(out[224], 913.5f);  // sub-block 7, q = 15: 63 * 15 - 31.5
  EXPECT_EQ(out[192], -24.0f);  // sub-block 6, q = 0
  EXPECT_EQ(out[100], 42.5f);   // sub-block 3, q = 11: 4 * 11 - 1.5
  EXPECT_EQ(out[40], 13.5f);    // sub-block 1, q = 7: 2 * 7 - 0.5
}

TEST(Quant, Q6_KLayout) {
  const int s[16] = {1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -128};
  Bytes block(210);
  for (int i = 0; i < 128; ++i) block[i] = static_cast<uint8_t>(i);  // ql
  for (int i = 0; i < 64; ++i) block[128 + i] = 0xE4;  // qh: 2-bit fields 0, 1, 2, 3 from bit 0
  for (int k = 0; k < 16; ++k) block[192 + k] = static_cast<uint8_t>(s[k]);
  PutHalf(block.data() + 208, 0x3800);  // d = 0.5, at the end
  // So in half h, for l < 32 (q - 32 in each quarter):
  //   element 128h + l:      ql[64h + l] & 15 = l % 16, high bits 0  -> l % 16 - 32
  //   element 128h + 32 + l: ql[64h+32+l] & 15 = l % 16, high 1     -> l % 16 - 16
  //   element 128h + 64 + l: ql[64h + l] >> 4 = 4h + l / 16, high 2 -> 4h + l / 16
  //   element 128h + 96 + l: ql[64h+32+l] >> 4 = 4h + 2 + l / 16, high 3 -> 4h + 18 + l / 16
  const auto out = Dequantize(WeightFormat::kQ6_K, block, 256);
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const int e = 128 * h + l;
      const int q[4] = {l % 16 - 32, l % 16 - 16, 4 * h + l / 16, 4 * h + 18 + l / 16};
      for (int k = 0; k < 4; ++k) {
        const int idx = e + 32 * k;
        EXPECT_EQ(out[idx], 0.5f * static_cast<float>(s[idx / 16] * q[k])) << idx;
      }
    }
  }
  EXPECT_EQ(out[5], -13.5f);      // scale 1, q - 32 = -27
  EXPECT_EQ(out[17], 31.0f);      // scale -2, -31
  EXPECT_EQ(out[40], -12.0f);     // scale 3, -8
  EXPECT_EQ(out[84], -3.0f);      // scale -6, 1
  EXPECT_EQ(out[127], -76.0f);    // scale -8, 19
  EXPECT_EQ(out[128], -144.0f);   // scale 9, -32
  EXPECT_EQ(out[200], 26.0f);     // scale 13, 4
  EXPECT_EQ(out[255], -1472.0f);  // scale -128, 23
}

TEST(Quant, Q8_KLayout) {
  Bytes block(292);
  const float d = 0.25f;
  std::memcpy(block.data(), &d, 4);
  for (int j = 0; j < 256; ++j) block[4 + j] = static_cast<uint8_t>(j - 128);
  const auto out = Dequantize(WeightFormat::kQ8_K, block, 256);
  for (int j = 0; j < 256; ++j) EXPECT_EQ(out[j], 0.25f * static_cast<float>(j - 128)) << j;
}

// ---- Q8_0 / Q4_0 / Q8_K quantizers against ggml's formulas

TEST(Quant, Q8_0QuantizeRoundsHalfAwayFromZero) {
  std::vector<float> x(64, 0.0f);
  // Block 0: amax 127 makes d = 1 (fp16 0x3C00) and 1/d = 1, so x / d is x itself.
  const float values[] = {-127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.49f, 126.5f, -126.5f, 0.49999997f};
  const int expected[] = {-127, 3, -3, 1, -1, 1, 127, -127, 0};
  for (int j = 0; j < 9; ++j) x[j] = values[j];
  // Block 1: all zero -> d = 0 and zero quants, dequantizing to 0 (not NaN).
  const Bytes q = Quantize(WeightFormat::kQ8_0, x);
  EXPECT_EQ(GetHalf(&q[0]), 0x3C00);
  for (int j = 0; j < 9; ++j) EXPECT_EQ(static_cast<int8_t>(q[2 + j]), expected[j]) << j;
  for (int j = 9; j < 32; ++j) EXPECT_EQ(q[2 + j], 0) << j;
  for (int j = 0; j < 34; ++j) EXPECT_EQ(q[34 + j], 0) << j;
  for (float v : Dequantize(WeightFormat::kQ8_0, q, 64)) EXPECT_FALSE(std::isnan(v));

  // amax 1: d = 1/127 -> fp16 0x2008 (2^-7 * (1 + 8/1024): 1/127 = 2^-7 * 1.00787).
  std::vector<float> y(32, 0.25f);
  y[3] = -1.0f;
  y[4] = 1.0f;
  const Bytes qy = Quantize(WeightFormat::kQ8_0, y);
  EXPECT_EQ(GetHalf(&qy[0]), 0x2008);
  EXPECT_EQ(static_cast<int8_t>(qy[2 + 3]), -127);
  EXPECT_EQ(static_cast<int8_t>(qy[2 + 4]), 127);
  EXPECT_EQ(static_cast<int8_t>(qy[2 + 0]), 32);  // 0.25 * 127 = 31.75
}

TEST(Quant, Q4_0QuantizeTiesRoundUpAndClipsTheFarSide) {
  std::vector<float> x(96, 0.0f);
  // Block 0: -8 comes first among the largest magnitudes, so d = -8 / -8 = 1 and
  // q = min(15, trunc(x + 8.5)).
  const float a[] = {-8.0f, 0.5f, -0.5f, 1.5f, -7.5f, 7.5f, 8.0f, 0.49f, 3.2f, -3.2f};
  const int qa[] = {0, 9, 8, 10, 1, 15, 15, 8, 11, 5};
  for (int j = 0; j < 10; ++j) x[j] = a[j];
  // Block 1: +4 first, so d = -0.5 and x / d = -2x.
  const float b[] = {0.0f, 0.25f, -0.25f, 4.0f, -4.0f, 1.0f, 0.0f};
  const int qb[] = {8, 8, 9, 0, 15, 6, 8};
  for (int j = 0; j < 7; ++j) x[32 + j] = b[j];
  // Block 2: all zero. max stays 0, and 0 / -8 is -0: ggml stores 0x8000.
  const Bytes q = Quantize(WeightFormat::kQ4_0, x);
  auto nibble = [&](int block, int j) {
    const uint8_t byte = q[18 * block + 2 + j % 16];
    return j < 16 ? byte & 15 : byte >> 4;
  };
  EXPECT_EQ(GetHalf(&q[0]), 0x3C00);
  for (int j = 0; j < 10; ++j) EXPECT_EQ(nibble(0, j), qa[j]) << j;
  for (int j = 10; j < 32; ++j) EXPECT_EQ(nibble(0, j), 8) << j;
  EXPECT_EQ(GetHalf(&q[18]), 0xB800);
  for (int j = 0; j < 7; ++j) EXPECT_EQ(nibble(1, j), qb[j]) << j;
  EXPECT_EQ(GetHalf(&q[36]), 0x8000);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q[38 + j], 0x88) << j;
  const auto out = Dequantize(WeightFormat::kQ4_0, q, 96);
  EXPECT_EQ(out[6], 7.0f);  // the clipped +8
  for (int j = 64; j < 96; ++j) EXPECT_EQ(out[j], 0.0f) << j;
}

TEST(Quant, Q8_KQuantizeRoundsHalfToEvenWithBlockSums) {
  std::vector<float> x(512, 0.0f);
  // Block 0: -127 first, so iscale = -127 / -127 = 1 and d = 1.
  const float a[] = {-127.0f, 2.5f, 3.5f, -2.5f, 0.5f, -1.5f, 126.5f, 127.0f, 1.4f};
  const int qa[] = {-127, 2, 4, -2, 0, -2, 126, 127, 1};
  for (int j = 0; j < 9; ++j) x[j] = a[j];
  for (int j = 16; j < 32; ++j) x[j] = static_cast<float>(j);  // bsums[1] = 16 + ... + 31 = 376
  x[255] = -3.0f;
  // Block 1: +127 first: iscale = -1, d = -1, so the quants are negated.
  x[256 + 5] = 127.0f;
  x[256 + 6] = -127.0f;
  x[256 + 7] = 2.5f;
  const Bytes q = Quantize(WeightFormat::kQ8_K, x);
  float d0, d1;
  std::memcpy(&d0, &q[0], 4);
  std::memcpy(&d1, &q[292], 4);
  EXPECT_EQ(d0, 1.0f);
  EXPECT_EQ(d1, -1.0f);
  for (int j = 0; j < 9; ++j) EXPECT_EQ(static_cast<int8_t>(q[4 + j]), qa[j]) << j;
  auto bsum = [&](int block, int k) {
    int16_t v;
    std::memcpy(&v, &q[292 * block + 260 + 2 * k], 2);
    return v;
  };
  EXPECT_EQ(bsum(0, 0), -127 + 2 + 4 - 2 + 0 - 2 + 126 + 127 + 1);
  EXPECT_EQ(bsum(0, 1), 376);
  EXPECT_EQ(bsum(0, 15), -3);
  EXPECT_EQ(static_cast<int8_t>(q[292 + 4 + 5]), -127);
  EXPECT_EQ(static_cast<int8_t>(q[292 + 4 + 6]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[292 + 4 + 7]), -2);
  EXPECT_EQ(bsum(1, 0), -2);
  // All zero: everything zero, including the sums.
  const Bytes z = Quantize(WeightFormat::kQ8_K, std::vector<float>(256, 0.0f));
  EXPECT_EQ(z, Bytes(292, 0));
}

// fp16 rounding by a different route than FloatToHalf: scale to an integer count of the value's
// quantum in double and round that to even.
uint16_t RefHalf(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a == 0) return sign;
  int e = std::max(std::ilogb(a), -14);
  double m = std::nearbyint(a / std::ldexp(1.0, e - 10));  // in [0, 2048]
  if (m == 2048) {
    m = 1024;
    ++e;
  }
  if (e > 15) return sign | 0x7C00;
  if (m < 1024) return static_cast<uint16_t>(sign | static_cast<int>(m));
  return static_cast<uint16_t>(sign | (e + 15) << 10 | (static_cast<int>(m) - 1024));
}

// ggml's quantize_row_q8_0_ref and quantize_row_q4_0_ref, restated from their definitions.
Bytes RefQ8_0(const std::vector<float>& x) {
  Bytes out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t j = b; j < b + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1 / d : 0;
    const uint16_t h = RefHalf(d);
    out.push_back(static_cast<uint8_t>(h & 0xFF));
    out.push_back(static_cast<uint8_t>(h >> 8));
    for (size_t j = b; j < b + 32; ++j) {
      out.push_back(static_cast<uint8_t>(static_cast<int>(std::roundf(x[j] * id))));
    }
  }
  return out;
}

Bytes RefQ4_0(const std::vector<float>& x) {
  Bytes out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0, max = 0;
    for (size_t j = b; j < b + 32; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0 ? 1 / d : 0;
    const uint16_t h = RefHalf(d);
    out.push_back(static_cast<uint8_t>(h & 0xFF));
    out.push_back(static_cast<uint8_t>(h >> 8));
    for (size_t j = b; j < b + 16; ++j) {
      const int lo = std::min(15, static_cast<int>(std::floor(x[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(std::floor(x[j + 16] * id + 8.5f)));
      out.push_back(static_cast<uint8_t>(lo | hi << 4));
    }
  }
  return out;
}

TEST(Quant, Q8_0AndQ4_0MatchGgmlReferenceFormula) {
  std::mt19937 rng(7);
  for (int64_t n : {32, 64, 1024, 4096}) {
    auto x = RandomRow(n, rng);
    // Extra blocks with exact ties (integers + 0.5 against d = 1), equal opposite extremes,
    // and zeros.
    std::vector<float> special(96, 0.0f);
    special[0] = 127.0f;
    special[1] = -127.0f;
    for (int j = 2; j < 32; ++j) special[j] = static_cast<float>(j * 4 - 62) + 0.5f;
    special[32] = -8.0f;
    special[33] = 8.0f;
    for (int j = 34; j < 64; ++j) special[j] = static_cast<float>(j - 49) * 0.5f;
    x.insert(x.end(), special.begin(), special.end());
    for (WeightFormat type : {WeightFormat::kQ8_0, WeightFormat::kQ4_0}) {
      const Bytes got = Quantize(type, x);
      const Bytes want = type == WeightFormat::kQ8_0 ? RefQ8_0(x) : RefQ4_0(x);
      const int64_t at = FirstMismatch(got, want);
      EXPECT_EQ(at, -1) << WeightFormatName(type) << " n=" << n << " byte " << at << " block "
                        << at / static_cast<int64_t>(QuantBlockBytes(type)) << ": want "
                        << int{want[at]} << " got " << int{got[at]};
    }
  }
}

uint64_t Fnv1a(const Bytes& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (uint8_t c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// Golden hashes of the bytes that ggml's quantize_row_*_ref (ggml commit d99724f, built with -O2
// and no -march, i.e. without floating-point contraction) writes for this input, which only
// exact float operations produce. A mismatch means our files would differ from llama.cpp's.
TEST(Quant, BytesEqualGgmlReference) {
  const int64_t n = 2048;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) {
    const auto v = static_cast<int>(i * 7919 % 2001) - 1000;
    x[i] = static_cast<float>(v) / 37.0f * static_cast<float>(1 + i / 32 % 7);
  }
  std::fill(x.begin() + 512, x.begin() + 768, 0.0f);
  EXPECT_EQ(Fnv1a(Quantize(WeightFormat::kQ8_0, x)), 0x3bcbb194427d7542ull);
  EXPECT_EQ(Fnv1a(Quantize(WeightFormat::kQ4_0, x)), 0x24bb5d426a180e90ull);
  EXPECT_EQ(Fnv1a(Quantize(WeightFormat::kQ4_K, x)), 0x3343475d3bd3e99eull);
  EXPECT_EQ(Fnv1a(Quantize(WeightFormat::kQ6_K, x)), 0x79b244128fc601a8ull);
  EXPECT_EQ(Fnv1a(Quantize(WeightFormat::kQ8_K, x)), 0x72e3d3a01f9d12d9ull);
}

// ---- round trips

TEST(Quant, RoundTripErrorBounds) {
  std::mt19937 rng(11);
  const auto x = RandomRow(4096, rng);
  const int64_t n = 4096;
  const double h = 1.0 / 2048;  // fp16 rounding of d: relative error <= 2^-11 (normal range)
  // Q8_0: d = amax / 127 quantizes with error <= d / 2; storing d as fp16 moves each of up to
  // 127 steps by <= d * 2^-11. Float slack: 2^-20 * amax.
  {
    const auto y = Dequantize(WeightFormat::kQ8_0, Quantize(WeightFormat::kQ8_0, x), n);
    for (int64_t b = 0; b < n; b += 32) {
      float amax = 0;
      for (int64_t j = b; j < b + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
      const double d = amax / 127.0;
      for (int64_t j = b; j < b + 32; ++j) {
        ASSERT_LE(std::fabs(x[j] - y[j]), d * (0.5 + 127 * h) + amax * 0x1p-20) << j;
      }
    }
  }
  // Q4_0: |d| = amax / 8 and x / d lies in [-8, 8]; ties round up, and (7.5, 8] (only on the far
  // side of the extreme) clips to 7, so the error is <= |d| / 2 there but <= |d| beyond 7.5;
  // fp16 d adds <= 8 * |d| * 2^-11.
  {
    const auto y = Dequantize(WeightFormat::kQ4_0, Quantize(WeightFormat::kQ4_0, x), n);
    for (int64_t b = 0; b < n; b += 32) {
      float amax = 0, max = 0;
      for (int64_t j = b; j < b + 32; ++j) {
        if (std::fabs(x[j]) > amax) {
          amax = std::fabs(x[j]);
          max = x[j];
        }
      }
      const double d = max / -8.0;
      for (int64_t j = b; j < b + 32; ++j) {
        const double steps = x[j] / d > 7.5 ? 1.0 : 0.5;
        ASSERT_LE(std::fabs(x[j] - y[j]), std::fabs(d) * (steps + 8 * h) + amax * 0x1p-18) << j;
      }
    }
  }
  // Q8_K: d = max / -127 stays a float: error <= |d| / 2 plus float slack.
  {
    const auto y = Dequantize(WeightFormat::kQ8_K, Quantize(WeightFormat::kQ8_K, x), n);
    for (int64_t b = 0; b < n; b += 256) {
      float amax = 0;
      for (int64_t j = b; j < b + 256; ++j) amax = std::max(amax, std::fabs(x[j]));
      for (int64_t j = b; j < b + 256; ++j) {
        ASSERT_LE(std::fabs(x[j] - y[j]), amax / 127.0 * 0.5 + amax * 0x1p-20) << j;
      }
    }
  }
}

// Q4_K and Q6_K choose scales by weighted least squares, which may clip outliers on purpose, so
// there is no closed-form max error. What is exact: given the stored (fp16 x 6- or 8-bit)
// scales, each element gets the nearest code on its sub-block's grid. Plus a regression guard
// on the relative RMS error for this seed (measured: Q4_K 0.086, Q6_K 0.026).
TEST(Quant, KQuantsPickTheNearestCodeOnTheirGrid) {
  std::mt19937 rng(13);
  const int64_t n = 4096;
  auto x = RandomRow(n, rng);
  std::fill(x.begin() + 512, x.begin() + 768, 0.0f);   // an all-zero super-block
  for (int j = 1024; j < 1024 + 32; ++j) x[j] = 3.0f;  // a constant sub-block
  for (int j = 1280; j < 1280 + 256; ++j) x[j] = static_cast<float>(j % 7) - 10.0f;  // all < 0
  double sum_x2 = 0;
  for (float v : x) sum_x2 += static_cast<double>(v) * v;

  {
    const Bytes q = Quantize(WeightFormat::kQ4_K, x);
    const auto y = Dequantize(WeightFormat::kQ4_K, q, n);
    double err2 = 0;
    for (int64_t b = 0; b < n / 256; ++b) {
      const uint8_t* block = &q[144 * b];
      const float d = HalfToFloat(GetHalf(block));
      const float dmin = HalfToFloat(GetHalf(block + 2));
      int max_sc = 0, max_m = 0;
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        Q4_KScaleMin(block + 4, j, &sc, &m);
        max_sc = std::max<int>(max_sc, sc);
        max_m = std::max<int>(max_m, m);
        const double ds = static_cast<double>(d) * sc;
        const double ms = static_cast<double>(dmin) * m;
        for (int l = 0; l < 32; ++l) {
          const int64_t e = 256 * b + 32 * j + l;
          if (ds > 0) {
            const double best_q = std::clamp(std::round((x[e] + ms) / ds), 0.0, 15.0);
            const double best = std::fabs(x[e] - (ds * best_q - ms));
            ASSERT_LE(std::fabs(x[e] - y[e]), best + 1e-5 * (ds * 15 + ms)) << e;
          } else {
            ASSERT_EQ(y[e], static_cast<float>(-ms)) << e;
          }
        }
      }
      // The largest sub-block scale and min map to the top 6-bit code.
      if (d > 0) {
        EXPECT_EQ(max_sc, 63) << b;
      }
      if (dmin > 0) {
        EXPECT_EQ(max_m, 63) << b;
      }
    }
    for (int64_t e = 0; e < n; ++e) err2 += std::pow(static_cast<double>(x[e]) - y[e], 2);
    for (int e = 512; e < 768; ++e) EXPECT_EQ(y[e], 0.0f);
    for (int e = 1024; e < 1056; ++e) EXPECT_NEAR(y[e], 3.0f, 3.0f / 30) << e;
    EXPECT_LT(std::sqrt(err2 / sum_x2), 0.10);
  }
  {
    const Bytes q = Quantize(WeightFormat::kQ6_K, x);
    const auto y = Dequantize(WeightFormat::kQ6_K, q, n);
    for (int64_t b = 0; b < n / 256; ++b) {
      const uint8_t* block = &q[210 * b];
      const float d = HalfToFloat(GetHalf(block + 208));
      bool has_minus_128 = false;
      for (int k = 0; k < 16; ++k) {
        const auto sc = static_cast<int8_t>(block[192 + k]);
        has_minus_128 |= sc == -128;
        const double ds = static_cast<double>(d) * sc;
        for (int l = 0; l < 16; ++l) {
          const int64_t e = 256 * b + 16 * k + l;
          if (ds != 0) {
            const double best_q = std::clamp(std::round(x[e] / ds), -32.0, 31.0);
            const double best = std::fabs(x[e] - ds * best_q);
            ASSERT_LE(std::fabs(x[e] - y[e]), best + 1e-5 * std::fabs(ds) * 32) << e;
          } else {
            ASSERT_EQ(y[e], 0.0f) << e;
          }
        }
      }
      // The sub-block scale of largest magnitude becomes -128 (the all-zero block stores 0).
      EXPECT_EQ(has_minus_128, b != 2) << b;
    }
    double err2 = 0;
    for (int64_t e = 0; e < n; ++e) err2 += std::pow(static_cast<double>(x[e]) - y[e], 2);
    EXPECT_EQ(Bytes(q.begin() + 420, q.begin() + 630), Bytes(210, 0));  // all-zero block
    EXPECT_LT(std::sqrt(err2 / sum_x2), 0.03);
  }
}

// ---- dot products against double sums of the dequantized rows

struct DotCase {
  WeightFormat weight;
  WeightFormat act;
  float (*dot)(const void*, const void*, int64_t);
  float (*dot_avx2)(const void*, const void*, int64_t);
};

const DotCase kDots[] = {
    {WeightFormat::kQ8_0, WeightFormat::kQ8_0, DotQ8_0Q8_0, DotQ8_0Q8_0_Avx2},
    {WeightFormat::kQ4_0, WeightFormat::kQ8_0, DotQ4_0Q8_0, DotQ4_0Q8_0_Avx2},
    {WeightFormat::kQ4_K, WeightFormat::kQ8_K, DotQ4_KQ8_K, DotQ4_KQ8_K_Avx2},
    {WeightFormat::kQ6_K, WeightFormat::kQ8_K, DotQ6_KQ8_K, DotQ6_KQ8_K_Avx2},
};

// sum_i |terms| of the dot product: |w_i * a_i|, where for Q4_K the two parts of w_i
// (d * sc * q and dmin * m) count separately, as the dot product sums them separately.
// sum_i |w_i * a_i|, with the Q4_K mins, and for the AVX2 Q4_0 kernel (which sums unsigned
// nibbles and an offset) |w_i| + 16 |d_w| (see quant.h).
double SumOfAbsTerms(const DotCase& c, const Bytes& w, const std::vector<float>& a, int64_t n,
                     bool q4_0_offset = false) {
  auto wd = Dequantize(c.weight, w, n);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    double wi = std::fabs(wd[i]);
    if (q4_0_offset && c.weight == WeightFormat::kQ4_0) {
      wi += 16.0 * std::fabs(static_cast<double>(HalfToFloat(GetHalf(&w[18 * (i / 32)]))));
    }
    if (c.weight == WeightFormat::kQ4_K) {
      const uint8_t* block = &w[144 * (i / 256)];
      uint8_t sc, m;
      Q4_KScaleMin(block + 4, static_cast<int>(i % 256 / 32), &sc, &m);
      const double mi = static_cast<double>(HalfToFloat(GetHalf(block + 2))) * m;
      wi = std::fabs(wd[i] + mi) + mi;
    }
    s += wi * std::fabs(a[i]);
  }
  return s;
}

// Both the float dot product and this double reference sum the same exact products; the float
// one rounds each block's term at most 3 times (integer to float, the scale product, the add or
// fma) and is a recursive sum over `blocks` terms (twice as many for Q4_K), the reference
// rounds each dequantized value once: |dot - ref| <= (2 * blocks + 8) * 2^-24 * sum |terms|.
TEST(Quant, DotProductsMatchDoubleSums) {
  std::mt19937 rng(17);
  for (const DotCase& c : kDots) {
    for (int64_t n : {256, 512, 4096, 11008}) {
      const auto xw = RandomRow(n, rng);
      const auto xa = RandomRow(n, rng);
      const Bytes w = Quantize(c.weight, xw);
      const Bytes a = Quantize(c.act, xa);
      const auto wd = Dequantize(c.weight, w, n);
      const auto ad = Dequantize(c.act, a, n);
      double ref = 0;
      for (int64_t i = 0; i < n; ++i) ref += static_cast<double>(wd[i]) * ad[i];
      const double blocks = static_cast<double>(n / static_cast<int64_t>(QuantBlockSize(c.weight)));
      const double tol = (2 * blocks + 8) * kUnit * SumOfAbsTerms(c, w, ad, n);
      const float got = c.dot(w.data(), a.data(), n);
      EXPECT_NEAR(got, ref, tol) << WeightFormatName(c.weight) << " n=" << n;
    }
  }
}

TEST(Quant, DotProductOfZeroBlocksIsZero) {
  const std::vector<float> zero(512, 0.0f);
  for (const DotCase& c : kDots) {
    const Bytes w = Quantize(c.weight, zero);
    const Bytes a = Quantize(c.act, zero);
    EXPECT_EQ(c.dot(w.data(), a.data(), 512), 0.0f) << WeightFormatName(c.weight);
    EXPECT_EQ(c.dot(w.data(), a.data(), 0), 0.0f) << WeightFormatName(c.weight);
  }
}

// ---- AVX2 twins

const int64_t kSimdLengths[] = {256, 512, 768, 4096, 4352, 11008, 14336};

TEST(Quant, Avx2QuantizersMatchScalarBytes) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  std::mt19937 rng(19);
  for (int64_t n : kSimdLengths) {
    auto x = RandomRow(n, rng);
    // Exact ties: amax 127 gives Q8_0 d = 1 and Q8_K iscale = +-1, so x * id is x.
    x[0] = -127.0f;
    for (int j = 1; j < 32; ++j) x[j] = static_cast<float>(j * 8 - 128) + 0.5f;
    for (int j = 32; j < 64; ++j) x[j] = static_cast<float>(j - 48) + 0.5f;
    x[64] = 127.0f;                          // Q8_K block 0: -127 comes first
    std::fill(x.end() - 32, x.end(), 0.0f);  // an all-zero Q8_0 block
    if (n >= 768) {  // Q8_K block 1: equal magnitudes of both signs (the first one wins)
      std::fill(x.begin() + 256, x.begin() + 512, 0.0f);
      x[300] = 5.0f;
      x[301] = -5.0f;
      x[299] = 2.5f;
    }
    for (WeightFormat type : {WeightFormat::kQ8_0, WeightFormat::kQ8_K}) {
      const Bytes want = Quantize(type, x);
      Bytes got(want.size(), 0xAA);
      if (type == WeightFormat::kQ8_0) {
        QuantizeRowQ8_0_Avx2(x.data(), n, got.data());
      } else {
        QuantizeRowQ8_K_Avx2(x.data(), n, got.data());
      }
      const int64_t at = FirstMismatch(got, want);
      EXPECT_EQ(at, -1) << WeightFormatName(type) << " n=" << n << " byte " << at << ": want "
                        << int{want[at]} << " got " << int{got[at]};
    }
  }
  // A row of all zeros (Q8_K: the zero branch).
  const std::vector<float> zero(512, 0.0f);
  Bytes got(QuantRowBytes(WeightFormat::kQ8_K, 512), 0xAA);
  QuantizeRowQ8_K_Avx2(zero.data(), 512, got.data());
  EXPECT_EQ(got, Quantize(WeightFormat::kQ8_K, zero));
}

// Random blocks straight from bytes (not from the quantizers), so that every code and every
// scale combination can occur: fp16 scales in [2^-12, 2^4), random quant bytes; Q8_0 activation
// quants in [-127, 127] (DotQ8_0Q8_0_Avx2's contract), Q8_K bsums consistent with qs.
Bytes RandomBlocks(WeightFormat type, int64_t n, std::mt19937& rng, bool activation,
                   bool unit_scales) {
  Bytes out(QuantRowBytes(type, n));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> quant(-127, 127);
  std::uniform_int_distribution<int> half(0x0C00, 0x4BFF);
  for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
  const size_t bytes = QuantBlockBytes(type);
  for (size_t p = 0; p < out.size(); p += bytes) {
    uint8_t* block = &out[p];
    auto scale = [&] { return static_cast<uint16_t>(unit_scales ? 0x3C00 : half(rng)); };
    switch (type) {
      case WeightFormat::kQ8_0:
        PutHalf(block, scale());
        if (activation) {
          for (int j = 0; j < 32; ++j) block[2 + j] = static_cast<uint8_t>(quant(rng));
        }
        break;
      case WeightFormat::kQ4_0: PutHalf(block, scale()); break;
      case WeightFormat::kQ4_K:
        PutHalf(block, scale());
        PutHalf(block + 2, scale());
        break;
      case WeightFormat::kQ6_K: PutHalf(block + 208, scale()); break;
      case WeightFormat::kQ5_0: PutHalf(block, scale()); break;
      case WeightFormat::kQ4_1:
      case WeightFormat::kQ5_1:
      case WeightFormat::kQ5_K:
        PutHalf(block, scale());
        PutHalf(block + 2, scale());
        break;
      case WeightFormat::kQ2_K:
        PutHalf(block + 80, scale());
        PutHalf(block + 82, scale());
        break;
      case WeightFormat::kQ3_K: PutHalf(block + 108, scale()); break;
      case WeightFormat::kF32:
      case WeightFormat::kF16:
      case WeightFormat::kBF16: break;  // not block formats: the random bytes stay
      case WeightFormat::kQ8_K: {
        const float d = unit_scales ? 1.0f : HalfToFloat(static_cast<uint16_t>(half(rng)));
        std::memcpy(block, &d, 4);
        for (int k = 0; k < 16; ++k) {
          int sum = 0;
          for (int l = 0; l < 16; ++l) sum += static_cast<int8_t>(block[4 + 16 * k + l]);
          const auto s = static_cast<int16_t>(sum);
          std::memcpy(block + 260 + 2 * k, &s, 2);
        }
        break;
      }
    }
  }
  return out;
}

TEST(Quant, Avx2KQuantDotsEqualScalarBits) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  std::mt19937 rng(23);
  for (const DotCase& c : kDots) {
    if (c.act != WeightFormat::kQ8_K) continue;
    for (int64_t n : kSimdLengths) {
      for (int rep = 0; rep < 3; ++rep) {
        const Bytes w = RandomBlocks(c.weight, n, rng, false, false);
        const Bytes a = RandomBlocks(c.act, n, rng, true, false);
        const float want = c.dot(w.data(), a.data(), n);
        const float got = c.dot_avx2(w.data(), a.data(), n);
        EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want))
            << WeightFormatName(c.weight) << " n=" << n << " rep " << rep << ": want " << want
            << " got " << got;
      }
      // And on quantized real-looking data.
      const Bytes w = Quantize(c.weight, RandomRow(n, rng));
      const Bytes a = Quantize(c.act, RandomRow(n, rng));
      EXPECT_EQ(std::bit_cast<uint32_t>(c.dot_avx2(w.data(), a.data(), n)),
                std::bit_cast<uint32_t>(c.dot(w.data(), a.data(), n)))
          << WeightFormatName(c.weight) << " n=" << n;
    }
  }
}

// The formats added with the format table: their AVX2 dot products return the scalar twins'
// bits (exact integer sums per block, then the twin's float operations), on random blocks of
// any bytes and on quantized data, at every length.
TEST(Quant, Avx2DotsOfTheLaterFormatsEqualScalarBits) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  const DotCase later[] = {
      {WeightFormat::kQ4_1, WeightFormat::kQ8_0, DotQ4_1Q8_0, DotQ4_1Q8_0_Avx2},
      {WeightFormat::kQ5_0, WeightFormat::kQ8_0, DotQ5_0Q8_0, DotQ5_0Q8_0_Avx2},
      {WeightFormat::kQ5_1, WeightFormat::kQ8_0, DotQ5_1Q8_0, DotQ5_1Q8_0_Avx2},
      {WeightFormat::kQ2_K, WeightFormat::kQ8_K, DotQ2_KQ8_K, DotQ2_KQ8_K_Avx2},
      {WeightFormat::kQ3_K, WeightFormat::kQ8_K, DotQ3_KQ8_K, DotQ3_KQ8_K_Avx2},
      {WeightFormat::kQ5_K, WeightFormat::kQ8_K, DotQ5_KQ8_K, DotQ5_KQ8_K_Avx2},
  };
  std::mt19937 rng(31);
  for (const DotCase& c : later) {
    for (int64_t n : {256, 512, 4096, 11008}) {
      for (int rep = 0; rep < 3; ++rep) {
        const Bytes w = RandomBlocks(c.weight, n, rng, false, false);
        const Bytes a = RandomBlocks(c.act, n, rng, true, false);
        EXPECT_EQ(std::bit_cast<uint32_t>(c.dot_avx2(w.data(), a.data(), n)),
                  std::bit_cast<uint32_t>(c.dot(w.data(), a.data(), n)))
            << WeightFormatName(c.weight) << " n=" << n << " rep " << rep;
      }
      const Bytes w = Quantize(c.weight, RandomRow(n, rng));
      const Bytes a = Quantize(c.act, RandomRow(n, rng));
      EXPECT_EQ(std::bit_cast<uint32_t>(c.dot_avx2(w.data(), a.data(), n)),
                std::bit_cast<uint32_t>(c.dot(w.data(), a.data(), n)))
          << WeightFormatName(c.weight) << " n=" << n << " quantized";
    }
  }
}

TEST(Quant, Avx2Q8_0DotsMatchScalar) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  std::mt19937 rng(29);
  for (const DotCase& c : kDots) {
    if (c.act != WeightFormat::kQ8_0) continue;
    // Integer parts exactly: with unit scales every partial sum is an integer below
    // 1024 * 128 * 127 < 2^24, so both versions are exact and equal the int64 sum.
    for (int64_t n : {32, 64, 96, 256, 1024}) {
      const Bytes w = RandomBlocks(c.weight, n, rng, false, true);
      const Bytes a = RandomBlocks(c.act, n, rng, true, true);
      const auto wd = Dequantize(c.weight, w, n);
      const auto ad = Dequantize(c.act, a, n);
      int64_t exact = 0;
      for (int64_t i = 0; i < n; ++i) {
        exact += static_cast<int64_t>(wd[i]) * static_cast<int64_t>(ad[i]);
      }
      EXPECT_EQ(c.dot(w.data(), a.data(), n), static_cast<float>(exact))
          << WeightFormatName(c.weight) << " n=" << n;
      EXPECT_EQ(c.dot_avx2(w.data(), a.data(), n), static_cast<float>(exact))
          << WeightFormatName(c.weight) << " n=" << n;
    }
    // Floats within the bound stated in quant.h.
    for (int64_t n : {32, 64, 96, 4096, 4128, 11008, 14336}) {
      for (int rep = 0; rep < 3; ++rep) {
        const Bytes w = RandomBlocks(c.weight, n, rng, false, false);
        const Bytes a = RandomBlocks(c.act, n, rng, true, false);
        const auto ad = Dequantize(c.act, a, n);
        const double tol = (2.0 * static_cast<double>(n / 32) + 8) * kUnit *
                           SumOfAbsTerms(c, w, std::vector<float>(ad.begin(), ad.end()), n, true);
        const float want = c.dot(w.data(), a.data(), n);
        const float got = c.dot_avx2(w.data(), a.data(), n);
        EXPECT_NEAR(got, want, tol) << WeightFormatName(c.weight) << " n=" << n << " rep " << rep;
      }
    }
  }
}

// The AVX2 Q4_K and Q6_K dot products give the scalar twin's bits at the integer sums' bounds:
// the largest quants and scales, activations of -128, or both, up to the longest rows of a 7B
// model.
TEST(Quant, Avx2KQuantDotsAreExactAtTheExtremes) {
  if (!CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA/F16C";
  const struct {
    WeightFormat weight;
    float (*dot)(const void*, const void*, int64_t);
    float (*scalar)(const void*, const void*, int64_t);
  } cases[] = {{WeightFormat::kQ4_K, DotQ4_KQ8_K_Avx2, DotQ4_KQ8_K},
               {WeightFormat::kQ6_K, DotQ6_KQ8_K_Avx2, DotQ6_KQ8_K}};
  // Largest 4- and 6-bit quants and scales (Q4_K: sc = m = 63; Q6_K: scales -128).
  auto make_extreme_weights = [](WeightFormat type, Bytes& row) {
    const size_t bytes = QuantBlockBytes(type);
    for (size_t p = 0; p < row.size(); p += bytes) {
      if (type == WeightFormat::kQ4_K) {
        std::fill(row.begin() + p + 4, row.begin() + p + bytes, 0xFF);
      } else {
        std::fill(row.begin() + p, row.begin() + p + 192, 0xFF);
        std::fill(row.begin() + p + 192, row.begin() + p + 208, 0x80);
      }
    }
  };
  auto make_extreme_activations = [](Bytes& row) {
    for (size_t p = 0; p < row.size(); p += 292) {
      std::fill(row.begin() + p + 4, row.begin() + p + 260, 0x80);  // -128
      for (int k = 0; k < 16; ++k) {
        const int16_t s = -16 * 128;
        std::memcpy(&row[p + 260 + 2 * k], &s, 2);
      }
    }
  };
  std::mt19937 rng(41);
  for (const auto& c : cases) {
    for (const int64_t n : {256, 512, 768, 4096, 14336}) {
      for (int trial = 1; trial < 4; ++trial) {
        const bool extreme_w = trial % 2 == 1, extreme_a = trial >= 2;
        Bytes w = RandomBlocks(c.weight, n, rng, false, false);
        Bytes a = RandomBlocks(WeightFormat::kQ8_K, n, rng, true, false);
        if (extreme_w) make_extreme_weights(c.weight, w);
        if (extreme_a) make_extreme_activations(a);
        const float got = c.dot(w.data(), a.data(), n);
        const float want = c.scalar(w.data(), a.data(), n);
        ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want))
            << WeightFormatName(c.weight) << " n=" << n << " trial " << trial;
      }
    }
  }
}

// MatMul of K-quant weights takes the tiled kernels where the CPU has AVX2 and one dot product
// per output elsewhere; either way each output has the scalar twin's bits for the quantized
// activations, across its row chunks and token blocks (67 rows, 70 tokens).
TEST(Quant, KQuantMatMulEqualsScalarDotsBitForBit) {
  std::mt19937 rng(43);
  const int64_t rows = 67, cols = 512, tokens = 70;
  const struct {
    WeightFormat format;
    WeightFormat type;
    float (*dot)(const void*, const void*, int64_t);
  } cases[] = {{WeightFormat::kQ4_K, WeightFormat::kQ4_K, DotQ4_KQ8_K},
               {WeightFormat::kQ6_K, WeightFormat::kQ6_K, DotQ6_KQ8_K}};
  for (const auto& [format, type, dot] : cases) {
    Bytes w;
    for (int64_t r = 0; r < rows; ++r) {
      const Bytes row = Quantize(type, RandomRow(cols, rng));
      w.insert(w.end(), row.begin(), row.end());
    }
    std::vector<float> x;
    Bytes a;
    for (int64_t t = 0; t < tokens; ++t) {
      const auto row = RandomRow(cols, rng);
      x.insert(x.end(), row.begin(), row.end());
      const Bytes q = Quantize(WeightFormat::kQ8_K, row);
      a.insert(a.end(), q.begin(), q.end());
    }
    const WeightMatrix m{format, w.data(), rows, cols};
    std::vector<float> out(static_cast<size_t>(rows * tokens));
    MatMul(m, x.data(), tokens, out.data());
    const size_t a_bytes = QuantRowBytes(WeightFormat::kQ8_K, cols);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_EQ(std::bit_cast<uint32_t>(out[t * rows + r]),
                  std::bit_cast<uint32_t>(dot(m.row(r), &a[t * a_bytes], cols)))
            << WeightFormatName(type) << " at " << r << "," << t;
      }
    }
  }
}

}  // namespace
}  // namespace starling
