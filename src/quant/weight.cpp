#include "quant/weight.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/dot.h"
#include "kernels/kernels.h"

namespace starling {
namespace {

DType DenseType(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32: return DType::kF32;
    case WeightFormat::kF16: return DType::kF16;
    case WeightFormat::kBF16: return DType::kBF16;
    default: Fail("DenseType: ", WeightFormatName(f), " is a block format");
  }
}

using QuantDot = float (*)(const void*, const void*, int64_t);
bool UseAvx2() {
  return ActiveSimdLevel() != SimdLevel::kScalar;
}

// The interleaved layouts (quant.h's x8 blocks): one row per block format, which LoadForMatMul
// interleaves eight rows at a time, with its kernels at each SimdLevel (scalar, avx2, avxvnni,
// avx512). A format takes Q8_0 activations (q8_0 kernels) or Q8_K ones (q8_k kernels). The
// row's AVX2 dot product serves single rows of the row-major layout.
struct InterleavedLayout {
  WeightFormat format;
  QuantDot row_dot_avx2;
  void (*repack)(const void* w, int64_t rows, int64_t n, void* out);
  void (*dequantize_row)(const void* w, int64_t row, int64_t n, float* out);
  InterleavedQ8_0Dots* q8_0[4];
  InterleavedQ8_KDots* q8_k[4];
};
static_assert(static_cast<int>(SimdLevel::kScalar) == 0 &&
              static_cast<int>(SimdLevel::kAvx512) == 3);

// clang-format off
constexpr InterleavedLayout kInterleavedLayouts[] = {
    {WeightFormat::kQ4_0, DotQ4_0Q8_0_Avx2, RepackQ4_0x8, DequantizeRowQ4_0x8,
     {DotsQ4_0x8Q8_0, DotsQ4_0x8Q8_0_Avx2, DotsQ4_0x8Q8_0_AvxVnni, DotsQ4_0x8Q8_0_Avx512Vnni}, {}},
    {WeightFormat::kQ8_0, DotQ8_0Q8_0_Avx2, RepackQ8_0x8, DequantizeRowQ8_0x8,
     {DotsQ8_0x8Q8_0, DotsQ8_0x8Q8_0_Avx2, DotsQ8_0x8Q8_0_AvxVnni, DotsQ8_0x8Q8_0_Avx512Vnni}, {}},
    {WeightFormat::kQ4_1, DotQ4_1Q8_0_Avx2, RepackQ4_1x8, DequantizeRowQ4_1x8,
     {DotsQ4_1x8Q8_0, DotsQ4_1x8Q8_0_Avx2, DotsQ4_1x8Q8_0_AvxVnni, DotsQ4_1x8Q8_0_Avx512Vnni}, {}},
    {WeightFormat::kQ5_0, DotQ5_0Q8_0_Avx2, RepackQ5_0x8, DequantizeRowQ5_0x8,
     {DotsQ5_0x8Q8_0, DotsQ5_0x8Q8_0_Avx2, DotsQ5_0x8Q8_0_AvxVnni, DotsQ5_0x8Q8_0_Avx512Vnni}, {}},
    {WeightFormat::kQ5_1, DotQ5_1Q8_0_Avx2, RepackQ5_1x8, DequantizeRowQ5_1x8,
     {DotsQ5_1x8Q8_0, DotsQ5_1x8Q8_0_Avx2, DotsQ5_1x8Q8_0_AvxVnni, DotsQ5_1x8Q8_0_Avx512Vnni}, {}},
    {WeightFormat::kQ2_K, DotQ2_KQ8_K_Avx2, RepackQ2_Kx8, DequantizeRowQ2_Kx8, {},
     {DotsQ2_Kx8Q8_K, DotsQ2_Kx8Q8_K_Avx2, DotsQ2_Kx8Q8_K_AvxVnni, DotsQ2_Kx8Q8_K_Avx512Vnni}},
    {WeightFormat::kQ3_K, DotQ3_KQ8_K_Avx2, RepackQ3_Kx8, DequantizeRowQ3_Kx8, {},
     {DotsQ3_Kx8Q8_K, DotsQ3_Kx8Q8_K_Avx2, DotsQ3_Kx8Q8_K_AvxVnni, DotsQ3_Kx8Q8_K_Avx512Vnni}},
    {WeightFormat::kQ4_K, DotQ4_KQ8_K_Avx2, RepackQ4_Kx8, DequantizeRowQ4_Kx8, {},
     {DotsQ4_Kx8Q8_K, DotsQ4_Kx8Q8_K_Avx2, DotsQ4_Kx8Q8_K_AvxVnni, DotsQ4_Kx8Q8_K_Avx512Vnni}},
    {WeightFormat::kQ5_K, DotQ5_KQ8_K_Avx2, RepackQ5_Kx8, DequantizeRowQ5_Kx8, {},
     {DotsQ5_Kx8Q8_K, DotsQ5_Kx8Q8_K_Avx2, DotsQ5_Kx8Q8_K_AvxVnni, DotsQ5_Kx8Q8_K_Avx512Vnni}},
    {WeightFormat::kQ6_K, DotQ6_KQ8_K_Avx2, RepackQ6_Kx8, DequantizeRowQ6_Kx8, {},
     {DotsQ6_Kx8Q8_K, DotsQ6_Kx8Q8_K_Avx2, DotsQ6_Kx8Q8_K_AvxVnni, DotsQ6_Kx8Q8_K_Avx512Vnni}},
};
// clang-format on

// The format's interleaved layout; nullptr where it has none (it stays row-major).
const InterleavedLayout* InterleavedLayoutOf(WeightFormat f) {
  for (const InterleavedLayout& layout : kInterleavedLayouts) {
    if (layout.format == f) return &layout;
  }
  return nullptr;
}

const InterleavedLayout& InterleavedLayoutOrFail(WeightFormat f, const char* who) {
  const InterleavedLayout* layout = InterleavedLayoutOf(f);
  if (layout == nullptr) Fail(who, ": ", WeightFormatName(f), " has no interleaved layout");
  return *layout;
}

bool IsKQuant(WeightFormat f) {
  return Traits(f).activation == WeightFormat::kQ8_K;
}

// The fastest single dot product this CPU has for a block format: its layout row's AVX2 one,
// or the scalar twin (the format table's).
QuantDot DotFor(WeightFormat f) {
  if (!UseAvx2()) return Traits(f).dot;
  return InterleavedLayoutOrFail(f, "MatMul").row_dot_avx2;
}

// Cache blocking of the matmul: each thread takes chunks of kRowChunk weight rows (~150 KB at
// 4096 Q4_0 columns) and multiplies each chunk with blocks of kTokenBlock activation rows
// (~280 KB as Q8_0), so both stay in L2 while their products are computed.
constexpr int64_t kRowChunk = 64;  // a multiple of 8: interleaved groups stay whole
constexpr int64_t kTokenBlock = 64;

// Calls fn(row_begin, row_end, token_begin, token_end) over the blocks, rows over threads.
template <typename Fn>
void ForEachBlock(int64_t rows, int64_t tokens, Fn&& fn) {
  ThreadPool::Global().ParallelFor(rows, kRowChunk, [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin; r < end; r += kRowChunk) {
      const int64_t r_end = std::min(end, r + kRowChunk);
      for (int64_t t = 0; t < tokens; t += kTokenBlock) {
        fn(r, r_end, t, std::min(tokens, t + kTokenBlock));
      }
    }
  });
}

void QuantizeActivations(WeightFormat type, const float* x, int64_t n, void* out) {
  if (UseAvx2()) {
    (type == WeightFormat::kQ8_0 ? QuantizeRowQ8_0_Avx2 : QuantizeRowQ8_K_Avx2)(x, n, out);
  } else {
    QuantizeRow(type, x, n, out);
  }
}

}  // namespace

bool LoadsForMatMul(const WeightMatrix& w) {
  return IsQuantized(w.format) && w.layout == WeightLayout::kRows;
}

WeightMatrix LoadForMatMul(const WeightMatrix& w, HugePageBuffer& buffer) {
  if (!LoadsForMatMul(w)) Fail("LoadForMatMul: ", WeightFormatName(w.format), " stays mapped");
  const size_t row_bytes = w.row_bytes();
  const auto* in = static_cast<const uint8_t*>(w.data);
  WeightMatrix out = w;
  // Formats without an interleaved layout are copied as they are (onto huge pages).
  if (const InterleavedLayout* layout = InterleavedLayoutOf(w.format)) {
    const auto repack = layout->repack;
    // An interleaved block holds 8 row blocks: a group of 8 rows takes 8 rows' bytes.
    buffer = HugePageBuffer(static_cast<size_t>((w.rows + 7) / 8) * 8 * row_bytes);
    // Groups of 8 rows over the threads.
    ThreadPool::Global().ParallelFor((w.rows + 7) / 8, 16, [&](int64_t begin, int64_t end, int) {
      const int64_t rows = std::min(w.rows, 8 * end) - 8 * begin;
      repack(in + 8 * begin * row_bytes, rows, w.cols,
             buffer.data() + 8 * begin * static_cast<int64_t>(row_bytes));
    });
    out.layout = WeightLayout::kInterleaved8;
  } else {
    buffer = HugePageBuffer(static_cast<size_t>(w.rows) * row_bytes);
    ThreadPool::Global().ParallelFor(w.rows, 256, [&](int64_t begin, int64_t end, int) {
      std::memcpy(buffer.data() + begin * row_bytes, in + begin * row_bytes,
                  static_cast<size_t>(end - begin) * row_bytes);
    });
  }
  out.data = buffer.data();
  return out;
}

void ReadRow(const WeightMatrix& w, int64_t r, float* out) {
  if (w.layout == WeightLayout::kInterleaved8) {
    InterleavedLayoutOrFail(w.format, "ReadRow").dequantize_row(w.data, r, w.cols, out);
  } else if (IsQuantized(w.format)) {
    DequantizeRow(w.format, w.row(r), w.cols, out);
  } else {
    ReadRow(DenseMatrix{DenseType(w.format), w.data, w.rows, w.cols}, r, out);
  }
}

void MatMul(const WeightMatrix& w, const float* x, int64_t tokens, float* out) {
  const size_t row_bytes = w.row_bytes();
  if (!IsQuantized(w.format)) {
    const DType type = DenseType(w.format);
    const bool avx2 = UseAvx2();
    ForEachBlock(w.rows, tokens, [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (avx2) {  // the same bits as DotRow, one weight load per tile of tokens
          DotRowsAvx2(type, w.row(r), x + t0 * w.cols, static_cast<size_t>(w.cols), t1 - t0, w.cols,
                      out + t0 * w.rows + r, w.rows);
          continue;
        }
        for (int64_t t = t0; t < t1; ++t) {
          out[t * w.rows + r] = DotRow(type, w.row(r), x + t * w.cols, w.cols);
        }
      }
    });
    return;
  }
  // Quantize each token's activations once; every row's dot product reuses them.
  const WeightFormat activation = Traits(w.format).activation;
  const size_t a_bytes = QuantRowBytes(activation, w.cols);
  thread_local std::vector<uint64_t> scratch;  // grows once; 8-byte aligned blocks
  const size_t words = (a_bytes * static_cast<size_t>(tokens) + 7) / 8;
  if (scratch.size() < words) scratch.resize(words);
  auto* quantized = reinterpret_cast<char*>(scratch.data());
  for (int64_t t = 0; t < tokens; ++t) {
    QuantizeActivations(activation, x + t * w.cols, w.cols, quantized + t * a_bytes);
  }
  const size_t group_bytes = 8 * row_bytes;
  const int level = static_cast<int>(ActiveSimdLevel());
  if (w.layout == WeightLayout::kInterleaved8 && IsKQuant(w.format)) {
    InterleavedQ8_KDots* const dots = InterleavedLayoutOrFail(w.format, "MatMul").q8_k[level];
    ForEachBlock(w.rows, tokens, [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
      // Row chunks start at multiples of kRowChunk, so at a group boundary.
      dots(static_cast<const char*>(w.data) + r0 / 8 * group_bytes, r1 - r0,
           quantized + t0 * a_bytes, a_bytes, t1 - t0, w.cols, out + t0 * w.rows + r0, w.rows);
    });
    return;
  }
  if (w.layout == WeightLayout::kInterleaved8) {
    // The kernels also need each activation block's scale and offset term.
    const int64_t blocks = QuantBlockCount(WeightFormat::kQ8_0, w.cols);
    thread_local std::vector<Q8_0BlockTerms> terms;
    if (terms.size() < static_cast<size_t>(blocks * tokens)) terms.resize(blocks * tokens);
    // A plain pointer: inside the lambda, `terms` would name the worker thread's own vector.
    Q8_0BlockTerms* const block_terms = terms.data();
    for (int64_t t = 0; t < tokens; ++t) {
      ComputeQ8_0BlockTerms(quantized + t * a_bytes, w.cols, block_terms + t * blocks);
    }
    InterleavedQ8_0Dots* const dots = InterleavedLayoutOrFail(w.format, "MatMul").q8_0[level];
    ForEachBlock(w.rows, tokens, [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
      // Row chunks start at multiples of kRowChunk, so at a group boundary.
      dots(static_cast<const char*>(w.data) + r0 / 8 * group_bytes, r1 - r0,
           quantized + t0 * a_bytes, a_bytes, block_terms + t0 * blocks, t1 - t0, w.cols,
           out + t0 * w.rows + r0, w.rows);
    });
    return;
  }
  const QuantDot dot = DotFor(w.format);
  ForEachBlock(w.rows, tokens, [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t t = t0; t < t1; ++t) {
        out[t * w.rows + r] = dot(w.row(r), quantized + t * a_bytes, w.cols);
      }
    }
  });
}

void MatMulReference(const WeightMatrix& w, const float* x, int64_t tokens, float* out) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    ReadRow(w, r, row.data());
    for (int64_t t = 0; t < tokens; ++t) {
      float sum = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) sum += row[c] * x[t * w.cols + c];
      out[t * w.rows + r] = sum;
    }
  }
}

}  // namespace starling
