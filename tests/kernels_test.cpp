// Fast kernels against their scalar twins, on seeded random inputs, for every instruction
// set this machine can run; and the thread pool's partitioning.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dot.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "quant/weight.h"

namespace starling {
namespace {

uint16_t ToBFloat16(float f) {  // truncation is fine: any bf16 value is a valid input
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t ToHalf(float f) {  // normal range only (|f| < 4): exponent rebias, mantissa cut
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xFF) - 127 + 15;
  if (exponent <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | static_cast<uint32_t>(exponent) << 10 |
                               ((bits >> 13) & 0x3FF));
}

struct Row {
  std::vector<float> f32;
  std::vector<uint16_t> f16, bf16;
  const void* Data(DType t) const {
    return t == DType::kF32   ? static_cast<const void*>(f32.data())
           : t == DType::kF16 ? static_cast<const void*>(f16.data())
                              : static_cast<const void*>(bf16.data());
  }
};

Row RandomRow(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  Row r;
  for (int64_t i = 0; i < n; ++i) {
    const float v = u(rng);
    r.f32.push_back(v);
    r.f16.push_back(ToHalf(v));
    r.bf16.push_back(ToBFloat16(v));
  }
  return r;
}

TEST(Kernels, HalfAndBFloat16Conversions) {
  EXPECT_EQ(HalfToFloat(0x3C00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xC000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7C00)));
  EXPECT_EQ(BFloat16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(BFloat16ToFloat(0xC0A0), -5.0f);
}

TEST(Kernels, Avx2DotMatchesScalarTwin) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2+FMA+F16C";
  std::mt19937 rng(42);
  for (const int64_t n : {1, 7, 8, 9, 31, 32, 33, 64, 100, 4096, 4099, 14336}) {
    const Row w = RandomRow(n, rng);
    const Row x = RandomRow(n, rng);
    for (const DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
      const float scalar = DotRowScalar(t, w.Data(t), x.f32.data(), n);
      const float simd = DotRowAvx2(t, w.Data(t), x.f32.data(), n);
      // Same products, different summation order: each float32 partial sum can be off by
      // 2^-24 of its magnitude, so the results agree to ~n * 2^-24 * sum|w x|; 1e-6 * n of
      // the absolute sum is a safe, still tight bound.
      double magnitude = 0;
      for (int64_t i = 0; i < n; ++i) magnitude += std::abs(double{w.f32[i]} * x.f32[i]);
      EXPECT_NEAR(simd, scalar, 1e-6 * static_cast<double>(n) * magnitude / 64 + 1e-6)
          << "n " << n << " dtype " << DTypeName(t);
    }
  }
}

// A cache as Session stores it: F32 as is, F16 rounded to nearest even (FloatToHalf).
template <DType kCache>
std::vector<CacheElement<kCache>> ToCache(const std::vector<float>& x) {
  std::vector<CacheElement<kCache>> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if constexpr (kCache == DType::kF16) {
      out[i] = FloatToHalf(x[i]);
    } else {
      out[i] = x[i];
    }
  }
  return out;
}

// One row against several tokens: each output is the single dot's bits, for every tile
// remainder (tiles of 3) and every length class (steps of 32, of 8, scalar tail).
TEST(Kernels, Avx2DotRowsEqualSingleDotsBitForBit) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2+FMA+F16C";
  std::mt19937 rng(43);
  for (const int64_t n : {1, 8, 9, 33, 100, 4099}) {
    const Row w = RandomRow(n, rng);
    for (int64_t tokens = 1; tokens <= 7; ++tokens) {
      const size_t x_stride = static_cast<size_t>(n) + 5;
      std::vector<float> x(x_stride * static_cast<size_t>(tokens));
      for (int64_t t = 0; t < tokens; ++t) {
        const Row row = RandomRow(n, rng);
        std::copy(row.f32.begin(), row.f32.end(),
                  x.begin() + static_cast<std::ptrdiff_t>(t * x_stride));
      }
      for (const DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
        const int64_t out_stride = 3;
        std::vector<float> out(static_cast<size_t>(tokens * out_stride), -1.0f);
        DotRowsAvx2(type, w.Data(type), x.data(), x_stride, tokens, n, out.data(), out_stride);
        for (int64_t t = 0; t < tokens; ++t) {
          const float want = DotRowAvx2(type, w.Data(type), x.data() + t * x_stride, n);
          ASSERT_EQ(std::bit_cast<uint32_t>(out[t * out_stride]), std::bit_cast<uint32_t>(want))
              << "n " << n << " tokens " << tokens << " token " << t << " " << DTypeName(type);
          EXPECT_EQ(out[t * out_stride + 1], -1.0f) << "wrote between outputs";
        }
      }
    }
  }
}

// Attention of one head against a double-precision reference, scalar twin and AVX2, for a
// cache of kCache: head dims with 64-wide, 8-wide and scalar parts, windows not starting at
// 0, keys and values in rows of several heads.
template <DType kCache>
void ExpectAttentionHeadsMatchDoubleReference() {
  SCOPED_TRACE(DTypeName(kCache));
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t head_dim : {4, 12, 64, 80, 128}) {
    for (int64_t count : {1, 7, 300}) {
      const int64_t kv_stride = 3 * head_dim, first = 5, last = first + count - 1;
      std::vector<float> q(head_dim), keys((last + 1) * kv_stride), values(keys.size());
      for (float& v : q) v = normal(rng);
      for (float& v : keys) v = normal(rng);
      for (float& v : values) v = normal(rng);
      const auto cached_keys = ToCache<kCache>(keys), cached_values = ToCache<kCache>(values);
      // Reference in double, from the keys and values as the cache holds them (for F16, the
      // rounded ones): the kernels are held to their float32 arithmetic alone, whatever the
      // cache type, so the same tight bound serves both.
      const auto key = [&](int64_t j, int64_t d) {
        return double{CacheToFloat<kCache>(cached_keys[(first + j) * kv_stride + d])};
      };
      const auto value = [&](int64_t j, int64_t d) {
        return double{CacheToFloat<kCache>(cached_values[(first + j) * kv_stride + d])};
      };
      std::vector<double> p(count), want(head_dim, 0.0);
      double max = -INFINITY, total = 0;
      for (int64_t j = 0; j < count; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < head_dim; ++d) dot += double{q[d]} * key(j, d);
        p[j] = dot / std::sqrt(static_cast<double>(head_dim));
        max = std::max(max, p[j]);
      }
      for (double& v : p) total += v = std::exp(v - max);
      for (int64_t j = 0; j < count; ++j) {
        for (int64_t d = 0; d < head_dim; ++d) want[d] += p[j] / total * value(j, d);
      }
      const double want_lse = max + std::log(total);
      using Head = void (*)(const float*, const CacheElement<kCache>*, const CacheElement<kCache>*,
                            int64_t, int64_t, int64_t, int64_t, float*, float*, float*);
      std::vector<std::pair<Head, const char*>> heads = {{AttentionHead<kCache>, "scalar"}};
      if (CpuHasAvx2()) heads.emplace_back(AttentionHeadAvx2<kCache>, "avx2");
      for (const auto& [head, name] : heads) {
        std::vector<float> scores(count), out(head_dim + 1, 7.0f);
        float lse = 0.0f;
        head(q.data(), cached_keys.data(), cached_values.data(), kv_stride, head_dim, first, last,
             scores.data(), out.data(), &lse);
        // The log-sum-exp training saves: scores of size ~ |q||k|/sqrt(Dh) ~ 1 carry float
        // errors ~ Dh * 2^-24 relative, and the log of a sum of up to 300 terms a few ulp: 1e-5
        // absolute on values of size ~ log(count) + max.
        EXPECT_NEAR(lse, want_lse, 1e-5)
            << "head_dim=" << head_dim << " count=" << count << " " << name;
        for (int64_t d = 0; d < head_dim; ++d) {
          // Outputs are convex combinations of N(0, 1) values; the scores' float errors
          // (~ head_dim * 2^-24 * |q||k|, scores of size ~ 1) move the weights by ~1e-6
          // relative: 2e-5 leaves room.
          ASSERT_NEAR(out[d], want[d], 2e-5)
              << "head_dim=" << head_dim << " count=" << count << " d=" << d << " " << name;
        }
        EXPECT_EQ(out[head_dim], 7.0f) << "wrote past the head";
        if constexpr (kCache == DType::kF16) {
          // One piece of code for both cache types: the F16 kernels on half bits compute
          // exactly what the F32 ones compute on the same values widened. (Not the AVX2 dots'
          // scalar tail, head_dim % 8 != 0: the compiler may fuse its multiply-adds for one
          // element type and not the other, both within the bound above.)
          if (std::string(name) == "avx2" && head_dim % 8 != 0) continue;
          std::vector<float> wide_keys(keys.size()), wide_values(values.size());
          for (size_t i = 0; i < keys.size(); ++i) {
            wide_keys[i] = HalfToFloat(cached_keys[i]);
            wide_values[i] = HalfToFloat(cached_values[i]);
          }
          const auto f32 = std::string(name) == "avx2" ? AttentionHeadAvx2<DType::kF32>
                                                       : AttentionHead<DType::kF32>;
          std::vector<float> f32_out(head_dim);
          f32(q.data(), wide_keys.data(), wide_values.data(), kv_stride, head_dim, first, last,
              scores.data(), f32_out.data(), nullptr);
          for (int64_t d = 0; d < head_dim; ++d) {
            ASSERT_EQ(out[d], f32_out[d])
                << "head_dim=" << head_dim << " count=" << count << " d=" << d << " " << name;
          }
        }
      }
    }
  }
}

TEST(Kernels, AttentionHeadMatchesDoubleReference) {
  ExpectAttentionHeadsMatchDoubleReference<DType::kF32>();
  ExpectAttentionHeadsMatchDoubleReference<DType::kF16>();
}

// Grouped-query attention (several query heads over one key/value head) against the per-head
// kernels and a double-precision reference: the AVX2 group kernel must give each head
// AttentionHeadAvx2's bits, the scalar twin AttentionHead's. Group sizes with and without a
// lone last head, head dims with 32-wide, 8-wide and scalar parts (12: no tiles of keys
// at all), windows not starting at 0, lengths 1..40 (every remainder of the key tiles and of
// the value blocks) and 300 (several value blocks); q and out rows with gaps between heads.
template <DType kCache>
void ExpectAttentionGroupsMatchHeads() {
  SCOPED_TRACE(DTypeName(kCache));
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<int64_t> counts;
  for (int64_t count = 1; count <= 40; ++count) counts.push_back(count);
  counts.push_back(300);
  for (const int64_t head_dim : {12, 64, 80, 128}) {
    for (const int64_t group : {1, 2, 3, 4, 8}) {
      for (const int64_t count : counts) {
        const int64_t first = 3, last = first + count - 1, kv_stride = 2 * head_dim + 8;
        const int64_t q_stride = head_dim + 4, out_stride = head_dim + 3;
        std::vector<float> q(group * q_stride), keys((last + 1) * kv_stride), values(keys.size());
        for (float& v : q) v = normal(rng);
        for (float& v : keys) v = normal(rng);
        for (float& v : values) v = normal(rng);
        const auto cached_keys = ToCache<kCache>(keys), cached_values = ToCache<kCache>(values);
        const auto trace = "head_dim=" + std::to_string(head_dim) +
                           " group=" + std::to_string(group) + " count=" + std::to_string(count);

        // The double reference of head h, from the cache's values (as in the test above).
        const auto reference = [&](int64_t h) {
          std::vector<double> p(count), want(head_dim, 0.0);
          double max = -INFINITY, total = 0;
          for (int64_t j = 0; j < count; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < head_dim; ++d) {
              dot += double{q[h * q_stride + d]} *
                     CacheToFloat<kCache>(cached_keys[(first + j) * kv_stride + d]);
            }
            p[j] = dot / std::sqrt(static_cast<double>(head_dim));
            max = std::max(max, p[j]);
          }
          for (double& v : p) total += v = std::exp(v - max);
          for (int64_t j = 0; j < count; ++j) {
            for (int64_t d = 0; d < head_dim; ++d) {
              want[d] +=
                  p[j] / total * CacheToFloat<kCache>(cached_values[(first + j) * kv_stride + d]);
            }
          }
          return want;
        };

        using Group = void (*)(const float*, int64_t, int64_t, const CacheElement<kCache>*,
                               const CacheElement<kCache>*, int64_t, int64_t, int64_t, int64_t,
                               float*, float*, int64_t, float*);
        using Head =
            void (*)(const float*, const CacheElement<kCache>*, const CacheElement<kCache>*,
                     int64_t, int64_t, int64_t, int64_t, float*, float*, float*);
        std::vector<std::tuple<Group, Head, const char*>> kernels = {
            {AttentionGroup<kCache>, AttentionHead<kCache>, "scalar"}};
        if (CpuHasAvx2()) {
          kernels.emplace_back(AttentionGroupAvx2<kCache>, AttentionHeadAvx2<kCache>, "avx2");
        }
        for (const auto& [group_kernel, head_kernel, name] : kernels) {
          SCOPED_TRACE(trace + " " + name);
          std::vector<float> scores(group * count), out(group * out_stride, 7.0f);
          group_kernel(q.data(), q_stride, group, cached_keys.data(), cached_values.data(),
                       kv_stride, head_dim, first, last, scores.data(), out.data(), out_stride,
                       nullptr);
          for (int64_t h = 0; h < group; ++h) {
            std::vector<float> head_scores(count), head_out(head_dim);
            head_kernel(q.data() + h * q_stride, cached_keys.data(), cached_values.data(),
                        kv_stride, head_dim, first, last, head_scores.data(), head_out.data(),
                        nullptr);
            const std::vector<double> want = reference(h);
            for (int64_t d = 0; d < head_dim; ++d) {
              const float got = out[h * out_stride + d];
              ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(head_out[d]))
                  << "head " << h << " d=" << d;
              ASSERT_NEAR(got, want[d], 2e-5) << "head " << h << " d=" << d;  // as above
            }
            for (int64_t d = head_dim; d < out_stride; ++d) {
              EXPECT_EQ(out[h * out_stride + d], 7.0f) << "wrote between heads";
            }
          }
        }
      }
    }
  }
}

TEST(Kernels, AttentionGroupEqualsHeadsBitForBit) {
  ExpectAttentionGroupsMatchHeads<DType::kF32>();
  ExpectAttentionGroupsMatchHeads<DType::kF16>();
}

// The F16C row conversion the F16 KV cache stores with gives FloatToHalf's bits: ties,
// subnormals, overflow, infinities, zeros, the default NaN, and every tail length.
TEST(Kernels, FloatToHalfRowAvx2MatchesFloatToHalf) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2/F16C";
  // Zeros, ties to even (down, up), the largest half, overflow to inf, infinities, the default
  // NaN, subnormal halves and their ties, the largest subnormal, underflow to zero.
  std::vector<float> x = {0.0f,
                          -0.0f,
                          1.0f,
                          1.0f + 0x1p-11f,
                          1.0f + 3 * 0x1p-11f,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          -1e10f,
                          INFINITY,
                          -INFINITY,
                          NAN,
                          0x1p-24f,
                          0x1p-25f,
                          1.5f * 0x1p-24f,
                          0x1p-14f - 0x1p-25f,
                          0x1p-14f - 0x1p-24f,
                          1e-10f,
                          -1e-30f,
                          0x1p-149f};
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 100000; ++i) {
    // Random bit patterns across every exponent (NaNs with payloads excluded: F16C keeps
    // part of the payload, FloatToHalf gives the default NaN), and values of attention's size.
    uint32_t b = bits(rng);
    if ((b & 0x7F800000u) == 0x7F800000u) b &= 0xFF800000u;
    float f;
    std::memcpy(&f, &b, 4);
    x.push_back(f);
    x.push_back(std::ldexp(static_cast<float>(bits(rng)) / 4294967296.0f - 0.5f, i % 40 - 20));
  }
  for (size_t n = 0; n <= 17; ++n) {  // tails
    std::vector<uint16_t> out(n + 1, 0xABCD);
    FloatToHalfRowAvx2(x.data(), static_cast<int64_t>(n), out.data());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], FloatToHalf(x[i])) << "n=" << n << " i=" << i;
    EXPECT_EQ(out[n], 0xABCD) << "wrote past the row";
  }
  std::vector<uint16_t> out(x.size());
  FloatToHalfRowAvx2(x.data(), static_cast<int64_t>(x.size()), out.data());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(out[i], FloatToHalf(x[i])) << std::hexfloat << x[i] << " at " << i;
  }
}

// The ulp of the float binade holding |v| (2^-149 for subnormals): the unit of ExpFast's bounds.
double FloatUlp(double v) {
  int exponent = 0;
  std::frexp(v, &exponent);  // |v| = m 2^exponent, m in [1/2, 1)
  return std::ldexp(1.0, std::max(exponent - 24, -149));
}

// Inputs for ExpFast: every 101st float of [-104, 89] by bit pattern (all binades), uniform
// values over it, every float near the overflow threshold, the subnormal boundary and the
// underflow to 0, and the edges.
std::vector<float> ExpInputs() {
  std::vector<float> x = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          0x1p-149f,
                          -0x1p-149f,
                          0x1p-126f,
                          88.0f,
                          88.72283172607422f,
                          88.72283935546875f,
                          89.0f,
                          89.5f,
                          1000.0f,
                          -87.33654f,
                          -103.97208f,
                          -103.9721f,
                          -104.0f,
                          -104.5f,
                          -1000.0f,
                          INFINITY,
                          -INFINITY,
                          NAN,
                          -NAN,
                          FLT_MAX,
                          -FLT_MAX};
  for (uint32_t b = 0; b <= std::bit_cast<uint32_t>(89.0f); b += 101) {
    x.push_back(std::bit_cast<float>(b));
  }
  for (uint32_t b = 0x80000000u; b <= std::bit_cast<uint32_t>(-104.0f); b += 101) {
    x.push_back(std::bit_cast<float>(b));
  }
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> uniform(-104.0f, 89.0f);
  for (int i = 0; i < 2000000; ++i) x.push_back(uniform(rng));
  for (const auto& [from, to] : {std::pair{88.70f, 88.73f}, std::pair{-87.36f, -87.32f},
                                 std::pair{-103.99f, -103.95f}, std::pair{-0.36f, 0.36f}}) {
    for (float v = from; v <= to; v = std::nextafter(v, INFINITY)) {
      x.push_back(v);
      if (std::abs(v) < 0.3f) v += 1e-5f;  // a sample, not all 2^30 floats near 0
    }
  }
  return x;
}

// ExpFast against e^x in double: within kExpUlps of it in float ulps (so at most one float
// away from the correctly rounded value) for normal results; subnormal results within one
// ulp (2^-149), with no flush to zero; overflow exactly where the correctly rounded value is
// +inf; and the special values.
TEST(Kernels, ExpFastMatchesDoubleExp) {
  constexpr double kExpUlps = 1.0;  // the observed maximum is printed below
  double worst = 0, worst_at = 0;
  int64_t not_correctly_rounded = 0, count = 0;
  for (const float x : ExpInputs()) {
    if (std::isnan(x) || std::isinf(x)) continue;
    const float got = ExpFast(x);
    const double want = std::exp(static_cast<double>(x));
    ++count;
    if (got != static_cast<float>(want)) ++not_correctly_rounded;
    if (static_cast<float>(want) == INFINITY) {
      ASSERT_EQ(got, INFINITY) << std::hexfloat << x;
      continue;
    }
    ASSERT_TRUE(std::isfinite(got)) << std::hexfloat << x;
    const double error = std::abs(static_cast<double>(got) - want) / FloatUlp(want);
    if (want < 0x1p-126) {
      ASSERT_LE(error, 1.0) << std::hexfloat << "subnormal e^" << x << " = " << got;
      continue;
    }
    if (error > worst) worst = error, worst_at = x;
    ASSERT_LE(error, kExpUlps) << std::hexfloat << "e^" << x << " = " << got << " not " << want;
  }
  std::printf(
      "ExpFast over %lld inputs: max error %.3f ulp (at x = %.9g), %lld (%.2f%%) not "
      "correctly rounded\n",
      static_cast<long long>(count), worst, worst_at, static_cast<long long>(not_correctly_rounded),
      100.0 * static_cast<double>(not_correctly_rounded) / static_cast<double>(count));

  EXPECT_EQ(ExpFast(0.0f), 1.0f);
  EXPECT_EQ(ExpFast(-0.0f), 1.0f);
  EXPECT_EQ(ExpFast(0x1p-149f), 1.0f);
  EXPECT_EQ(ExpFast(-INFINITY), 0.0f);
  EXPECT_EQ(ExpFast(-104.0f), 0.0f);
  EXPECT_EQ(ExpFast(-1e30f), 0.0f);
  EXPECT_EQ(ExpFast(-103.9f), 0x1p-149f);  // e^-103.9 = 1.07 2^-149: the smallest subnormal
  EXPECT_EQ(ExpFast(INFINITY), INFINITY);
  EXPECT_EQ(ExpFast(1e30f), INFINITY);
  EXPECT_EQ(ExpFast(88.72283935546875f), INFINITY);  // the least float with e^x > FLT_MAX
  EXPECT_GT(ExpFast(88.72283172607422f), 3.4e38f);   // the float below it: finite
  EXPECT_LE(ExpFast(88.72283172607422f), FLT_MAX);
  EXPECT_TRUE(std::isnan(ExpFast(NAN)));
  EXPECT_TRUE(std::isnan(ExpFast(-NAN)));
}

// ExpRowAvx2's lanes are ExpFast: the same bits on the sweep above, on random bit patterns of
// every exponent (NaNs: NaN both), and for every tail length.
TEST(Kernels, ExpRowAvx2MatchesExpFastBitForBit) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2+FMA";
  std::vector<float> x = ExpInputs();
  std::mt19937 rng(23);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 1000000; ++i) x.push_back(std::bit_cast<float>(bits(rng)));
  const auto same = [](float a, float b) {
    return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) ||
           (std::isnan(a) && std::isnan(b));
  };
  std::vector<float> out(x.size());
  ExpRowAvx2(x.data(), static_cast<int64_t>(x.size()), out.data());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_TRUE(same(out[i], ExpFast(x[i])))
        << std::hexfloat << "e^" << x[i] << ": " << out[i] << " vs " << ExpFast(x[i]);
  }
  for (int64_t n = 0; n <= 17; ++n) {
    std::vector<float> row(n + 1, 7.0f);
    ExpRowAvx2(x.data() + 1000, n, row.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(same(row[i], ExpFast(x[1000 + i]))) << n;
    EXPECT_EQ(row[n], 7.0f) << "wrote past the row";
  }
}

// SiluMulAvx2 computes SiluMul's operations per element: the same bits, every tail.
TEST(Kernels, SiluMulAvx2MatchesScalarBitForBit) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2+FMA";
  std::mt19937 rng(29);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t n : {0, 1, 7, 8, 9, 15, 16, 17, 100, 5632}) {
    std::vector<float> gate(n + 1, 7.0f), up(n);
    for (int64_t i = 0; i < n; ++i) gate[i] = normal(rng), up[i] = normal(rng);
    // Saturation, overflow of e^-g (g < -88.7: silu is -0), the infinities and NaN.
    const float edges[] = {90.0f, -90.0f, -88.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN, 0.0f};
    for (int64_t i = 0; i < n && i < 9; ++i) gate[(i * 7) % n] = edges[i];
    std::vector<float> want = gate, got = gate;
    SiluMul(want.data(), up.data(), n);
    SiluMulAvx2(got.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(want[i]) ||
                  (std::isnan(got[i]) && std::isnan(want[i])))
          << "n=" << n << " i=" << i << " gate=" << gate[i] << ": " << got[i] << " vs " << want[i];
    }
    EXPECT_EQ(got[n], 7.0f) << "wrote past the row";
  }
}

// Softmax and SoftmaxAvx2 against softmax in double of the same float differences x - max
// (the subtraction rounds alike in all three). Per entry, relative to the reference p: each
// exponential is within 1 ulp (2^-23 relative), a sum of m terms in float within (m - 1)
// 2^-24, the inverse and the product 2^-24 each, so |out - p| <= (2 + 2 + m + 1) 2^-24 p, with
// m = n for the scalar's index-order sum and m = ceil(n / 8) + 3 + 7 (a lane, the three adds
// across lanes, the scalar tail) for AVX2; plus 2^-149 for outputs that are subnormal.
TEST(Kernels, SoftmaxMatchesDoubleReference) {
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  double worst_scalar = 0, worst_avx2 = 0;  // in units of 2^-24 relative
  for (int64_t n : {1, 2, 7, 8, 9, 16, 31, 64, 300, 1000, 4097}) {
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<float> x(n);
      for (float& v : x) v = normal(rng) * static_cast<float>(trial + 1);
      if (n > 2) x[n / 2] = -INFINITY;           // masked: probability exactly 0
      if (trial == 3) x[0] = x[n - 1] + 200.0f;  // the others underflow
      float max_value = -INFINITY;
      for (const float v : x) max_value = std::max(max_value, v);
      std::vector<double> want(n);
      double total = 0;
      for (int64_t i = 0; i < n; ++i) total += want[i] = std::exp(double{x[i] - max_value});
      for (double& w : want) w /= total;

      std::vector<std::pair<void (*)(float*, int64_t), const char*>> kernels = {
          {Softmax, "scalar"}};
      if (CpuHasAvx2()) kernels.emplace_back(SoftmaxAvx2, "avx2");
      for (const auto& [softmax, name] : kernels) {
        const bool avx2 = std::string(name) == "avx2";
        const double terms = avx2 ? static_cast<double>((n + 7) / 8 + 10) : static_cast<double>(n);
        std::vector<float> got = x;
        softmax(got.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          const double error = std::abs(got[i] - want[i]);
          ASSERT_LE(error, (terms + 5) * 0x1p-24 * want[i] + 0x1p-149)
              << name << " n=" << n << " trial=" << trial << " i=" << i;
          if (want[i] > 0x1p-126) {
            double& worst = avx2 ? worst_avx2 : worst_scalar;
            worst = std::max(worst, error / want[i] / 0x1p-24);
          }
        }
        if (n > 2) {
          EXPECT_EQ(got[n / 2], 0.0f) << name;
        }
        if (avx2 && n < 8) {  // no lanes: the scalar's operations exactly
          std::vector<float> scalar = x;
          Softmax(scalar.data(), n);
          for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], scalar[i]) << n << " " << i;
        }
      }
    }
  }
  std::printf("Softmax: max relative error %.1f (scalar), %.1f (avx2) x 2^-24\n", worst_scalar,
              worst_avx2);
}

TEST(Kernels, MatMulMatchesReference) {
  std::mt19937 rng(7);
  const int64_t rows = 67, cols = 96, tokens = 5;
  for (const DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    const Row w = RandomRow(rows * cols, rng);
    const Row x = RandomRow(tokens * cols, rng);
    const WeightFormat format = t == DType::kF32   ? WeightFormat::kF32
                                : t == DType::kF16 ? WeightFormat::kF16
                                                   : WeightFormat::kBF16;
    const WeightMatrix m{format, w.Data(t), rows, cols};
    std::vector<float> fast(rows * tokens), reference(rows * tokens);
    MatMul(m, x.f32.data(), tokens, fast.data());
    MatMulReference(m, x.f32.data(), tokens, reference.data());
    for (int64_t i = 0; i < rows * tokens; ++i) {
      // |w x| <= 4 per term, 96 terms: float32 reordering error is well below 1e-4.
      ASSERT_NEAR(fast[i], reference[i], 1e-4) << "index " << i << " dtype " << DTypeName(t);
    }
  }
}

TEST(ThreadPool, EveryIndexExactlyOnceForAnyShape) {
  for (const int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (const int64_t n : {0, 1, 5, 16, 17, 1000}) {
      for (const int64_t grain : {1, 4, 16, 2000}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end, int thread) {
          ASSERT_LT(thread, threads);
          if (end < n) {
            ASSERT_EQ(end % grain, 0);  // boundaries on whole grains
          }
          for (int64_t i = begin; i < end; ++i) hits[i]++;
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << grain;
      }
    }
  }
}

TEST(ThreadPool, RepeatedJobsDoNotRace) {
  ThreadPool pool(4);
  std::atomic<int64_t> sum{0};
  for (int job = 0; job < 2000; ++job) {
    pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end, int) { sum += end - begin; });
  }
  EXPECT_EQ(sum.load(), 2000 * 64);
}

TEST(ThreadPool, CallersOnSeveralThreadsTakeTurns) {
  // The server's engine thread and a reward request may both run matmuls on the global pool.
  ThreadPool pool(3);
  std::atomic<int64_t> sums[2] = {0, 0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 2; ++c) {
    callers.emplace_back([&, c] {
      for (int job = 0; job < 500; ++job) {
        pool.ParallelFor(90, 1, [&](int64_t begin, int64_t end, int) { sums[c] += end - begin; });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(sums[0].load(), 500 * 90);
  EXPECT_EQ(sums[1].load(), 500 * 90);
}

TEST(ThreadPool, AnExceptionInAnyThreadReachesTheCallerAndThePoolGoesOn) {
  // Thrown on a worker it ended the process (std::terminate); thrown on the caller's part it
  // left the workers running on the caller's unwound stack.
  ThreadPool pool(4);
  for (const int64_t bad : {0, 1, 37, 63}) {  // the grain the caller or a worker may take
    std::atomic<int64_t> ran{0};
    EXPECT_THROW(pool.ParallelFor(64, 1,
                                  [&](int64_t begin, int64_t, int) {
                                    if (begin == bad) throw Error("grain failed");
                                    ++ran;
                                  }),
                 Error)
        << bad;
    EXPECT_LT(ran.load(), 64);
    std::atomic<int64_t> sum{0};  // the next job runs whole
    pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end, int) { sum += end - begin; });
    EXPECT_EQ(sum.load(), 64);
  }
}

}  // namespace
}  // namespace starling
