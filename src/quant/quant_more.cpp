// Scalar reference implementations of Q4_1, Q5_0, Q5_1 (32-element blocks) and Q2_K, Q3_K, Q5_K
// (256-element super-blocks), the formats community GGUF files hold besides Q8_0/Q4_0/Q4_K/Q6_K.
// Quantizers follow ggml's quantize_row_*_ref operation for operation (quant.cpp says why);
// dequantizers are ggml's dequantize_row_* element for element; the dot products are the
// scalar twins of quant.h's contract.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/kernels.h"
#include "quant/quant.h"
#include "quant/rows.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace starling {
namespace {

constexpr int kQK = 256;

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The 5-bit quants of a Q5_0/Q5_1 block in element order: q[32] in [0, 31].
template <typename Block>
void Unpack5(const Block& b, int* q) {
  const uint32_t qh = LoadU32(b.qh);
  for (int j = 0; j < 16; ++j) {
    q[j] = (b.qs[j] & 0xF) | static_cast<int>((qh >> j & 1u) << 4);
    q[j + 16] = (b.qs[j] >> 4) | static_cast<int>((qh >> (j + 16) & 1u) << 4);
  }
}

// Q4_1 / Q5_1: d = (max - min) / nmax, q = trunc((x - min) / d + 0.5) (clipped to 15 for Q4_1,
// as ggml; Q5_1 does not clip).
template <typename Block, int kBits>
void QuantizeAffine(const float* x, int64_t n, Block* y) {
  constexpr int nmax = (1 << kBits) - 1;
  for (int64_t i = 0; i < n / 32; ++i, x += 32) {
    float min = FLT_MAX;
    float max = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / static_cast<float>(nmax);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    y[i].m = FloatToHalf(min);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const float x0 = (x[j] - min) * id;
      const float x1 = (x[j + 16] - min) * id;
      int q0 = static_cast<int8_t>(x0 + 0.5f);  // ggml truncates through int8_t (Q4_1)
      int q1 = static_cast<int8_t>(x1 + 0.5f);
      if constexpr (kBits == 4) {
        q0 = std::min(15, q0);
        q1 = std::min(15, q1);
      } else {
        q0 = static_cast<uint8_t>(x0 + 0.5f);
        q1 = static_cast<uint8_t>(x1 + 0.5f);
        qh |= static_cast<uint32_t>((q0 & 0x10) >> 4) << j;
        qh |= static_cast<uint32_t>((q1 & 0x10) >> 4) << (j + 16);
      }
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0xF) | (q1 & 0xF) << 4);
    }
    if constexpr (kBits == 5) std::memcpy(y[i].qh, &qh, 4);
  }
}

}  // namespace

namespace rows {

void QuantizeQ4_1(const float* x, int64_t n, void* out) {
  QuantizeAffine<BlockQ4_1, 4>(x, n, static_cast<BlockQ4_1*>(out));
}

void DequantizeQ4_1(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ4_1*>(in);
  for (int64_t i = 0; i < n / 32; ++i, out += 32) {
    const float d = HalfToFloat(b[i].d);
    const float m = HalfToFloat(b[i].m);
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>(b[i].qs[j] & 0xF) * d + m;
      out[j + 16] = static_cast<float>(b[i].qs[j] >> 4) * d + m;
    }
  }
}

void QuantizeQ5_0(const float* x, int64_t n, void* out) {
  auto* y = static_cast<BlockQ5_0*>(out);
  for (int64_t i = 0; i < n / 32; ++i, x += 32) {
    // As Q4_0: the value of largest magnitude (the first on ties) maps to -16.
    const float d = LargestMagnitude(x, 32) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
      const int q1 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 16.5f)));
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0xF) | (q1 & 0xF) << 4);
      qh |= static_cast<uint32_t>((q0 & 0x10) >> 4) << j;
      qh |= static_cast<uint32_t>((q1 & 0x10) >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void DequantizeQ5_0(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ5_0*>(in);
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i, out += 32) {
    const float d = HalfToFloat(b[i].d);
    Unpack5(b[i], q);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(q[j] - 16) * d;
  }
}

void QuantizeQ5_1(const float* x, int64_t n, void* out) {
  QuantizeAffine<BlockQ5_1, 5>(x, n, static_cast<BlockQ5_1*>(out));
}

void DequantizeQ5_1(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ5_1*>(in);
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i, out += 32) {
    const float d = HalfToFloat(b[i].d);
    const float m = HalfToFloat(b[i].m);
    Unpack5(b[i], q);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(q[j]) * d + m;
  }
}

// ---- Q2_K

void QuantizeQ2_K(const float* x, int64_t n, void* out) {
  auto* y = static_cast<BlockQ2_K*>(out);
  uint8_t L[kQK];
  uint8_t Laux[16];
  float weights[16];
  float mins[16];
  float scales[16];
  constexpr float q4scale = 15.0f;
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    BlockQ2_K& b = y[i];
    float max_scale = 0;  // the mins are subtracted, so the scales are >= 0
    float max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = MakeQkx2Quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f,
                                 0.1f, 15, true);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < 16; ++j)
        b.scales[j] = static_cast<uint8_t>(NearestInt(iscale * scales[j]));
      b.d = FloatToHalf(max_scale / q4scale);
    } else {
      std::memset(b.scales, 0, sizeof(b.scales));
      b.d = FloatToHalf(0.0f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < 16; ++j) {
        b.scales[j] = static_cast<uint8_t>(b.scales[j] | NearestInt(iscale * mins[j]) << 4);
      }
      b.dmin = FloatToHalf(max_min / q4scale);
    } else {
      b.dmin = FloatToHalf(0.0f);
    }
    // Requantize against the stored scales; a zero scale keeps the fit's quants, as ggml.
    for (int j = 0; j < 16; ++j) {
      const float d = HalfToFloat(b.d) * static_cast<float>(b.scales[j] & 0xF);
      if (d == 0.0f) continue;
      const float dm = HalfToFloat(b.dmin) * static_cast<float>(b.scales[j] >> 4);
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] =
            static_cast<uint8_t>(std::clamp(NearestInt((x[16 * j + l] + dm) / d), 0, 3));
      }
    }
    for (int h = 0; h < 2; ++h) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t* Lh = L + 128 * h + l;
        b.qs[32 * h + l] = static_cast<uint8_t>(Lh[0] | Lh[32] << 2 | Lh[64] << 4 | Lh[96] << 6);
      }
    }
  }
}

void DequantizeQ2_K(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ2_K*>(in);
  for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
    const float d = HalfToFloat(b[i].d);
    const float dmin = HalfToFloat(b[i].dmin);
    for (int e = 0; e < kQK; ++e) {
      const uint8_t sc = b[i].scales[e / 16];
      const int q = b[i].qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
      // ggml: dl * q - ml with dl = d * (sc & 15) and ml = dmin * (sc >> 4).
      out[e] = d * static_cast<float>(sc & 0xF) * static_cast<float>(q) -
               dmin * static_cast<float>(sc >> 4);
    }
  }
}

// ---- Q3_K

namespace {

// ggml's make_q3_quants with do_rmse: L[i] in [0, 2 nmax) (stored + nmax) fitting x ~ scale *
// (L - nmax), improved coordinate by coordinate for up to 5 rounds.
float MakeQ3Quants(int n, int nmax, const float* x, int8_t* L) {
  const float max = LargestMagnitude(x, n);
  if (std::fabs(max) < 1e-15f) {  // GROUP_MAX_EPS: all zero
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l * l);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * static_cast<float>(L[i]);
      if (slx > 0) {
        float sl2 = suml2 - w * static_cast<float>(L[i] * L[i]);
        const int new_l = std::clamp(NearestInt(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l != L[i]) {
          slx += w * x[i] * static_cast<float>(new_l);
          sl2 += w * static_cast<float>(new_l * new_l);
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (n_changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

}  // namespace

void QuantizeQ3_K(const float* x, int64_t n, void* out) {
  auto* y = static_cast<BlockQ3_K*>(out);
  int8_t L[kQK];
  float scales[16];
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    BlockQ3_K& b = y[i];
    float max_scale = 0;
    float amax = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = MakeQ3Quants(16, 4, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    std::memset(b.scales, 0, sizeof(b.scales));
    if (max_scale != 0.0f) {
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) {
        // ggml stores nearest_int into an int8_t before clamping; |iscale * scale| <= 32.
        const int l =
            std::clamp<int>(static_cast<int8_t>(NearestInt(iscale * scales[j])), -32, 31) + 32;
        if (j < 8) {
          b.scales[j] = static_cast<uint8_t>(l & 0xF);
        } else {
          b.scales[j - 8] = static_cast<uint8_t>(b.scales[j - 8] | (l & 0xF) << 4);
        }
        b.scales[j % 4 + 8] = static_cast<uint8_t>(b.scales[j % 4 + 8] | (l >> 4) << (2 * (j / 4)));
      }
      b.d = FloatToHalf(1 / iscale);
    } else {
      b.d = FloatToHalf(0.0f);
    }
    int8_t sc[16];
    Q3_KScales(b.scales, sc);
    for (int j = 0; j < 16; ++j) {
      const float d = HalfToFloat(b.d) * static_cast<float>(sc[j]);
      if (d == 0.0f) continue;  // keeps the fit's quants, as ggml does
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] = static_cast<int8_t>(std::clamp(NearestInt(x[16 * j + l] / d), -4, 3) + 4);
      }
    }
    std::memset(b.hmask, 0, sizeof(b.hmask));
    for (int e = 0; e < kQK; ++e) {
      if (L[e] > 3) {
        b.hmask[e % 32] = static_cast<uint8_t>(b.hmask[e % 32] | 1 << (e / 32));
        L[e] = static_cast<int8_t>(L[e] - 4);
      }
    }
    for (int h = 0; h < 2; ++h) {
      for (int l = 0; l < 32; ++l) {
        const int8_t* Lh = L + 128 * h + l;
        b.qs[32 * h + l] = static_cast<uint8_t>(Lh[0] | Lh[32] << 2 | Lh[64] << 4 | Lh[96] << 6);
      }
    }
  }
}

void DequantizeQ3_K(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ3_K*>(in);
  int8_t sc[16];
  for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
    const float d = HalfToFloat(b[i].d);
    Q3_KScales(b[i].scales, sc);
    for (int e = 0; e < kQK; ++e) {
      const int low = b[i].qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
      const int high = b[i].hmask[e % 32] >> (e / 32) & 1;
      // ggml: dl * q with dl = d * (sc - 32) and q = low - (high ? 0 : 4).
      out[e] = d * static_cast<float>(sc[e / 16]) * static_cast<float>(low - (high ? 0 : 4));
    }
  }
}

// ---- Q5_K

void QuantizeQ5_K(const float* x, int64_t n, void* out) {
  auto* y = static_cast<BlockQ5_K*>(out);
  uint8_t L[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    BlockQ5_K& b = y[i];
    FitKQuantSuperBlock(x, 31, -0.5f, 15, b.scales, &b.d, &b.dmin, L);
    std::memset(b.qh, 0, sizeof(b.qh));
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        // The fifth bits of elements 64g + l and 64g + 32 + l are bits 2g and 2g + 1 of qh[l].
        const int l1 = L[64 * g + l];
        const int l2 = L[64 * g + 32 + l];
        b.qh[l] = static_cast<uint8_t>(b.qh[l] | (l1 >> 4) << (2 * g) | (l2 >> 4) << (2 * g + 1));
        b.qs[32 * g + l] = static_cast<uint8_t>((l1 & 0xF) | (l2 & 0xF) << 4);
      }
    }
  }
}

void DequantizeQ5_K(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ5_K*>(in);
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float d = HalfToFloat(b[i].d);
    const float dmin = HalfToFloat(b[i].dmin);
    for (int g = 0; g < 4; ++g) {
      for (int half = 0; half < 2; ++half) {
        uint8_t sc;
        uint8_t m;
        Q4_KScaleMin(b[i].scales, 2 * g + half, &sc, &m);
        const float d1 = d * sc;
        const float m1 = dmin * m;
        for (int l = 0; l < 32; ++l) {
          const int low = half == 0 ? b[i].qs[32 * g + l] & 0xF : b[i].qs[32 * g + l] >> 4;
          const int high = b[i].qh[l] >> (2 * g + half) & 1;
          *out++ = d1 * static_cast<float>(low + 16 * high) - m1;
        }
      }
    }
  }
}

}  // namespace rows

void Q3_KScales(const uint8_t* scales, int8_t* sc) {
  for (int k = 0; k < 16; ++k) {
    const int low = k < 8 ? scales[k] & 0xF : scales[k - 8] >> 4;
    const int high = scales[8 + k % 4] >> (2 * (k / 4)) & 3;
    sc[k] = static_cast<int8_t>((low | high << 4) - 32);
  }
}

// ---- Dot products with Q8_0 / Q8_K activations (quant.h's contract).

namespace {

// sum over blocks of float(sum_j q_w[j] q_a[j]) * (d_w d_a) [+ float(sum_j q_a[j]) * (m_w d_a)],
// q_w from unpack(block, q) with the offset already applied.
template <typename Block, typename Unpack, bool kAffine>
float DotSmallBlocks(const void* w, const void* a, int64_t n, Unpack unpack) {
  const auto* x = static_cast<const Block*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i) {
    unpack(x[i], q);
    int32_t sumi = 0;  // |sumi| <= 32 * 31 * 128: exact
    int32_t suma = 0;
    for (int j = 0; j < 32; ++j) {
      sumi += q[j] * y[i].qs[j];
      suma += y[i].qs[j];
    }
    const float da = HalfToFloat(y[i].d);
    sum += static_cast<float>(sumi) * (HalfToFloat(x[i].d) * da);
    if constexpr (kAffine) sum += static_cast<float>(suma) * (HalfToFloat(x[i].m) * da);
  }
  return sum;
}

}  // namespace

float DotQ4_1Q8_0(const void* w, const void* a, int64_t n) {
  FormatBlockCount(WeightFormat::kQ4_1, n);
  return DotSmallBlocks<BlockQ4_1, void (*)(const BlockQ4_1&, int*), true>(
      w, a, n, [](const BlockQ4_1& b, int* q) {
        for (int j = 0; j < 16; ++j) {
          q[j] = b.qs[j] & 0xF;
          q[j + 16] = b.qs[j] >> 4;
        }
      });
}

float DotQ5_0Q8_0(const void* w, const void* a, int64_t n) {
  FormatBlockCount(WeightFormat::kQ5_0, n);
  return DotSmallBlocks<BlockQ5_0, void (*)(const BlockQ5_0&, int*), false>(
      w, a, n, [](const BlockQ5_0& b, int* q) {
        Unpack5(b, q);
        for (int j = 0; j < 32; ++j) q[j] -= 16;
      });
}

float DotQ5_1Q8_0(const void* w, const void* a, int64_t n) {
  FormatBlockCount(WeightFormat::kQ5_1, n);
  return DotSmallBlocks<BlockQ5_1, void (*)(const BlockQ5_1&, int*), true>(
      w, a, n, [](const BlockQ5_1& b, int* q) { Unpack5(b, q); });
}

float DotQ2_KQ8_K(const void* w, const void* a, int64_t n) {
  const int64_t blocks = FormatBlockCount(WeightFormat::kQ2_K, n);
  const auto* x = static_cast<const BlockQ2_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    int32_t sumi = 0;  // |sumi| <= 256 * 15 * 3 * 128: exact
    int32_t summ = 0;
    for (int k = 0; k < 16; ++k) {
      int32_t part = 0;
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * k + l;
        const int q = x[i].qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
        part += q * y[i].qs[e];
      }
      sumi += (x[i].scales[k] & 0xF) * part;
      summ += (x[i].scales[k] >> 4) * y[i].bsums[k];
    }
    sum = rows::AddScaleMinBlock(sum, HalfToFloat(x[i].d), HalfToFloat(x[i].dmin), y[i].d, sumi,
                                 summ);
  }
  return sum;
}

float DotQ3_KQ8_K(const void* w, const void* a, int64_t n) {
  const int64_t blocks = FormatBlockCount(WeightFormat::kQ3_K, n);
  const auto* x = static_cast<const BlockQ3_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  int8_t sc[16];
  for (int64_t i = 0; i < blocks; ++i) {
    Q3_KScales(x[i].scales, sc);
    int32_t sumi = 0;  // |sumi| <= 256 * 32 * 4 * 128: exact
    for (int k = 0; k < 16; ++k) {
      int32_t part = 0;
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * k + l;
        const int low = x[i].qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
        const int high = x[i].hmask[e % 32] >> (e / 32) & 1;
        part += (low - (high ? 0 : 4)) * y[i].qs[e];
      }
      sumi += sc[k] * part;
    }
    sum = std::fma(HalfToFloat(x[i].d) * y[i].d, static_cast<float>(sumi), sum);
  }
  return sum;
}

float DotQ5_KQ8_K(const void* w, const void* a, int64_t n) {
  const int64_t blocks = FormatBlockCount(WeightFormat::kQ5_K, n);
  const auto* x = static_cast<const BlockQ5_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    int32_t sumi = 0;  // |sumi| <= 256 * 63 * 31 * 128 < 2^31
    int32_t summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc;
      uint8_t m;
      Q4_KScaleMin(x[i].scales, j, &sc, &m);
      const int g = j / 2;
      const int half = j % 2;
      int32_t part = 0;
      for (int l = 0; l < 32; ++l) {
        const uint8_t byte = x[i].qs[32 * g + l];
        const int low = half == 0 ? byte & 0xF : byte >> 4;
        const int high = x[i].qh[l] >> j & 1;
        part += (low + 16 * high) * y[i].qs[32 * j + l];
      }
      sumi += sc * part;
      summ += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
    }
    sum = rows::AddScaleMinBlock(sum, HalfToFloat(x[i].d), HalfToFloat(x[i].dmin), y[i].d, sumi,
                                 summ);
  }
  return sum;
}

}  // namespace starling
