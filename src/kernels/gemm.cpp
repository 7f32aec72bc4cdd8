#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "core/thread_pool.h"

namespace starling {
namespace {

// Rows of the output per work item. A constant, so that which rows share a BLAS call (and
// so every element's arithmetic) does not depend on the thread count.
constexpr int64_t kBlockRows = 64;

int Int(int64_t v) { return static_cast<int>(v); }

}  // namespace

void GemmForward(const float* x, const float* w, int64_t n, int64_t in, int64_t out, float* y) {
  // Blocks of output columns (rows of W), so that each W block is read once per call.
  const int64_t blocks = (out + kBlockRows - 1) / kBlockRows;
  ThreadPool::Global().ParallelFor(blocks, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kBlockRows, rows = std::min(kBlockRows, out - o0);
      // y[:, o0:o0+rows] = x W[o0:o0+rows]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int(n), Int(rows), Int(in), 1.0f, x,
                  Int(in), w + o0 * in, Int(in), 0.0f, y + o0, Int(out));
    }
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
  // Both products as one pass over blocks: dx by blocks of token rows, dw by blocks of W rows.
  const int64_t dx_blocks = dx ? (n + kBlockRows - 1) / kBlockRows : 0;
  const int64_t dw_blocks = dw ? (out + kBlockRows - 1) / kBlockRows : 0;
  ThreadPool::Global().ParallelFor(dx_blocks + dw_blocks, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t b = begin; b < end; ++b) {
      if (b < dx_blocks) {
        const int64_t t0 = b * kBlockRows, rows = std::min(kBlockRows, n - t0);
        // dx[t0:t0+rows] (+)= dy[t0:t0+rows] W
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int(rows), Int(in), Int(out), 1.0f,
                    dy + t0 * out, Int(out), w, Int(in), accumulate_dx ? 1.0f : 0.0f, dx + t0 * in,
                    Int(in));
      } else {
        const int64_t o0 = (b - dx_blocks) * kBlockRows, rows = std::min(kBlockRows, out - o0);
        // dw[o0:o0+rows] += dy[:, o0:o0+rows]^T x
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int(rows), Int(in), Int(n), 1.0f,
                    dy + o0, Int(out), x, Int(in), 1.0f, dw + o0 * in, Int(in));
      }
    }
  });
}

void LinearBackwardReference(const float* x, const float* w, const float* dy, int64_t n,
                             int64_t in, int64_t out, float* dx, bool accumulate_dx, float* dw) {
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
