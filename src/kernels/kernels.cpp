#include "kernels/kernels.h"

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace starling {

uint16_t FloatToHalf(float value) {
  const auto bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>(bits >> 16 & 0x8000u);
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return sign | 0x7E00u;  // NaN
  // 65520 is halfway between the largest half (65504) and 2^16; ties go to the even 2^16 = inf.
  if (abs >= 0x477FF000u) return sign | 0x7C00u;
  if (abs >= 0x38800000u) {  // >= 2^-14: a normal half
    // Rebias the exponent (127 -> 15) and drop 13 mantissa bits; a carry out of the mantissa
    // correctly bumps the exponent.
    const uint32_t rebased = abs - 0x38000000u;
    uint32_t h = rebased >> 13;
    const uint32_t rest = rebased & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0)) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half: count units of 2^-24. value = mantissa * 2^(exponent - 150).
  const uint32_t exponent = abs >> 23;
  const uint32_t shift = 126 - exponent;          // >= 14
  if (exponent == 0 || shift >= 25) return sign;  // below 2^-25 (or exactly it: ties to 0)
  const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
  uint32_t h = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u) != 0)) ++h;  // may carry into the smallest normal
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3FFu;
      bits = sign | static_cast<uint32_t>(127 - 15 - shift + 1) << 23 | mantissa << 13;
    }
  } else if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | mantissa << 13;  // inf or NaN
  } else {
    bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

float BFloat16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

void ReadRow(const DenseMatrix& w, int64_t row, float* out) {
  const size_t offset = static_cast<size_t>(row) * static_cast<size_t>(w.cols);
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + offset, w.cols * sizeof(float));
      return;
    case DType::kF16: {
      const auto* src = static_cast<const uint16_t*>(w.data) + offset;
      for (int64_t i = 0; i < w.cols; ++i) out[i] = HalfToFloat(src[i]);
      return;
    }
    case DType::kBF16: {
      const auto* src = static_cast<const uint16_t*>(w.data) + offset;
      for (int64_t i = 0; i < w.cols; ++i) out[i] = BFloat16ToFloat(src[i]);
      return;
    }
    default: std::abort();  // the loader admits only F32, F16 and BF16 weights
  }
}

float RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  float sum_squares = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum_squares += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(sum_squares / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
  return scale;
}

void RmsNormBackward(const float* x, const float* weight, float rstd, const float* dy, int64_t n,
                     float* dx, float* dweight) {
  // y_i = x_i r w_i with r = (mean(x^2) + eps)^(-1/2), dr/dx_i = -r^3 x_i / n, so
  // dx_i = r w_i dy_i - (r^3 / n) x_i sum_j dy_j w_j x_j.
  float dot = 0.0f;
  for (int64_t i = 0; i < n; ++i) dot += dy[i] * weight[i] * x[i];
  const float c = rstd * rstd * rstd * dot / static_cast<float>(n);
  for (int64_t i = 0; i < n; ++i) {
    if (dweight != nullptr) dweight[i] += dy[i] * x[i] * rstd;
    dx[i] += rstd * weight[i] * dy[i] - c * x[i];
  }
}

// e^x = 2^k e^r with k = round(x log2 e), r = x - k ln2, |r| <= ln2 / 2: a polynomial for
// e^r, then 2^k written into exponent bits. Every step is one correctly rounded float
// operation (std::fma where the lanes use an fma), in the order ExpRowAvx2 performs them, so
// the two agree bit for bit. Not inline: a caller's 1 + ExpFast(..) must round the result
// first, and a compiler that may fuse a multiply into an add (GCC does by default) could fuse
// the final scaling into it.
[[gnu::noinline]] float ExpFast(float x) {
  using namespace exp_fast;
  // The clamp, written as the comparisons maxps/minps make (the lanes' _mm256_max_ps(lo, x)
  // is lo > x ? lo : x): a NaN fails both and passes through to a NaN result.
  x = kMinInput > x ? kMinInput : x;
  x = kMaxInput < x ? kMaxInput : x;
  const float shifted = std::fma(x, kLog2E, kRoundingShift);
  const float k = shifted - kRoundingShift;  // exact: round(x log2 e)
  // The same integer from the bits (same binade as kRoundingShift); unsigned arithmetic, so a
  // NaN's bits wrap harmlessly.
  const auto k_int = static_cast<int32_t>(std::bit_cast<uint32_t>(shifted) -
                                          std::bit_cast<uint32_t>(kRoundingShift));
  float r = std::fma(-k, kLn2Hi, x);  // exact (see kLn2Hi)
  r = std::fma(-k, kLn2Lo, r);
  float p = kC6;
  p = std::fma(p, r, kC5);
  p = std::fma(p, r, kC4);
  p = std::fma(p, r, kC3);
  p = std::fma(p, r, kC2);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  // 2^k as two normal factors 2^floor(k/2) 2^ceil(k/2), each biased exponent in [52, 191]:
  // the first product is exact, the second rounds once, so a subnormal result is rounded
  // once (not flushed) and k = 128 (x up to 89) overflows to +inf as it should.
  const int32_t k_low = k_int >> 1;
  const int32_t k_high = k_int - k_low;
  const auto low = std::bit_cast<float>(static_cast<uint32_t>(k_low + 127) << 23);
  const auto high = std::bit_cast<float>(static_cast<uint32_t>(k_high + 127) << 23);
  return p * low * high;
}

namespace {

// Softmax's steps; returns the log-sum-exp of the inputs, max + log(sum of exponentials), when
// `want_lse` (else 0: inference needs no logarithm).
float SoftmaxLse(float* x, int64_t n, bool want_lse) {
  float max_value = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max_value = std::max(max_value, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = ExpFast(x[i] - max_value);
    sum += x[i];
  }
  const float inverse = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inverse;
  return want_lse ? max_value + std::log(sum) : 0.0f;
}

}  // namespace

void Softmax(float* x, int64_t n) {
  SoftmaxLse(x, n, false);
}

void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + ExpFast(-g)) * up[i];
  }
}

void SiluMulBackward(const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                     float* dup) {
  // y = silu(g) u with silu(g) = g s, s = 1 / (1 + e^-g): dy/du = g s and
  // dy/dg = u s (1 + g (1 - s)).
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float s = 1.0f / (1.0f + ExpFast(-g));
    dup[i] = dy[i] * g * s;
    dgate[i] = dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
  }
}

void AdamWRow(const AdamWScalars& a, const float* g, int64_t n, float* p, float* m, float* v) {
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= a.decay;
    m[i] = a.beta1 * m[i] + (1.0f - a.beta1) * g[i];
    v[i] = a.beta2 * v[i] + (1.0f - a.beta2) * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / a.bias2_sqrt + a.eps;
    p[i] -= a.step_size * (m[i] / denom);
  }
}

namespace {

// Rotates each pair of the first rope_dim dimensions of every head by `sign` * angle (the
// negation is exact, so the backward's rotation is the forward's with sin negated).
void RotatePairs(float* vec, int64_t heads, int64_t head_dim, int64_t rope_dim, int64_t position,
                 std::span<const float> inv_freq, bool interleaved, float sign) {
  const int64_t half = rope_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // Angles as Hugging Face computes them: float32 position * float32 inverse frequency.
    const float angle = static_cast<float>(position) * inv_freq[i];
    const float c = std::cos(angle), s = sign * std::sin(angle);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = vec + h * head_dim;
      const int64_t a = interleaved ? 2 * i : i;
      const int64_t b = interleaved ? 2 * i + 1 : i + half;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x1 * c + x0 * s;
    }
  }
}

}  // namespace

void Rope(float* vec, int64_t heads, int64_t head_dim, int64_t rope_dim, int64_t position,
          std::span<const float> inv_freq, bool interleaved) {
  RotatePairs(vec, heads, head_dim, rope_dim, position, inv_freq, interleaved, 1.0f);
}

// The forward is a rotation by +angle per pair; its transpose is the rotation by -angle.
void RopeBackward(float* grad, int64_t heads, int64_t head_dim, int64_t rope_dim, int64_t position,
                  std::span<const float> inv_freq, bool interleaved) {
  RotatePairs(grad, heads, head_dim, rope_dim, position, inv_freq, interleaved, -1.0f);
}

template <DType kCache>
void AttentionHead(const float* q, const CacheElement<kCache>* keys,
                   const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim,
                   int64_t first, int64_t last, float* scores, float* out, float* lse) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t j = first; j <= last; ++j) {
    const CacheElement<kCache>* k = keys + j * kv_stride;
    float dot = 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) dot += q[d] * CacheToFloat<kCache>(k[d]);
    scores[j - first] = dot * scale;
  }
  const float log_sum = SoftmaxLse(scores, last - first + 1, lse != nullptr);
  if (lse != nullptr) *lse = log_sum;
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (int64_t j = first; j <= last; ++j) {
    const float p = scores[j - first];
    const CacheElement<kCache>* v = values + j * kv_stride;
    for (int64_t d = 0; d < head_dim; ++d) out[d] += p * CacheToFloat<kCache>(v[d]);
  }
}

template void AttentionHead<DType::kF32>(const float*, const float*, const float*, int64_t, int64_t,
                                         int64_t, int64_t, float*, float*, float*);
template void AttentionHead<DType::kF16>(const float*, const uint16_t*, const uint16_t*, int64_t,
                                         int64_t, int64_t, int64_t, float*, float*, float*);

template <DType kCache>
void AttentionGroup(const float* q, int64_t q_stride, int64_t group,
                    const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
                    int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last, float* scores,
                    float* out, int64_t out_stride, float* lse) {
  for (int64_t h = 0; h < group; ++h) {
    AttentionHead<kCache>(q + h * q_stride, keys, values, kv_stride, head_dim, first, last, scores,
                          out + h * out_stride, lse != nullptr ? lse + h : nullptr);
  }
}

template void AttentionGroup<DType::kF32>(const float*, int64_t, int64_t, const float*,
                                          const float*, int64_t, int64_t, int64_t, int64_t, float*,
                                          float*, int64_t, float*);
template void AttentionGroup<DType::kF16>(const float*, int64_t, int64_t, const uint16_t*,
                                          const uint16_t*, int64_t, int64_t, int64_t, int64_t,
                                          float*, float*, int64_t, float*);

void AttentionGroupBackward(const float* q, const float* keys, const float* values,
                            int64_t kv_stride, int64_t group, int64_t head_dim, int64_t first,
                            int64_t last, const float* out, const float* lse, const float* dout,
                            float* scores, float* dq, float* dkeys, float* dvalues) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t h = 0; h < group; ++h) {
    const float* qh = q + h * head_dim;
    const float* oh = out + h * head_dim;
    const float* doh = dout + h * head_dim;
    float* dqh = dq + h * head_dim;
    // p_j recomputed from the saved log-sum-exp: p_j = exp(s_j - lse), by ExpFast.
    for (int64_t j = first; j <= last; ++j) {
      const float* k = keys + j * kv_stride;
      float dot = 0.0f;
      for (int64_t d = 0; d < head_dim; ++d) dot += qh[d] * k[d];
      scores[j - first] = ExpFast(dot * scale - lse[h]);
    }
    // sum_j p_j dp_j = dout . out (out = sum_j p_j v_j).
    float delta = 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) delta += doh[d] * oh[d];
    for (int64_t j = first; j <= last; ++j) {
      const float p = scores[j - first];
      const float* v = values + j * kv_stride;
      float* dv = dvalues + j * kv_stride;
      float dp = 0.0f;
      for (int64_t d = 0; d < head_dim; ++d) {
        dp += doh[d] * v[d];
        dv[d] += p * doh[d];
      }
      const float ds = p * (dp - delta) * scale;  // d loss / d (q . k_j)
      const float* k = keys + j * kv_stride;
      float* dk = dkeys + j * kv_stride;
      for (int64_t d = 0; d < head_dim; ++d) {
        dqh[d] += ds * k[d];
        dk[d] += ds * qh[d];
      }
    }
  }
}

}  // namespace starling
