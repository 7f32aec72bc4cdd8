// Scalar reference implementations of the quantized block formats. The quantizers follow ggml's
// reference algorithms operation for operation (same float expressions in the same order), since
// any reordering changes rounding and thereby the bytes written.
#include "quant/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/kernels.h"
#include "quant/rows.h"

// Fusing a * b + c into one fma (which compilers do by default wherever the target has FMA, e.g.
// under -march=native) changes the quantizers' rounding and so their bytes; ggml's reference
// build does not fuse, and the K-quant dot products' fmas below are explicit.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace starling {
namespace {

constexpr int kQK = 256;  // elements per K-quant super-block

}  // namespace

namespace rows {

// Round to nearest, ties to even (the default rounding mode), as ggml's nearest_int: adding
// 1.5 * 2^23 leaves the rounded integer in the low mantissa bits. Valid for |x| < 2^22, which
// the callers guarantee for finite input; out-of-range values are clamped first so that they
// cannot wrap.
int NearestInt(float x) {
  const float clamped = std::clamp(x, -4194303.0f, 4194303.0f);
  const float shifted = clamped + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  return (bits & 0x007FFFFF) - 0x00400000;
}

float LargestMagnitude(const float* x, int n) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  return max;
}

// ---- Q8_0 / Q4_0

void QuantizeQ8_0(const float* x, int64_t n, void* out) {
  const int64_t blocks = n / 32;
  auto* y = static_cast<BlockQ8_0*>(out);
  for (int64_t i = 0; i < blocks; ++i, x += 32) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    // Quantize with 1/d of the float d, not of its fp16 rounding, as ggml does.
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    for (int j = 0; j < 32; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void QuantizeQ4_0(const float* x, int64_t n, void* out) {
  const int64_t blocks = n / 32;
  auto* y = static_cast<BlockQ4_0*>(out);
  for (int64_t i = 0; i < blocks; ++i, x += 32) {
    // The signed value of largest magnitude (the first one on ties) maps to q = 0, i.e. -8, so
    // the full range [-8, 7] is used on that value's side.
    const float d = LargestMagnitude(x, 32) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    for (int j = 0; j < 16; ++j) {
      // Truncation of a value >= 0: rounds ties up. The far side's +8 clips to 7.
      const int q0 = std::min(15, static_cast<int>(x[j] * id + 8.5f));
      const int q1 = std::min(15, static_cast<int>(x[j + 16] * id + 8.5f));
      y[i].qs[j] = static_cast<uint8_t>(q0 | q1 << 4);
    }
  }
}

// ---- Q4_K

float MakeQkx2Quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                     float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                     bool use_mad) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = NearestInt(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0;
    float sum_l2 = 0;
    float sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = NearestInt(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      const auto fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        std::memcpy(L, Laux, static_cast<size_t>(n));
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

void FitKQuantSuperBlock(const float* x, int nmax, float rmin, int nstep, uint8_t* scales,
                         uint16_t* d, uint16_t* dmin, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32];
  float mins[8];
  float sub_scales[8];
  float max_scale = 0;  // the mins are subtracted, so the scales are >= 0
  float max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xj = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xj[l] * xj[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xj[l]);
    sub_scales[j] =
        MakeQkx2Quants(32, nmax, xj, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
    max_scale = std::max(max_scale, sub_scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  // Quantize the 8 scales and mins to 6 bits against their maxima.
  std::memset(scales, 0, 12);
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; ++j) {
    // uint8_t first, then the clamp: this is ggml's order (it matters only for a negative
    // scale, which the fit does not produce for sane input).
    const auto ls =
        std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_scale * sub_scales[j])));
    const auto lm = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_min * mins[j])));
    if (j < 4) {
      scales[j] = ls;
      scales[j + 4] = lm;
    } else {
      scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | (lm & 0xF) << 4);
      scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  *d = FloatToHalf(max_scale / 63.0f);
  *dmin = FloatToHalf(max_min / 63.0f);
  // Requantize against the stored (rounded) scales and mins. A sub-block whose scale rounds to
  // zero keeps the fit's quants, as in ggml; they dequantize to -dmin * m either way.
  for (int j = 0; j < 8; ++j) {
    uint8_t sc;
    uint8_t m;
    Q4_KScaleMin(scales, j, &sc, &m);
    const float dj = HalfToFloat(*d) * sc;
    if (dj == 0.0f) continue;
    const float dm = HalfToFloat(*dmin) * m;
    for (int l = 0; l < 32; ++l) {
      const int q = NearestInt((x[32 * j + l] + dm) / dj);
      L[32 * j + l] = static_cast<uint8_t>(std::max(0, std::min(nmax, q)));
    }
  }
}

void QuantizeQ4_K(const float* x, int64_t n, void* out) {
  auto* y = static_cast<BlockQ4_K*>(out);
  uint8_t L[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    BlockQ4_K& b = y[i];
    FitKQuantSuperBlock(x, 15, -1.0f, 20, b.scales, &b.d, &b.dmin, L);
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        b.qs[32 * g + l] = static_cast<uint8_t>(L[64 * g + l] | L[64 * g + 32 + l] << 4);
      }
    }
  }
}

// ---- Q6_K

// ggml's make_qx_quants with rmse_type 1 and no importance weights: fits x[i] ~ scale * l with l
// in [-nmax, nmax - 1] (stored as l + nmax), weighting by x^2, over 19 candidate scales. The
// returned scale is negative when the largest-magnitude value is positive (it maps to -nmax).
namespace {

float MakeQxQuants(int n, int nmax, const float* x, int8_t* L) {
  const float max = LargestMagnitude(x, n);
  if (std::fabs(max) < 1e-15f) {  // ggml's GROUP_MAX_EPS: all zero
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const auto fnmax = static_cast<float>(nmax);
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = NearestInt(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    const auto fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(fnmax + 0.1f * static_cast<float>(is)) / max;
    sumlx = 0;
    suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = NearestInt(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      const auto fl = static_cast<float>(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = NearestInt(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

}  // namespace

void QuantizeQ6_K(const float* x, int64_t n, void* out) {
  const int64_t blocks = n / kQK;
  auto* y = static_cast<BlockQ6_K*>(out);
  int8_t L[kQK];
  float scales[16];
  for (int64_t i = 0; i < blocks; ++i, x += kQK) {
    BlockQ6_K& b = y[i];
    std::memset(&b, 0, sizeof(b));
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int k = 0; k < 16; ++k) {
      scales[k] = MakeQxQuants(16, 32, x + 16 * k, L + 16 * k);
      if (std::fabs(scales[k]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[k]);
        max_scale = scales[k];
      }
    }
    if (max_abs_scale < 1e-15f) continue;  // all zero: d = 0 and zero quants (memset above)
    // The largest-magnitude sub-block scale becomes -128; the others round into [-128, 127].
    const float iscale = -128.0f / max_scale;
    b.d = FloatToHalf(1 / iscale);
    for (int k = 0; k < 16; ++k) {
      b.scales[k] = static_cast<int8_t>(std::min(127, NearestInt(iscale * scales[k])));
    }
    for (int k = 0; k < 16; ++k) {
      const float d = HalfToFloat(b.d) * b.scales[k];
      if (d == 0.0f) continue;  // keeps the fit's quants, as ggml does
      for (int l = 0; l < 16; ++l) {
        const int q = NearestInt(x[16 * k + l] / d);
        L[16 * k + l] = static_cast<int8_t>(std::max(-32, std::min(31, q)) + 32);
      }
    }
    for (int h = 0; h < 2; ++h) {
      uint8_t* ql = b.ql + 64 * h;
      uint8_t* qh = b.qh + 32 * h;
      const int8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int q1 = Lh[l];
        const int q2 = Lh[l + 32];
        const int q3 = Lh[l + 64];
        const int q4 = Lh[l + 96];
        ql[l] = static_cast<uint8_t>((q1 & 0xF) | (q3 & 0xF) << 4);
        ql[l + 32] = static_cast<uint8_t>((q2 & 0xF) | (q4 & 0xF) << 4);
        qh[l] = static_cast<uint8_t>(q1 >> 4 | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6);
      }
    }
  }
}

// ---- Q8_K

void QuantizeQ8_K(const float* x, int64_t n, void* out) {
  const int64_t blocks = n / kQK;
  auto* y = static_cast<BlockQ8_K*>(out);
  for (int64_t i = 0; i < blocks; ++i, x += kQK) {
    BlockQ8_K& b = y[i];
    const float max = LargestMagnitude(x, kQK);
    if (max == 0.0f) {
      std::memset(&b, 0, sizeof(b));
      continue;
    }
    // -127 rather than -128 keeps every quant in [-127, 127] (ggml changed it for its SIMD code).
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK; ++j) {
      b.qs[j] = static_cast<int8_t>(std::min(127, NearestInt(iscale * x[j])));
    }
    for (int k = 0; k < 16; ++k) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[16 * k + l];
      b.bsums[k] = static_cast<int16_t>(sum);
    }
    b.d = 1 / iscale;
  }
}

}  // namespace rows

void UnpackQ6_K(const BlockQ6_K& b, int8_t* q) {
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b.ql + 64 * h;
    const uint8_t* qh = b.qh + 32 * h;
    int8_t* qo = q + 128 * h;
    for (int l = 0; l < 32; ++l) {
      qo[l] = static_cast<int8_t>(((ql[l] & 0xF) | (qh[l] & 3) << 4) - 32);
      qo[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (qh[l] >> 2 & 3) << 4) - 32);
      qo[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (qh[l] >> 4 & 3) << 4) - 32);
      qo[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4) - 32);
    }
  }
}

void Q4_KScaleMin(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((scales[j + 4] & 0xF) | (scales[j - 4] >> 6) << 4);
    *m = static_cast<uint8_t>((scales[j + 4] >> 4) | (scales[j] >> 6) << 4);
  }
}

void QuantizeRow(WeightFormat type, const float* x, int64_t n, void* out) {
  FormatBlockCount(type, n);  // checks n
  Traits(type).encode(x, n, out);
}

void DequantizeRow(WeightFormat type, const void* in, int64_t n, float* out) {
  FormatBlockCount(type, n);
  Traits(type).decode(in, n, out);
}

namespace rows {

void DequantizeQ8_0(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ8_0*>(in);
  for (int64_t i = 0; i < n / 32; ++i, out += 32) {
    const float d = HalfToFloat(b[i].d);
    for (int j = 0; j < 32; ++j) out[j] = b[i].qs[j] * d;
  }
}

void DequantizeQ4_0(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ4_0*>(in);
  for (int64_t i = 0; i < n / 32; ++i, out += 32) {
    const float d = HalfToFloat(b[i].d);
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>((b[i].qs[j] & 0xF) - 8) * d;
      out[j + 16] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void DequantizeQ4_K(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ4_K*>(in);
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float d = HalfToFloat(b[i].d);
    const float dmin = HalfToFloat(b[i].dmin);
    for (int g = 0; g < 4; ++g) {
      uint8_t sc;
      uint8_t m;
      Q4_KScaleMin(b[i].scales, 2 * g, &sc, &m);
      const float d1 = d * sc;
      const float m1 = dmin * m;
      Q4_KScaleMin(b[i].scales, 2 * g + 1, &sc, &m);
      const float d2 = d * sc;
      const float m2 = dmin * m;
      const uint8_t* q = b[i].qs + 32 * g;
      for (int l = 0; l < 32; ++l) *out++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *out++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void DequantizeQ6_K(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ6_K*>(in);
  int8_t q[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
    const float d = HalfToFloat(b[i].d);
    UnpackQ6_K(b[i], q);
    // (d * sc) * q, ggml's association.
    for (int e = 0; e < kQK; ++e) out[e] = d * b[i].scales[e / 16] * q[e];
  }
}

void DequantizeQ8_K(const void* in, int64_t n, float* out) {
  const auto* b = static_cast<const BlockQ8_K*>(in);
  for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
    for (int j = 0; j < kQK; ++j) out[j] = b[i].d * b[i].qs[j];
  }
}

}  // namespace rows

float DotQ8_0Q8_0(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, n);
  const auto* x = static_cast<const BlockQ8_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    int32_t sumi = 0;  // |sumi| <= 32 * 128 * 128 < 2^24: exact, also as a float
    for (int j = 0; j < 32; ++j) sumi += x[i].qs[j] * y[i].qs[j];
    sum += static_cast<float>(sumi) * (HalfToFloat(x[i].d) * HalfToFloat(y[i].d));
  }
  return sum;
}

float DotQ4_0Q8_0(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_0, n);
  const auto* x = static_cast<const BlockQ4_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    int32_t sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j];
      sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
    }
    sum += static_cast<float>(sumi) * (HalfToFloat(x[i].d) * HalfToFloat(y[i].d));
  }
  return sum;
}

float DotQ4_KQ8_K(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ4_K, n);
  const auto* x = static_cast<const BlockQ4_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    // sum_e (d sc q - dmin m) * qa = d * sum_j sc[j] (q . qa)_j - dmin * sum_j m[j] (sum qa)_j,
    // with the activation sums of each 32-element sub-block taken from two bsums.
    int32_t sumi = 0;  // |sumi| <= 256 * 63 * 15 * 128 < 2^31
    int32_t summ = 0;
    for (int g = 0; g < 4; ++g) {
      uint8_t sc_lo, m_lo, sc_hi, m_hi;
      Q4_KScaleMin(x[i].scales, 2 * g, &sc_lo, &m_lo);
      Q4_KScaleMin(x[i].scales, 2 * g + 1, &sc_hi, &m_hi);
      const uint8_t* q = x[i].qs + 32 * g;
      const int8_t* qa = y[i].qs + 64 * g;
      int32_t lo = 0;
      int32_t hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo += (q[l] & 0xF) * qa[l];
        hi += (q[l] >> 4) * qa[l + 32];
      }
      sumi += sc_lo * lo + sc_hi * hi;
      const int16_t* bs = y[i].bsums + 4 * g;
      summ += m_lo * (bs[0] + bs[1]) + m_hi * (bs[2] + bs[3]);
    }
    sum = rows::AddScaleMinBlock(sum, HalfToFloat(x[i].d), HalfToFloat(x[i].dmin), y[i].d, sumi,
                                 summ);
  }
  return sum;
}

float DotQ6_KQ8_K(const void* w, const void* a, int64_t n) {
  const int64_t blocks = QuantBlockCount(WeightFormat::kQ6_K, n);
  const auto* x = static_cast<const BlockQ6_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  int8_t q[kQK];
  float sum = 0.0f;
  for (int64_t i = 0; i < blocks; ++i) {
    UnpackQ6_K(x[i], q);
    int32_t sumi = 0;  // |sumi| <= 256 * 128 * 32 * 128 = 2^28
    for (int k = 0; k < 16; ++k) {
      int32_t part = 0;
      for (int l = 0; l < 16; ++l) part += q[16 * k + l] * y[i].qs[16 * k + l];
      sumi += x[i].scales[k] * part;
    }
    const float d = HalfToFloat(x[i].d) * y[i].d;
    sum = std::fma(d, static_cast<float>(sumi), sum);
  }
  return sum;
}

}  // namespace starling
