// The fused linear layer and matmul on the CPU: the order of the passes, the keep bits of dropout
// and DropConnect, and the scratch, over the per-ISA GEMM table (csrc/cpu/gemm.h). Plain C++,
// called by csrc/bindings/gemm.cpp after its argument checks, with the GIL released.
//   forward   y = dropout(act(x . (W * dropconnect)^T + bias))
//   backward  gz = g * keep * act';  grad_x = gz . (W * dropconnect);  grad_W = (gz^T . x) * dropconnect
// Shapes as PyTorch's: x (M, K), W (N, K), y (M, N). Stream positions of the Philox generator:
// dropout offset + i*N + j, DropConnect offset + M*N + (C-order index in W), as on the GPU.
#pragma once

#include <cstdint>

#include "core/activation_kind.h"
#include "cpu/activation.h"
#include "cpu/gemm.h"

namespace fastnn {
namespace cpu {

// Bytes per row of the saved activation-sign bits: 64-bit rows.
inline int64_t pos_row_bytes(int64_t n) { return (n + 63) / 64 * 8; }

// The random part of a linear layer (thresholds = floor(p * 2^32), scales = 1 / (1 - p)).
struct LinearRandom {
  uint64_t seed = 0, offset = 0;
  bool dropout = false;
  uint32_t drop_thr = 0;
  double drop_scale = 1.0;
  bool dropconnect = false;
  uint32_t dc_thr = 0;
  double dc_scale = 1.0;
};

template <class T>
struct LinearAct {
  int act = kActIdentity;  // an ActKind
  ActParams params;
  const T* prelu_w = nullptr;  // kActPrelu: 1 or N weights
  int64_t prelu_n = 0;
};

// c (M, N) row stride N = act((a - a_row_shift - a_col_shift) . (b - b_col_shift) + bias); a, b
// through element strides; upper: the product is known symmetric (M == N), half the tiles are
// computed and mirrored.
template <class T>
struct MatmulArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* a = nullptr;
  int64_t rsa = 0, csa = 0;
  const T* b = nullptr;
  int64_t rsb = 0, csb = 0;
  T* c = nullptr;
  const T* bias = nullptr;
  LinearAct<T> act;
  const T *a_row_shift = nullptr, *a_col_shift = nullptr, *b_col_shift = nullptr;
  bool upper = false;
  bool bf16 = false;  // operands rounded to bfloat16 while packed, float32 accumulation (float32 only)
};

template <class T>
struct LinearForwardArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* x = nullptr;  // (M, K) through element strides
  int64_t rsx = 0, csx = 0;
  const T* w = nullptr;  // (N, K) through element strides
  int64_t rsw = 0, csw = 0;
  const T* bias = nullptr;  // (N,) or null
  LinearAct<T> act;
  LinearRandom rnd;
  T* y = nullptr;              // (M, N) C-contiguous
  uint8_t* pos_bits = nullptr;  // (M, pos_row_bytes(N)): bit j of row i = pos_from_y ? y > 0 : z > 0
  bool pos_from_y = false;
  T* z_out = nullptr;  // (M, N) pre-activation, or null
  bool bf16 = false;   // as MatmulArgs::bf16
};

template <class T>
struct LinearBackwardArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* g = nullptr;  // (M, N) C-contiguous
  const T* x = nullptr;
  int64_t rsx = 0, csx = 0;
  const T* w = nullptr;
  int64_t rsw = 0, csw = 0;
  LinearAct<T> act;
  LinearRandom rnd;
  const T* y = nullptr;              // saved output (sigmoid, tanh, elu)
  const T* z = nullptr;              // saved pre-activation (prelu)
  const uint8_t* pos_bits = nullptr;  // saved signs (relu, leaky_relu, elu)
  T* grad_x = nullptr;               // (M, K) or null: its GEMM is skipped
  T* grad_w = nullptr;               // (N, K)
  T* grad_b = nullptr;               // (N,) or null
  T* grad_prelu = nullptr;           // prelu_n or null
  bool bf16 = false;                 // both GEMMs, as MatmulArgs::bf16
  // Not null: the optimizer's update of w applied in grad_W's GEMM (GemmArgs::update; grad_w is
  // then scratch for K blocks, not the gradient). grad_x is computed first, from the old w.
  const FusedUpdate<T>* update = nullptr;
  // Not null: the optimizer's update of the bias (its w; ld unused) from grad_b once the first pass
  // has reduced it, by the update kernels themselves (sumsq over kSumsqBlock-element blocks added in
  // order, as csrc/bindings/optim.cpp: the same bits as the stored-gradient path).
  const FusedUpdate<T>* update_bias = nullptr;
};

// What the backward of `act` reads from the forward.
inline bool act_needs_output(int act) { return act == kActSigmoid || act == kActTanh || act == kActElu; }
inline bool act_needs_signs(int act) { return act == kActRelu || act == kActLeakyRelu || act == kActElu; }

template <class T>
void matmul(const MatmulArgs<T>& a);
template <class T>
void linear_forward(const LinearForwardArgs<T>& a);
template <class T>
void linear_backward(const LinearBackwardArgs<T>& a);

}  // namespace cpu
}  // namespace fastnn
