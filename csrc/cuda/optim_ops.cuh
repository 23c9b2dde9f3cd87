// The per-element math of csrc/cuda/optim.cu: SGD and Adam/AdamW updates as functors, written with
// the explicitly rounded operations of core/rounded.h. Included by optim.cu (device code: CUDA's
// round-to-nearest intrinsics, which nvcc never contracts into FMAs) and compilable as plain host
// C++ (std::fma and IEEE operators; build with -ffp-contract=off), so the same source can be run
// against csrc/cpu/optim.cpp's FMA paths on a machine without a GPU, element by element.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/rounded.h"
#include "cpu/optim.h"

#ifdef __CUDACC__
#define FASTNN_HD_INLINE __host__ __device__ __forceinline__
#else
#define FASTNN_HD_INLINE inline
#endif

namespace fastnn {
namespace cuda {
namespace optim_ops {

// The rounded arithmetic (core/rounded.h), shared with the other exact kernels.
using rn::abs_of;
using rn::add_rn;
using rn::copysign_of;
using rn::div_rn;
using rn::fma_rn;
using rn::mul_rn;
using rn::sqrt_rn;
using rn::sub_rn;

// g + l2 * w + l1 * sign(w), sign(0) = sign(NaN) = 0 (csrc/cpu/optim.cpp's Penalty): the l2 term
// one FMA, the l1 term one add; each skipped when its coefficient is 0.
template <class T>
struct Penalty {
  T l2, l1;
  bool has_l2, has_l1;
  FASTNN_HD_INLINE T operator()(T g, T w) const {
    if (has_l2) g = fma_rn(l2, w, g);
    if (has_l1) g = add_rn(g, abs_of(w) > T(0) ? copysign_of(l1, w) : T(0));
    return g;
  }
};

// SGD (torch.optim.SGD). mode 0: no momentum; 1: first step (buf = g'); 2: momentum.
template <class T>
struct SgdOp {
  Penalty<T> pen;
  T lr, mom, damp1;
  bool nesterov, undamped;
  int mode;
  FASTNN_HD_INLINE void operator()(T& w, T g, T& buf, T&) const {
    g = pen(g, w);
    T d = g;
    if (mode == 1) {
      buf = g;
      if (nesterov) d = fma_rn(mom, g, g);
    } else if (mode == 2) {
      const T b = fma_rn(mom, buf, undamped ? g : mul_rn(g, damp1));
      buf = b;
      d = nesterov ? fma_rn(mom, b, g) : b;
    }
    w = fma_rn(-lr, d, w);
  }
};

// Adam / AdamW (torch.optim.Adam / AdamW, non-amsgrad); decay: AdamW's w *= 1 - lr * wd first.
template <class T>
struct AdamOp {
  Penalty<T> pen;
  T keep, c1, b2, c2, step, bc2, eps;
  bool decay;
  FASTNN_HD_INLINE void operator()(T& w, T g, T& m, T& v) const {
    g = pen(g, w);
    if (decay) w = mul_rn(w, keep);
    m = fma_rn(c1, sub_rn(g, m), m);
    v = fma_rn(c2, mul_rn(g, g), mul_rn(b2, v));
    const T denom = add_rn(div_rn(sqrt_rn(v), bc2), eps);
    w = fma_rn(-step, div_rn(m, denom), w);
  }
};

// The functors for the arguments of csrc/cpu/optim.h: every coefficient formed in double and
// rounded once to T, as csrc/cpu/optim.cpp does.
template <class T>
inline SgdOp<T> make_sgd(const SgdArgs& a) {
  SgdOp<T> op;
  op.pen = Penalty<T>{static_cast<T>(a.l2), static_cast<T>(a.l1), a.l2 != 0.0, a.l1 != 0.0};
  op.lr = static_cast<T>(a.lr);
  op.mom = static_cast<T>(a.momentum);
  op.damp1 = static_cast<T>(1.0 - a.dampening);
  op.nesterov = a.nesterov;
  op.undamped = a.dampening == 0.0;
  op.mode = a.momentum == 0.0 ? 0 : (a.first ? 1 : 2);
  return op;
}

template <class T>
inline AdamOp<T> make_adam(const AdamArgs& a) {
  AdamOp<T> op;
  op.pen = Penalty<T>{static_cast<T>(a.l2), static_cast<T>(a.l1), a.l2 != 0.0, a.l1 != 0.0};
  op.keep = static_cast<T>(1.0 - a.lr * a.decoupled);
  op.c1 = static_cast<T>(1.0 - a.beta1);
  op.b2 = static_cast<T>(a.beta2);
  op.c2 = static_cast<T>(1.0 - a.beta2);
  op.step = static_cast<T>(a.step_size);
  op.bc2 = static_cast<T>(a.bc2_sqrt);
  op.eps = static_cast<T>(a.eps);
  op.decay = a.decoupled != 0.0;
  return op;
}

// ------------------------------------------------------------------------------------------------
// Per-step table mode (SPEC12 op 4): a captured optimizer step reads its learning rate and Adam
// bias corrections from row *counter of a float64 table in device memory when it runs, so one
// CUDA graph replays correctly step after step. The host forms the rows with adam_args()'s
// arithmetic (python/fastnn/_backend/common.py: optim_table); each kernel thread turns its row
// into the functor's coefficients with exactly the conversions make_sgd / make_adam do on the
// host, so a row gives the same bits as the scalar call with the same values. The counter must
// stay below the table's row count (the caller's invariant: the table holds an epoch).

// Scalar mode: the functor as the host formed it.
struct NoTable {
  template <class Op>
  FASTNN_HD_INLINE Op operator()(const Op& op) const {
    return op;
  }
};

// SGD rows: (lr, first); first != 0 is the momentum buffer's first step. op comes from make_sgd
// (its mode 0, no momentum, stays 0: that kernel has no buffer).
constexpr int kSgdRow = 2;
struct SgdTable {
  const double* rows;
  const uint64_t* counter;
  template <class T>
  FASTNN_HD_INLINE SgdOp<T> operator()(SgdOp<T> op) const {
    const double* r = rows + kSgdRow * *counter;
    op.lr = static_cast<T>(r[0]);
    if (op.mode != 0) op.mode = r[1] != 0.0 ? 1 : 2;
    return op;
  }
};

// Adam rows: (lr, step_size, bc2_sqrt); decoupled: AdamW's weight decay, whose keep factor
// 1 - lr * decoupled make_adam forms in double from the lr.
constexpr int kAdamRow = 3;
struct AdamTable {
  const double* rows;
  const uint64_t* counter;
  double decoupled;
  template <class T>
  FASTNN_HD_INLINE AdamOp<T> operator()(AdamOp<T> op) const {
    const double* r = rows + kAdamRow * *counter;
    op.keep = static_cast<T>(sub_rn(1.0, mul_rn(r[0], decoupled)));
    op.step = static_cast<T>(r[1]);
    op.bc2 = static_cast<T>(r[2]);
    return op;
  }
};

}  // namespace optim_ops
}  // namespace cuda
}  // namespace fastnn
