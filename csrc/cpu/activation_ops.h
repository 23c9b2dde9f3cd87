// The activation family over the thread pool: elementwise activations and PReLU, split into
// chunks whose bounds depend only on the size (results identical for any thread count), with
// non-temporal stores once the arrays outgrow the last-level cache. Called by
// csrc/bindings/activation.cpp after its checks, with the GIL released.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/activation.h"

namespace fastnn {
namespace cpu {

// y = f(x) for an ActKind other than kActPrelu (y may be x).
template <class T>
void act_forward(int op, const T* x, T* y, int64_t n, ActParams p);
// gx = g * f'(x) (gx may alias g or x).
template <class T>
void act_backward(int op, const T* g, const T* x, T* gx, int64_t n, ActParams p);
// dst = src with the activations' load/store path: the copy ceiling of the benchmarks.
template <class T>
void parallel_copy(const T* src, T* dst, int64_t n);

// x viewed as (outer, C, inner), all C-contiguous; weight (C).
struct PreluShape {
  int64_t outer, C, inner;
};

template <class T>
void prelu_forward(const T* x, const std::vector<T>& w, T* y, PreluShape s);
// gw: 1 value (shared_w) or C.
template <class T>
void prelu_backward(const T* g, const T* x, const std::vector<T>& w, T* gx, T* gw, bool shared_w, PreluShape s);

}  // namespace cpu
}  // namespace fastnn
