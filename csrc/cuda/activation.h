// The activation family on the GPU: launchers callable from plain C++ (csrc/bindings/cuda.cpp).
// Same ops, parameters and semantics as csrc/cpu/activation.cpp (op ids: ActKind, core/activation_kind.h; PReLU has its own ops).
// Every pointer is device memory; every launch is asynchronous on the legacy default stream
// (stream 0) and throws std::runtime_error if the launch fails. n == 0 launches nothing.
#pragma once

#include <cstdint>

#include "cpu/activation.h"  // ActParams (and ActKind)

namespace fastnn {
namespace cuda {

// y = f(x); x, y are (n,), any alignment of the element type; y may be x (in place).
void act_forward(int op, const float* x, float* y, int64_t n, const ActParams& p);
void act_forward(int op, const double* x, double* y, int64_t n, const ActParams& p);

// gx = g * f'(x); g, x, gx are (n,); gx may be g or x.
void act_backward(int op, const float* g, const float* x, float* gx, int64_t n, const ActParams& p);
void act_backward(int op, const double* g, const double* x, double* gx, int64_t n, const ActParams& p);

// PReLU over x viewed as (outer, C, inner), C-contiguous; w has w_size = 1 or C elements.
// y = x > 0 ? x : w[c] * x; y may be x.
void prelu_forward(const float* x, const float* w, int64_t w_size, float* y, int64_t outer, int64_t C,
                   int64_t inner);
void prelu_forward(const double* x, const double* w, int64_t w_size, double* y, int64_t outer, int64_t C,
                   int64_t inner);

// gx = g * (x > 0 ? 1 : w[c]) (NaN where x is NaN); gw (w_size elements) = sum of
// (x > 0 ? 0 : x * g) over each channel (over everything when w_size == 1), accumulated in
// double with an order fixed by the shape alone: bit-identical on every run and every GPU.
// gx may be g or x; gw must not overlap the others.
void prelu_backward(const float* g, const float* x, const float* w, int64_t w_size, float* gx, float* gw,
                    int64_t outer, int64_t C, int64_t inner);
void prelu_backward(const double* g, const double* x, const double* w, int64_t w_size, double* gx, double* gw,
                    int64_t outer, int64_t C, int64_t inner);

}  // namespace cuda
}  // namespace fastnn
