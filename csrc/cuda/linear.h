// Linear layers and matmul on the GPU: launchers callable from plain C++ (csrc/bindings/cuda_linear.cpp).
// y = dropout(act(x @ W_eff^T + bias)), W_eff = W * dropconnect keep / (1 - p), with PyTorch's shapes:
// x (M, K), W (N, K), bias (N,), y (M, N), all C-contiguous. The GEMMs are cuBLASLt's (BIAS,
// RELU_BIAS / RELU_AUX_BIAS and BGRADB epilogues where cuBLASLt has a kernel for them, else our own
// elementwise kernels do the same work); every other activation, dropout and DropConnect is one
// elementwise pass of csrc/cuda/linear.cu. Random decisions: dropout at stream positions
// offset + i (i the C-order index in y), DropConnect at offset + M*N + j (j the C-order index in W),
// the Philox stream of csrc/core/philox.h, so masks equal the CPU's.
//
// Every pointer is device memory on the current device; everything is asynchronous on the calling
// thread's current stream (device.h), like the other launchers. Scratch (W_eff, the backward's Gz, column
// partial sums) comes from fastnn's caching device allocator; the cuBLASLt handle, descriptors,
// layouts, heuristic results and a 32 MiB workspace are created once per device and shape and
// cached for the life of the process. Throws std::runtime_error on CUDA / cuBLASLt errors and
// when cuBLASLt is not available (not compiled in, or libcublasLt cannot be loaded).
#pragma once

#include <cstdint>
#include <string>

#include "core/activation_kind.h"

namespace fastnn {
namespace cuda {

enum class LDType : int { F32 = 0, F64 = 1, BF16 = 2 };

// Activation ids of the linear epilogue: ActKind (core/activation_kind.h); selu is kActElu with the
// SELU alpha and scale.

// What the forward keeps for the backward (the caller allocates it, see linear_save_kind):
//   kSaveNothing    identity: Gz needs only grad_output and the dropout stream
//   kSaveReluMask   relu: 1 bit per element, row r of y at bits [r * mask_ld, r * mask_ld + N)
//                   (little-endian bit order; mask_ld = linear_mask_ld(N), a multiple of 128)
//   kSaveOutput     sigmoid/tanh without dropout: y itself is the activation output
//   kSaveActOut     sigmoid/tanh with dropout: an (M, N) array of the activation output
//   kSavePre        leaky_relu/elu/selu/prelu: an (M, N) array of the pre-activation x W^T + b
enum LinSave : int { kSaveNothing = 0, kSaveReluMask, kSaveOutput, kSaveActOut, kSavePre };

inline int linear_save_kind(int act, bool dropout) {
  switch (act) {
    case kActIdentity: return kSaveNothing;
    case kActRelu: return kSaveReluMask;
    case kActSigmoid:
    case kActTanh: return dropout ? kSaveActOut : kSaveOutput;
    default: return kSavePre;
  }
}

// Bits per row of the relu mask: N rounded up to cuBLASLt's RELU_AUX leading-dimension rule
// (a multiple of 128, at least the rows of its column-major output, i.e. N).
inline int64_t linear_mask_ld(int64_t N) { return (N + 127) / 128 * 128; }

struct LinearRandom {
  uint64_t seed = 0, offset = 0;
  bool dropout = false;      // y positions offset + i
  uint32_t drop_thr = 0;
  double drop_scale = 1.0;   // rounded to the dtype by the caller (float for bfloat16)
  bool dropconnect = false;  // W positions offset + M*N + j
  uint32_t dc_thr = 0;
  double dc_scale = 1.0;
  // Graph-safe randomness: when set, a device uint64[2] read by the kernels at run time, seed =
  // rng_dev[0] and the stream offset = rng_dev[1] + offset (offset then a shift, usually 0), so a
  // replayed graph draws new masks after the offset is advanced on the device (rng_advance).
  const uint64_t* rng_dev = nullptr;
};

struct LinearAct {
  int act = kActIdentity;
  double slope = 0.01, alpha = 1.0, scale = 1.0;  // leaky slope; ELU family scale*(x>0 ? x : alpha*expm1(x))
  const void* prelu_w = nullptr;                   // prelu: 1 or N elements of the dtype
  int64_t prelu_size = 0;
};

struct LinearForwardArgs {
  LDType dtype = LDType::F32;
  int64_t M = 0, N = 0, K = 0;
  const void* x = nullptr;     // (M, K)
  const void* w = nullptr;     // (N, K)
  const void* bias = nullptr;  // (N,) or null
  LinearAct act;
  LinearRandom rnd;
  void* y = nullptr;           // (M, N); must not overlap the inputs
  void* save = nullptr;        // (M, N) for kSaveActOut / kSavePre when kept for a backward, else null
  uint8_t* mask = nullptr;     // M * mask_ld / 8 bytes for kSaveReluMask when kept, else null
  int64_t mask_ld = 0;
  int math = 0;                // float32 only: LtMath (cublaslt.h), 0 float32, 1 TF32, 2 bf16
};
void linear_forward(const LinearForwardArgs& a);

struct LinearBackwardArgs {
  LDType dtype = LDType::F32;
  int64_t M = 0, N = 0, K = 0;
  const void* g = nullptr;      // grad_output (M, N)
  const void* x = nullptr;      // (M, K)
  const void* w = nullptr;      // (N, K), the weight before DropConnect
  LinearAct act;
  LinearRandom rnd;             // as in the forward
  const void* saved = nullptr;  // kSaveOutput / kSaveActOut / kSavePre array, else null
  const uint8_t* mask = nullptr;
  int64_t mask_ld = 0;
  void* grad_x = nullptr;       // (M, K)
  void* grad_w = nullptr;       // (N, K)
  void* grad_bias = nullptr;    // (N,) or null
  void* grad_prelu = nullptr;   // prelu_size elements (prelu only), else null
  int math = 0;                 // as in the forward
};
// Gz = grad_output * dropout keep * scale * act'(.); grad_x = Gz @ W_eff; grad_w = (Gz^T @ x) *
// keep_dc * scale_dc; grad_bias = column sums of Gz; grad_prelu[c] = sum over z <= 0 of z * grad
// after dropout (in double, fixed order).
void linear_backward(const LinearBackwardArgs& a);

// c (M, N) = a (M, K) @ b (K, N), C-contiguous; c must not overlap a or b.
void matmul(LDType dtype, int64_t M, int64_t N, int64_t K, const void* a, const void* b, void* c, int math);

// cuBLASLt loading and its build/run-time facts: csrc/cuda/cublaslt.h.

}  // namespace cuda
}  // namespace fastnn
