#include "kernels/gemm.h"

#include <blis.h>

#include <algorithm>

#include "core/thread_pool.h"

namespace starling {
namespace {

// C[m, n] = alpha op(A) op(B) + beta C, row-major, on BLIS's packed kernels. Its small-matrix
// ("sup") path is switched off: it picks kernels by the shape (some sum dot products in
// vector lanes), so a block's results would depend on how the pool split the product. On the
// packed path every element is one micro-kernel accumulation over k in the same K blocks
// whatever the M and N extents, so splitting rows or columns among threads changes no bits
// (tests/train_cli_test checks 1, 2 and 3 threads), and large blocks run at its full rate.
void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float beta, const float* a,
           int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_disable_l3_sup(&rntm);
  float one = 1.0f;
  // Row-major X with leading dimension ld: row stride ld, column stride 1 (as stored, before
  // the transpose the trans flag asks for).
  bli_sgemm_ex(trans_a ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
               trans_b ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &one, const_cast<float*>(a),
               lda, 1, const_cast<float*>(b), ldb, 1, &beta, c, ldc, 1, nullptr, &rntm);
}

// [begin, end) of part p of `total` split into `parts` pieces, boundaries multiples of `align`.
std::pair<int64_t, int64_t> Part(int64_t total, int64_t parts, int64_t p, int64_t align) {
  const int64_t units = (total + align - 1) / align;
  const int64_t begin = std::min(total, units * p / parts * align);
  const int64_t end = std::min(total, units * (p + 1) / parts * align);
  return {begin, end};
}

// Runs fn(begin, end) over one contiguous part of [0, total) per thread.
template <typename Fn>
void ForEachPart(int64_t total, int64_t align, Fn&& fn) {
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>(ThreadPool::Global().size(), (total + align - 1) / align));
  ThreadPool::Global().ParallelFor(parts, 1, [&](int64_t first, int64_t last, int) {
    for (int64_t p = first; p < last; ++p) {
      const auto [begin, end] = Part(total, parts, p, align);
      if (end > begin) fn(begin, end);
    }
  });
}

// The micro-kernel's column width (a multiple of every x86 BLIS kernel's NR): parts start on a
// micro-tile boundary.
constexpr int64_t kAlign = 16;

}  // namespace

void GemmForward(const float* x, const float* w, int64_t n, int64_t in, int64_t out, float* y) {
  // Parts of the output columns (rows of W): each thread reads its part of W once.
  ForEachPart(out, kAlign, [&](int64_t o0, int64_t o1) {
    Sgemm(false, true, n, o1 - o0, in, 0.0f, x, in, w + o0 * in, in, y + o0, out);
  });
}

void GemmForwardReference(const float* x, const float* w, int64_t n, int64_t in, int64_t out,
                          float* y) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += x[t * in + i] * w[o * in + i];
      y[t * out + o] = acc;
    }
  }
}

void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in,
                    int64_t out, float* dx, bool accumulate_dx, float* dw) {
  if (dx) {  // dx (+)= dy W, by parts of dx's columns
    ForEachPart(in, kAlign, [&](int64_t i0, int64_t i1) {
      Sgemm(false, false, n, i1 - i0, out, accumulate_dx ? 1.0f : 0.0f, dy, out, w + i0, in,
            dx + i0, in);
    });
  }
  if (dw) {  // dw += dy^T x, by parts of dw's rows
    ForEachPart(out, kAlign, [&](int64_t o0, int64_t o1) {
      Sgemm(true, false, o1 - o0, in, n, 1.0f, dy + o0, out, x, in, dw + o0 * in, in);
    });
  }
}

void LinearBackwardReference(const float* x, const float* w, const float* dy, int64_t n, int64_t in,
                             int64_t out, float* dx, bool accumulate_dx, float* dw) {
  if (dx) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < in; ++i) {
        float acc = 0.0f;
        for (int64_t o = 0; o < out; ++o) acc += dy[t * out + o] * w[o * in + i];
        dx[t * in + i] = accumulate_dx ? dx[t * in + i] + acc : acc;
      }
    }
  }
  if (dw) {
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) {
        float acc = 0.0f;
        for (int64_t t = 0; t < n; ++t) acc += dy[t * out + o] * x[t * in + i];
        dw[o * in + i] += acc;
      }
    }
  }
}

}  // namespace starling
