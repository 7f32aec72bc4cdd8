// Dense float32 matrix products for training: the backward of a linear layer y = x W^T and a
// matmul forward over float32 weights, on BLIS's sgemm (its serial, reentrant build: each call runs
// on the calling thread) spread over the thread pool in fixed blocks of rows, so every output
// element is computed by the same code in the same order whatever the thread count. Each has a
// readable scalar twin (index-order loops) that tests hold it to.
//
// Shapes: N rows (tokens), In and Out the layer's input and output widths; W is [Out, In].
#pragma once

#include <cstdint>

namespace starling {

// y[N, Out] = x[N, In] W^T.
void GemmForward(const float* x, const float* w, int64_t n, int64_t in, int64_t out, float* y);
void GemmForwardReference(const float* x, const float* w, int64_t n, int64_t in, int64_t out,
                          float* y);

// The backward of y = x W^T: dx[N, In] (+)= dy[N, Out] W, and dw[Out, In] += dy^T x. Either
// output may be null (no gradient wanted). `accumulate_dx`: add into dx instead of writing it.
void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in,
                    int64_t out, float* dx, bool accumulate_dx, float* dw);
void LinearBackwardReference(const float* x, const float* w, const float* dy, int64_t n, int64_t in,
                             int64_t out, float* dx, bool accumulate_dx, float* dw);

}  // namespace starling
