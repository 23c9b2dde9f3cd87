// The fused linear layer's orchestration over the per-ISA GEMM table (see linear.h). Compiled
// once: the kernels it calls are the dispatched ones, and the GEMM threads itself.
#include "cpu/linear.h"

#include <cstring>

#include "core/allocator.h"
#include "core/parallel.h"
#include "cpu/kernels.h"

namespace fastnn {
namespace cpu {

namespace {

// Packed keep bits of stream positions q0 .. q0 + n - 1, plus kBitPad bytes of padding, in a
// block from the host cache; threaded in 64-bit-aligned chunks (each chunk's bytes its own).
struct KeepBits {
  uint8_t* p = nullptr;
  size_t bytes = 0;
  KeepBits() = default;
  void fill(uint64_t seed, uint64_t q0, int64_t n, uint32_t threshold) {
    bytes = static_cast<size_t>((n + 7) / 8 + kBitPad);
    p = static_cast<uint8_t*>(host_alloc(bytes));
    std::memset(p + (n + 7) / 8, 0, kBitPad);
    const auto& k = dropout_kernels();
    uint8_t* o = p;
    parallel_for(n, kGrainElements * 4, 64, [&](int64_t b, int64_t e) {
      k.mask_bits(seed, q0 + static_cast<uint64_t>(b), e - b, threshold, o + b / 8);
    });
  }
  ~KeepBits() {
    if (p) host_free(p, bytes);
  }
  KeepBits(const KeepBits&) = delete;
  KeepBits& operator=(const KeepBits&) = delete;
};

// Mirrors the upper triangle of a square row-major C into the lower one.
template <class T>
void mirror_upper(T* c, int64_t n, int64_t ldc) {
  parallel_for(n, (kGrainElements + n - 1) / (n > 0 ? n : 1), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < i; ++j) c[i * ldc + j] = c[j * ldc + i];
  });
}

template <class T>
void set_act(GemmArgs<T>& g, const LinearAct<T>& a) {
  g.act = a.act;
  g.params = a.params;
  g.prelu_w = a.prelu_w;
  g.prelu_n = a.prelu_n;
}

}  // namespace

template <class T>
void matmul(const MatmulArgs<T>& a) {
  GemmArgs<T> g;
  g.bias = a.bias;
  set_act(g, a.act);
  g.a_row_shift = a.a_row_shift;
  g.a_col_shift = a.a_col_shift;
  g.b_col_shift = a.b_col_shift;
  g.upper = a.upper;
  g.bf16 = a.bf16;
  gemm_kernels_for<T>().gemm(a.M, a.N, a.K, a.a, a.rsa, a.csa, a.b, a.rsb, a.csb, a.c, a.N, g);
  if (a.upper) mirror_upper(a.c, a.N, a.N);
}

template <class T>
void linear_forward(const LinearForwardArgs<T>& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const uint64_t mn = static_cast<uint64_t>(M) * static_cast<uint64_t>(N);
  KeepBits drop_bits, dc_bits;
  if (a.rnd.dropout && M * N > 0) drop_bits.fill(a.rnd.seed, a.rnd.offset, M * N, a.rnd.drop_thr);
  if (a.rnd.dropconnect && N * K > 0) dc_bits.fill(a.rnd.seed, a.rnd.offset + mn, N * K, a.rnd.dc_thr);
  GemmArgs<T> g;
  g.bias = a.bias;
  set_act(g, a.act);
  if (drop_bits.p) {
    g.drop_bits = drop_bits.p;
    g.drop_ld = N;
    g.drop_scale = static_cast<T>(a.rnd.drop_scale);
  }
  if (dc_bits.p) {  // B = W^T: B(k, j) = W[j, k], the bit of W's C-order position j*K + k
    g.b_bits = dc_bits.p;
    g.b_bits_rs = 1;
    g.b_bits_cs = K;
    g.b_scale = static_cast<T>(a.rnd.dc_scale);
  }
  g.z_out = a.z_out;
  g.ldz = N;
  g.pos_bits = a.pos_bits;
  g.pos_ld = pos_row_bytes(N);
  g.pos_from_y = a.pos_from_y;
  g.bf16 = a.bf16;
  gemm_kernels_for<T>().gemm(M, N, K, a.x, a.rsx, a.csx, a.w, a.csw, a.rsw, a.y, N, g);
}

template <class T>
void linear_backward(const LinearBackwardArgs<T>& a) {
  const int64_t M = a.M, N = a.N, K = a.K;
  const uint64_t mn = static_cast<uint64_t>(M) * static_cast<uint64_t>(N);
  KeepBits drop_bits, dc_bits;
  // relu's saved bits were taken after dropout: they already hold the keep decisions.
  if (a.rnd.dropout && a.act.act != kActRelu && M * N > 0)
    drop_bits.fill(a.rnd.seed, a.rnd.offset, M * N, a.rnd.drop_thr);
  if (a.rnd.dropconnect && N * K > 0) dc_bits.fill(a.rnd.seed, a.rnd.offset + mn, N * K, a.rnd.dc_thr);
  const auto& kern = gemm_kernels_for<T>();
  const size_t gz_bytes = static_cast<size_t>(M * N) * sizeof(T) + 64;
  T* gz = static_cast<T*>(host_alloc(gz_bytes));
  LinearGradArgs<T> la;
  la.M = M;
  la.N = N;
  la.g = a.g;
  la.ldg = N;
  la.act = a.act.act;
  la.params = a.act.params;
  la.y = a.y;
  la.z = a.z;
  la.pos_bits = a.pos_bits;
  la.pos_ld = pos_row_bytes(N);
  la.keep_bits = drop_bits.p;
  la.drop_scale = a.rnd.dropout ? static_cast<T>(a.rnd.drop_scale) : T(1);
  la.prelu_w = a.act.prelu_w;
  la.prelu_n = a.act.prelu_n;
  la.gz = gz;
  la.grad_b = a.grad_b;
  la.grad_w = a.grad_prelu;
  kern.linear_grad(la);
  if (a.update_bias && a.grad_b) {
    const FusedUpdate<T>& u = *a.update_bias;
    const auto& ok = optim_kernels_for<T>();
    double total = 0.0;
    for (int64_t b = 0; b < N; b += kSumsqBlock) {
      const int64_t n = N - b < kSumsqBlock ? N - b : kSumsqBlock;
      double part = 0.0;
      double* ss = u.sumsq ? &part : nullptr;
      if (u.kind == FusedUpdate<T>::kSgd) ok.sgd(u.w + b, a.grad_b + b, u.s1 ? u.s1 + b : nullptr, n, u.sgd, ss);
      else ok.adam(u.w + b, a.grad_b + b, u.s1 + b, u.s2 + b, n, u.adam, ss);
      total += part;
    }
    if (u.sumsq) *u.sumsq = total;
  }
  // grad_x (M, K) = gz (M, N) . W_eff (N, K); W_eff's bit of (k, j) = W[k, j]: k*K + j.
  GemmArgs<T> gx;
  if (dc_bits.p) {
    gx.b_bits = dc_bits.p;
    gx.b_bits_rs = K;
    gx.b_bits_cs = 1;
    gx.b_scale = static_cast<T>(a.rnd.dc_scale);
  }
  gx.bf16 = a.bf16;
  if (a.grad_x) kern.gemm(M, K, N, gz, N, 1, a.w, a.rsw, a.csw, a.grad_x, K, gx);
  // grad_W (N, K) = gz^T (N, M) . x (M, K), then DropConnect's mask in the epilogue.
  GemmArgs<T> gw;
  if (dc_bits.p) {
    gw.drop_bits = dc_bits.p;
    gw.drop_ld = K;
    gw.drop_scale = static_cast<T>(a.rnd.dc_scale);
  }
  gw.bf16 = a.bf16;
  gw.update = a.update;
  kern.gemm(N, K, M, gz, 1, N, a.x, a.rsx, a.csx, a.grad_w, K, gw);
  host_free(gz, gz_bytes);
}

template void matmul<float>(const MatmulArgs<float>&);
template void matmul<double>(const MatmulArgs<double>&);
template void linear_forward<float>(const LinearForwardArgs<float>&);
template void linear_forward<double>(const LinearForwardArgs<double>&);
template void linear_backward<float>(const LinearBackwardArgs<float>&);
template void linear_backward<double>(const LinearBackwardArgs<double>&);

}  // namespace cpu
}  // namespace fastnn
