#include "kernels/dot.h"

#include <cpuid.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>

#include "kernels/kernels.h"

namespace starling {

float DotRowScalar(DType dtype, const void* row, const float* x, int64_t n) {
  float sum = 0.0f;
  switch (dtype) {
    case DType::kF32: {
      const auto* w = static_cast<const float*>(row);
      for (int64_t i = 0; i < n; ++i) sum += w[i] * x[i];
      break;
    }
    case DType::kF16: {
      const auto* w = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < n; ++i) sum += HalfToFloat(w[i]) * x[i];
      break;
    }
    case DType::kBF16: {
      const auto* w = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < n; ++i) sum += BFloat16ToFloat(w[i]) * x[i];
      break;
    }
    default: std::abort();  // the model admits only these weight types
  }
  return sum;
}

namespace {

__attribute__((target("avx2,fma,f16c"))) inline float HorizontalSum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Loads 8 weights as float32.
template <DType kType>
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(const void* row, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  } else if constexpr (kType == DType::kF16) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
    return _mm256_cvtph_ps(h);
  } else {
    const __m128i b =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
  }
}

// One weight row against kTokens activation rows (x + t * x_stride): each weight vector is
// loaded (and converted) once for all of them. Every output performs DotAvx2's operations in
// its order: 4 accumulators over steps of 32, then steps of 8 into the first, their sum, and
// the scalar tail, so a tile's outputs are the single dot's bits.
template <DType kType, int kTokens>
__attribute__((target("avx2,fma,f16c"))) void DotTile(const void* row, const float* x,
                                                      size_t x_stride, int64_t n, float* out,
                                                      int64_t out_stride) {
  __m256 acc[kTokens][4];
  for (auto& token : acc) {
    for (auto& a : token) a = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 w[4];
    for (int k = 0; k < 4; ++k) w[k] = Load8<kType>(row, i + 8 * k);
    for (int t = 0; t < kTokens; ++t) {
      const float* xt = x + t * x_stride + i;
      for (int k = 0; k < 4; ++k) {
        acc[t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xt + 8 * k), acc[t][k]);
      }
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 w = Load8<kType>(row, i);
    for (int t = 0; t < kTokens; ++t) {
      acc[t][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * x_stride + i), acc[t][0]);
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    float sum = HorizontalSum(
        _mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
    // The tail (n not a multiple of 8) in scalar.
    if (i < n) {
      const auto element = static_cast<int64_t>(DTypeSize(kType));
      sum += DotRowScalar(kType, static_cast<const char*>(row) + i * element, x + t * x_stride + i,
                          n - i);
    }
    out[t * out_stride] = sum;
  }
}

template <DType kType>
__attribute__((target("avx2,fma,f16c"))) float DotAvx2(const void* row, const float* x, int64_t n) {
  float out = 0.0f;
  DotTile<kType, 1>(row, x, 0, n, &out, 1);
  return out;
}

// Tiles of 3 tokens: 12 accumulators and 4 weight vectors fill the 16 registers.
template <DType kType>
void DotsAvx2(const void* row, const float* x, size_t x_stride, int64_t tokens, int64_t n,
              float* out, int64_t out_stride) {
  int64_t t = 0;
  for (; t + 3 <= tokens; t += 3) {
    DotTile<kType, 3>(row, x + t * x_stride, x_stride, n, out + t * out_stride, out_stride);
  }
  if (tokens - t == 2)
    DotTile<kType, 2>(row, x + t * x_stride, x_stride, n, out + t * out_stride, out_stride);
  if (tokens - t == 1)
    DotTile<kType, 1>(row, x + t * x_stride, x_stride, n, out + t * out_stride, out_stride);
}

// GCC fuses a multiply into the add that uses it (its default -ffp-contract=fast holds in ISO
// C++ mode too, and reaches through intrinsics). An empty asm hides where a value came from,
// so that a caller's add (SiluMul's 1 + e) takes the rounded product, as the scalar twin does.
__attribute__((target("avx2,fma,f16c"))) inline __m256 Opaque(__m256 v) {
  asm("" : "+x"(v));
  return v;
}

// ExpFast (kernels.cpp) in 8 lanes: the same operations in the same order, each one correctly
// rounded, so each lane returns ExpFast's bits. The constants and the reasoning are there.
__attribute__((target("avx2,fma,f16c"))) inline __m256 Exp8(__m256 x) {
  using namespace exp_fast;
  const __m256 shift = _mm256_set1_ps(kRoundingShift);
  // max_ps(a, b) is a > b ? a : b, min_ps(a, b) a < b ? a : b: with x second, NaN stays.
  x = _mm256_max_ps(_mm256_set1_ps(kMinInput), x);
  x = _mm256_min_ps(_mm256_set1_ps(kMaxInput), x);
  const __m256 shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2E), shift);
  const __m256 k = _mm256_sub_ps(shifted, shift);
  const __m256i k_int = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(shift));
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);  // -(k ln2hi) + x
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 p = _mm256_set1_ps(kC6);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
  p = _mm256_fmadd_ps(p, r, one);
  p = _mm256_fmadd_ps(p, r, one);
  const __m256i k_low = _mm256_srai_epi32(k_int, 1);
  const __m256i k_high = _mm256_sub_epi32(k_int, k_low);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 low = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k_low, bias), 23));
  const __m256 high = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k_high, bias), 23));
  return Opaque(_mm256_mul_ps(_mm256_mul_ps(p, low), high));
}

// Softmax's steps with 8 lanes: the maximum (exact in any order), the exponentials (ExpFast's
// bits), their sum in 8 lane sums then the scalar tail (the only difference from Softmax),
// and the products with its inverse.
// Returns max + log(sum), the log-sum-exp, when `want_lse` (else 0).
__attribute__((target("avx2,fma,f16c"))) inline float Softmax8(float* x, int64_t n,
                                                               bool want_lse = false) {
  int64_t i = 0;
  __m256 max8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (; i + 8 <= n; i += 8) max8 = _mm256_max_ps(max8, _mm256_loadu_ps(x + i));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(max8), _mm256_extractf128_ps(max8, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  float max_value = _mm_cvtss_f32(m);
  for (; i < n; ++i) max_value = std::max(max_value, x[i]);

  const __m256 max_broadcast = _mm256_set1_ps(max_value);
  __m256 sum8 = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), max_broadcast));
    _mm256_storeu_ps(x + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = HorizontalSum(sum8);
  for (; i < n; ++i) {
    x[i] = ExpFast(x[i] - max_value);
    sum += x[i];
  }

  const float inverse = 1.0f / sum;
  const __m256 inverse8 = _mm256_set1_ps(inverse);
  for (i = 0; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inverse8));
  }
  for (; i < n; ++i) x[i] *= inverse;
  return want_lse ? max_value + std::log(sum) : 0.0f;
}

// AttentionHeadAvx2's body: a template in this file, so that it carries the target attribute
// (GCC drops it from instantiations of a template declared without it in kernels.h).
template <DType kCache>
__attribute__((target("avx2,fma,f16c"))) void AttentionHeadAvx2Impl(
    const float* q, const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
    int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last, float* scores, float* out,
    float* lse) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  int64_t key = first;
  if (head_dim % 8 == 0) {
    // Eight keys at a time: q is loaded once for all of them, eight independent fma chains
    // keep both fma units busy, and one reduction tree sums all eight.
    const __m256 scale8 = _mm256_set1_ps(scale);
    for (; key + 8 <= last + 1; key += 8) {
      __m256 acc[8];
      for (auto& a : acc) a = _mm256_setzero_ps();
      for (int64_t d = 0; d < head_dim; d += 8) {
        const __m256 q8 = _mm256_loadu_ps(q + d);
        for (int k = 0; k < 8; ++k) {
          acc[k] = _mm256_fmadd_ps(Load8<kCache>(keys + (key + k) * kv_stride, d), q8, acc[k]);
        }
      }
      // hadd pairs within 128-bit lanes: lane l of h holds key l's partial sums of its two
      // halves; the last add sums the halves. Lane k is key + k.
      const __m256 h0 =
          _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
      const __m256 h1 =
          _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
      const __m256 sums =
          _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
      _mm256_storeu_ps(scores + (key - first), _mm256_mul_ps(sums, scale8));
    }
  }
  for (; key <= last; ++key) {
    scores[key - first] = DotAvx2<kCache>(keys + key * kv_stride, q, head_dim) * scale;
  }
  const float log_sum = Softmax8(scores, last - first + 1, lse != nullptr);
  if (lse != nullptr) *lse = log_sum;
  // out[d] = sum_j p_j v_j[d] in j order (as the scalar twin), 64 dimensions per pass in 8
  // registers, then 8 at a time, then one at a time.
  int64_t d = 0;
  for (; d + 64 <= head_dim; d += 64) {
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t j = first; j <= last; ++j) {
      const __m256 p = _mm256_broadcast_ss(scores + (j - first));
      const CacheElement<kCache>* v = values + j * kv_stride;
      for (int i = 0; i < 8; ++i) {
        acc[i] = _mm256_fmadd_ps(p, Load8<kCache>(v, d + 8 * i), acc[i]);
      }
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + d + 8 * i, acc[i]);
  }
  for (; d + 8 <= head_dim; d += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = first; j <= last; ++j) {
      acc = _mm256_fmadd_ps(_mm256_broadcast_ss(scores + (j - first)),
                            Load8<kCache>(values + j * kv_stride, d), acc);
    }
    _mm256_storeu_ps(out + d, acc);
  }
  for (; d < head_dim; ++d) {
    float acc = 0.0f;
    for (int64_t j = first; j <= last; ++j) {
      acc = std::fma(scores[j - first], CacheToFloat<kCache>(values[j * kv_stride + d]), acc);
    }
    out[d] = acc;
  }
}

// One tile of AttentionGroupAvx2's scores: 4 consecutive keys (key0 + i * kv_stride) against
// kHeads query heads (q + h * q_stride), 4 * kHeads accumulators (8 for a head pair, with the
// 4 key vectors: 13 registers). Each (head, key) dot is AttentionHeadAvx2Impl's: one fma chain
// over d in steps of 8, then the same hadd tree (lane sums pairwise, then the two halves), so
// every score has its bits. scores[h * n + i] = dot * scale.
template <DType kCache, int kHeads>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline void ScoreTile(
    const float* q, int64_t q_stride, const CacheElement<kCache>* key0, int64_t kv_stride,
    int64_t head_dim, __m128 scale4, float* scores, int64_t n) {
  __m256 acc[kHeads][4];
  for (auto& head : acc) {
    for (auto& a : head) a = _mm256_setzero_ps();
  }
  for (int64_t d = 0; d < head_dim; d += 8) {
    __m256 k[4];
    for (int i = 0; i < 4; ++i) k[i] = Load8<kCache>(key0 + i * kv_stride, d);
    for (int h = 0; h < kHeads; ++h) {
      const __m256 q8 = _mm256_loadu_ps(q + h * q_stride + d);
      for (int i = 0; i < 4; ++i) acc[h][i] = _mm256_fmadd_ps(k[i], q8, acc[h][i]);
    }
  }
  for (int h = 0; h < kHeads; ++h) {
    // Lane i of each 128-bit half: key i's sums of its half's pairs; the halves added last.
    const __m256 sums8 =
        _mm256_hadd_ps(_mm256_hadd_ps(acc[h][0], acc[h][1]), _mm256_hadd_ps(acc[h][2], acc[h][3]));
    const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(sums8), _mm256_extractf128_ps(sums8, 1));
    _mm_storeu_ps(scores + h * n, _mm_mul_ps(sums, scale4));
  }
}

// One block of rows of AttentionGroupAvx2's weighted sum of values: for kHeads heads,
// out_h[d] += p_h[j] v_j[d] for j < rows in order, continuing the fma chain that out holds
// (a stored float is the register's value, so blocking does not change the bits). 8 * 8 /
// kHeads dimensions per pass (8 accumulators), then 8 at a time, then one at a time.
template <DType kCache, int kHeads>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline void ValueTile(
    const float* p, int64_t n, const CacheElement<kCache>* values, int64_t kv_stride, int64_t rows,
    int64_t head_dim, float* out, int64_t out_stride) {
  constexpr int kVectors = 8 / kHeads;
  int64_t d = 0;
  for (; d + 8 * kVectors <= head_dim; d += 8 * kVectors) {
    __m256 acc[kHeads][kVectors];
    for (int h = 0; h < kHeads; ++h) {
      for (int i = 0; i < kVectors; ++i)
        acc[h][i] = _mm256_loadu_ps(out + h * out_stride + d + 8 * i);
    }
    for (int64_t j = 0; j < rows; ++j) {
      __m256 v[kVectors];
      for (int i = 0; i < kVectors; ++i) v[i] = Load8<kCache>(values + j * kv_stride, d + 8 * i);
      for (int h = 0; h < kHeads; ++h) {
        const __m256 p8 = _mm256_broadcast_ss(p + h * n + j);
        for (int i = 0; i < kVectors; ++i) acc[h][i] = _mm256_fmadd_ps(p8, v[i], acc[h][i]);
      }
    }
    for (int h = 0; h < kHeads; ++h) {
      for (int i = 0; i < kVectors; ++i)
        _mm256_storeu_ps(out + h * out_stride + d + 8 * i, acc[h][i]);
    }
  }
  for (; d + 8 <= head_dim; d += 8) {
    for (int h = 0; h < kHeads; ++h) {
      __m256 acc = _mm256_loadu_ps(out + h * out_stride + d);
      for (int64_t j = 0; j < rows; ++j) {
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(p + h * n + j),
                              Load8<kCache>(values + j * kv_stride, d), acc);
      }
      _mm256_storeu_ps(out + h * out_stride + d, acc);
    }
  }
  for (; d < head_dim; ++d) {
    for (int h = 0; h < kHeads; ++h) {
      float acc = out[h * out_stride + d];
      for (int64_t j = 0; j < rows; ++j) {
        acc = std::fma(p[h * n + j], CacheToFloat<kCache>(values[j * kv_stride + d]), acc);
      }
      out[h * out_stride + d] = acc;
    }
  }
}

// AttentionGroupAvx2's body (a template here for the target attribute, as above). Each head's
// output has AttentionHeadAvx2Impl's bits: the same scores (tiles of 4 keys within its tiles of
// 8, the rest through DotTile, which is DotAvx2 per head), Softmax8 per head, and the same fma
// chain over j per output element. What changes is the loop order: each chunk of keys or
// values loaded from L2 serves every head of the group while it sits in L1.
template <DType kCache>
__attribute__((target("avx2,fma,f16c"))) void AttentionGroupAvx2Impl(
    const float* q, int64_t q_stride, int64_t group, const CacheElement<kCache>* keys,
    const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim, int64_t first,
    int64_t last, float* scores, float* out, int64_t out_stride, float* lse) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t n = last - first + 1;  // scores: [group][n]
  // AttentionHeadAvx2Impl's tiles of 8 keys (only for head_dim % 8 == 0), here as pairs of
  // tiles of 4 keys x 2 heads.
  const int64_t tiled = head_dim % 8 == 0 ? n / 8 * 8 : 0;
  const __m128 scale4 = _mm_set1_ps(scale);
  for (int64_t j = 0; j < tiled; j += 4) {
    const CacheElement<kCache>* key0 = keys + (first + j) * kv_stride;
    int64_t h = 0;
    for (; h + 2 <= group; h += 2) {
      ScoreTile<kCache, 2>(q + h * q_stride, q_stride, key0, kv_stride, head_dim, scale4,
                           scores + h * n + j, n);
    }
    if (h < group) {
      ScoreTile<kCache, 1>(q + h * q_stride, q_stride, key0, kv_stride, head_dim, scale4,
                           scores + h * n + j, n);
    }
  }
  // The remaining keys as AttentionHeadAvx2Impl's DotAvx2 calls: DotsAvx2 gives each head the
  // single dot's bits.
  for (int64_t j = tiled; j < n; ++j) {
    DotsAvx2<kCache>(keys + (first + j) * kv_stride, q, static_cast<size_t>(q_stride), group,
                     head_dim, scores + j, n);
    for (int64_t h = 0; h < group; ++h) scores[h * n + j] *= scale;
  }
  for (int64_t h = 0; h < group; ++h) {
    const float log_sum = Softmax8(scores + h * n, n, lse != nullptr);
    if (lse != nullptr) lse[h] = log_sum;
  }

  for (int64_t h = 0; h < group; ++h) std::fill_n(out + h * out_stride, head_dim, 0.0f);
  // Blocks of 32 rows: at most 16 KB of values (head_dim 128, F32), which stay in L1 while
  // every head pair passes over them.
  constexpr int64_t kBlock = 32;
  for (int64_t j = 0; j < n; j += kBlock) {
    const int64_t rows = std::min(kBlock, n - j);
    const CacheElement<kCache>* v = values + (first + j) * kv_stride;
    int64_t h = 0;
    for (; h + 2 <= group; h += 2) {
      ValueTile<kCache, 2>(scores + h * n + j, n, v, kv_stride, rows, head_dim,
                           out + h * out_stride, out_stride);
    }
    if (h < group) {
      ValueTile<kCache, 1>(scores + h * n + j, n, v, kv_stride, rows, head_dim,
                           out + h * out_stride, out_stride);
    }
  }
}

}  // namespace

template <DType kCache>
void AttentionHeadAvx2(const float* q, const CacheElement<kCache>* keys,
                       const CacheElement<kCache>* values, int64_t kv_stride, int64_t head_dim,
                       int64_t first, int64_t last, float* scores, float* out, float* lse) {
  AttentionHeadAvx2Impl<kCache>(q, keys, values, kv_stride, head_dim, first, last, scores, out,
                                lse);
}

template void AttentionHeadAvx2<DType::kF32>(const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, int64_t, float*, float*, float*);
template void AttentionHeadAvx2<DType::kF16>(const float*, const uint16_t*, const uint16_t*,
                                             int64_t, int64_t, int64_t, int64_t, float*, float*,
                                             float*);

template <DType kCache>
void AttentionGroupAvx2(const float* q, int64_t q_stride, int64_t group,
                        const CacheElement<kCache>* keys, const CacheElement<kCache>* values,
                        int64_t kv_stride, int64_t head_dim, int64_t first, int64_t last,
                        float* scores, float* out, int64_t out_stride, float* lse) {
  AttentionGroupAvx2Impl<kCache>(q, q_stride, group, keys, values, kv_stride, head_dim, first, last,
                                 scores, out, out_stride, lse);
}

template void AttentionGroupAvx2<DType::kF32>(const float*, int64_t, int64_t, const float*,
                                              const float*, int64_t, int64_t, int64_t, int64_t,
                                              float*, float*, int64_t, float*);
template void AttentionGroupAvx2<DType::kF16>(const float*, int64_t, int64_t, const uint16_t*,
                                              const uint16_t*, int64_t, int64_t, int64_t, int64_t,
                                              float*, float*, int64_t, float*);

__attribute__((target("avx2,fma,f16c"))) void ExpRowAvx2(const float* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, Exp8(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) out[i] = ExpFast(x[i]);
}

__attribute__((target("avx2,fma,f16c"))) void SoftmaxAvx2(float* x, int64_t n) {
  Softmax8(x, n);
}

__attribute__((target("avx2,fma,f16c"))) void SiluMulAvx2(float* gate, const float* up, int64_t n) {
  // SiluMul's operations per element: the quotient and product round as the scalar ones do.
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = Exp8(_mm256_xor_ps(g, sign));  // e^-g
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + ExpFast(-gate[i])) * up[i];
}

__attribute__((target("avx2,fma,f16c"))) void SiluMulBackwardAvx2(const float* gate,
                                                                  const float* up, const float* dy,
                                                                  int64_t n, float* dgate,
                                                                  float* dup) {
  // SiluMulBackward's operations per element, in its order, without fused multiply-adds: the
  // same bits.
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 d = _mm256_loadu_ps(dy + i);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, Exp8(_mm256_xor_ps(g, sign))));
    _mm256_storeu_ps(dup + i, _mm256_mul_ps(_mm256_mul_ps(d, g), s));
    // Opaque: the product rounds before the sum, as in the twin (no fused multiply-add).
    const __m256 slope = _mm256_add_ps(one, Opaque(_mm256_mul_ps(g, _mm256_sub_ps(one, s))));
    _mm256_storeu_ps(
        dgate + i,
        _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), s), slope));
  }
  if (i < n) SiluMulBackward(gate + i, up + i, dy + i, n - i, dgate + i, dup + i);
}

__attribute__((target("avx2,fma,f16c"))) void AdamWRowAvx2(const AdamWScalars& a, const float* g,
                                                           int64_t n, float* p, float* m,
                                                           float* v) {
  // AdamWRow's operations in its order; Opaque keeps each product rounded before its sum.
  const __m256 decay = _mm256_set1_ps(a.decay), b1 = _mm256_set1_ps(a.beta1),
               b2 = _mm256_set1_ps(a.beta2), c1 = _mm256_set1_ps(1.0f - a.beta1),
               c2 = _mm256_set1_ps(1.0f - a.beta2), eps = _mm256_set1_ps(a.eps),
               step = _mm256_set1_ps(a.step_size), bias2 = _mm256_set1_ps(a.bias2_sqrt);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g8 = _mm256_loadu_ps(g + i);
    const __m256 p8 = Opaque(_mm256_mul_ps(_mm256_loadu_ps(p + i), decay));
    const __m256 m8 = _mm256_add_ps(Opaque(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i))),
                                    Opaque(_mm256_mul_ps(c1, g8)));
    const __m256 v8 = _mm256_add_ps(Opaque(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i))),
                                    Opaque(_mm256_mul_ps(_mm256_mul_ps(c2, g8), g8)));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v8), bias2), eps);
    _mm256_storeu_ps(p + i,
                     _mm256_sub_ps(p8, Opaque(_mm256_mul_ps(step, _mm256_div_ps(m8, denom)))));
    _mm256_storeu_ps(m + i, m8);
    _mm256_storeu_ps(v + i, v8);
  }
  if (i < n) AdamWRow(a, g + i, n - i, p + i, m + i, v + i);
}

__attribute__((target("avx2,fma,f16c"))) void FloatToHalfRowAvx2(const float* x, int64_t n,
                                                                 uint16_t* out) {
  // Rounding given in the instruction (nearest even), not taken from MXCSR.
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), kRound));
  }
  if (i < n) {  // the tail (n not a multiple of 8) through a zero-padded block of 8
    float tail[8] = {};
    uint16_t halves[8];
    const auto rest = static_cast<size_t>(n - i);
    std::memcpy(tail, x + i, rest * sizeof(float));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(halves),
                     _mm256_cvtps_ph(_mm256_loadu_ps(tail), kRound));
    std::memcpy(out + i, halves, rest * sizeof(uint16_t));
  }
}

void DotRowsAvx2(DType dtype, const void* row, const float* x, size_t x_stride, int64_t tokens,
                 int64_t n, float* out, int64_t out_stride) {
  switch (dtype) {
    case DType::kF32: return DotsAvx2<DType::kF32>(row, x, x_stride, tokens, n, out, out_stride);
    case DType::kF16: return DotsAvx2<DType::kF16>(row, x, x_stride, tokens, n, out, out_stride);
    case DType::kBF16: return DotsAvx2<DType::kBF16>(row, x, x_stride, tokens, n, out, out_stride);
    default: std::abort();
  }
}

float DotRowAvx2(DType dtype, const void* row, const float* x, int64_t n) {
  switch (dtype) {
    case DType::kF32: return DotAvx2<DType::kF32>(row, x, n);
    case DType::kF16: return DotAvx2<DType::kF16>(row, x, n);
    case DType::kBF16: return DotAvx2<DType::kBF16>(row, x, n);
    default: std::abort();
  }
}

bool CpuHasAvx2() {
  // __builtin_cpu_supports checks that the OS saves the AVX registers too; older clang does not
  // know "f16c", so that bit comes from CPUID leaf 1 directly.
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

bool CpuHasAvxVnni() {
  // CPUID leaf 7 subleaf 1, EAX bit 4 (GCC 12's __builtin_cpu_supports does not know it). The
  // VEX encoding needs only the AVX state that CpuHasAvx2 has checked the OS saves.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return CpuHasAvx2() && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 &&
         (eax & (1u << 4)) != 0;
}

bool CpuHasAvx512Vnni() {
  __builtin_cpu_init();
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

bool CpuHasSimdLevel(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar: return true;
    case SimdLevel::kAvx2: return CpuHasAvx2();
    case SimdLevel::kAvxVnni: return CpuHasAvxVnni();
    case SimdLevel::kAvx512: return CpuHasAvx512Vnni();
  }
  return false;
}

const char* SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar: return "scalar";
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kAvxVnni: return "avxvnni";
    case SimdLevel::kAvx512: return "avx512";
  }
  return "?";
}

SimdLevel BestSimdLevel() {
  // The two VNNI levels run the same tiles at the same width; the EVEX one also has 32
  // registers, so it comes first.
  for (SimdLevel level : {SimdLevel::kAvx512, SimdLevel::kAvxVnni, SimdLevel::kAvx2}) {
    if (CpuHasSimdLevel(level)) return level;
  }
  return SimdLevel::kScalar;
}

SimdLevel ActiveSimdLevel() {
  static const SimdLevel level = [] {
    const SimdLevel best = BestSimdLevel();
    const char* forced = std::getenv("STARLING_SIMD");
    if (forced == nullptr || *forced == '\0') return best;
    for (SimdLevel named :
         {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvxVnni, SimdLevel::kAvx512}) {
      if (std::string_view(forced) != SimdLevelName(named)) continue;
      if (CpuHasSimdLevel(named)) return named;
      std::fprintf(stderr, "STARLING_SIMD=%s: this CPU lacks it; using %s\n", forced,
                   SimdLevelName(best));
      return best;
    }
    std::fprintf(stderr, "STARLING_SIMD=%s: unknown (scalar, avx2, avxvnni, avx512); using %s\n",
                 forced, SimdLevelName(best));
    return best;
  }();
  return level;
}

float DotRow(DType dtype, const void* row, const float* x, int64_t n) {
  return ActiveSimdLevel() != SimdLevel::kScalar ? DotRowAvx2(dtype, row, x, n)
                                                 : DotRowScalar(dtype, row, x, n);
}

const char* DotRowImplementation() {
  return SimdLevelName(ActiveSimdLevel());
}

// a . b over n (a multiple of 8) in 8 lanes.
__attribute__((target("avx2,fma,f16c"))) inline float Dot8(const float* a, const float* b,
                                                           int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < n; d += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
  }
  return HorizontalSum(acc);
}

// AttentionGroupBackward's steps with 8 lanes over the head dimension (head_dim % 8 == 0; other
// sizes use the scalar twin): the same exponentials (ExpFast's bits through Exp8), dots summed
// in 8 lanes instead of index order, so results agree with the twin to rounding.
__attribute__((target("avx2,fma,f16c"))) void AttentionGroupBackwardAvx2(
    const float* q, const float* keys, const float* values, int64_t kv_stride, int64_t group,
    int64_t head_dim, int64_t first, int64_t last, const float* out, const float* lse,
    const float* dout, float* scores, float* dq, float* dkeys, float* dvalues) {
  if (head_dim % 8 != 0) {
    return AttentionGroupBackward(q, keys, values, kv_stride, group, head_dim, first, last, out,
                                  lse, dout, scores, dq, dkeys, dvalues);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t n = last - first + 1;
  for (int64_t h = 0; h < group; ++h) {
    const float* qh = q + h * head_dim;
    const float* doh = dout + h * head_dim;
    float* dqh = dq + h * head_dim;
    for (int64_t j = 0; j < n; ++j) {
      scores[j] = Dot8(qh, keys + (first + j) * kv_stride, head_dim) * scale - lse[h];
    }
    ExpRowAvx2(scores, n, scores);
    const float delta = Dot8(doh, out + h * head_dim, head_dim);
    for (int64_t j = 0; j < n; ++j) {
      const float* k = keys + (first + j) * kv_stride;
      const float* v = values + (first + j) * kv_stride;
      float* dk = dkeys + (first + j) * kv_stride;
      float* dv = dvalues + (first + j) * kv_stride;
      const float p = scores[j];
      const float ds = p * (Dot8(doh, v, head_dim) - delta) * scale;
      const __m256 p8 = _mm256_set1_ps(p), ds8 = _mm256_set1_ps(ds);
      for (int64_t d = 0; d < head_dim; d += 8) {
        const __m256 dout8 = _mm256_loadu_ps(doh + d);
        _mm256_storeu_ps(dv + d, _mm256_fmadd_ps(p8, dout8, _mm256_loadu_ps(dv + d)));
        _mm256_storeu_ps(dqh + d,
                         _mm256_fmadd_ps(ds8, _mm256_loadu_ps(k + d), _mm256_loadu_ps(dqh + d)));
        _mm256_storeu_ps(dk + d,
                         _mm256_fmadd_ps(ds8, _mm256_loadu_ps(qh + d), _mm256_loadu_ps(dk + d)));
      }
    }
  }
}

}  // namespace starling
