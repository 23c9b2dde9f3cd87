// Linear layers on the GPU (see linear.h): cuBLASLt GEMMs plus one elementwise pass for what its
// epilogues do not cover. csrc/cpu/gemm.cpp is the CPU twin; tests/test_cuda.py checks both
// against a NumPy float64 reference built from the same dropout masks.
//
// Layouts. cuBLASLt is column-major; a C-contiguous (R, C) array is a column-major (C x R) matrix
// with leading dimension C. So each row-major product is computed transposed:
//   forward  y (M,N) = x (M,K) @ W^T:  D (N x M, ld N) = op_T(W: K x N, ld K) @ (x: K x M, ld K)
//            m = N, n = M, k = K; the BIAS epilogue's vector runs along D's rows = N = out_features.
//   dgrad    gx (M,K) = Gz (M,N) @ W:   D (K x M, ld K) = (W: K x N, ld K) @ (Gz: N x M, ld N)
//            m = K, n = M, k = N
//   wgrad    gw (N,K) = Gz^T @ x:       D (K x N, ld K) = (x: K x M, ld K) @ op_T(Gz: N x M, ld N)
//            m = K, n = N, k = M; BGRADB reduces op(B) = Gz^T... over k = M: one sum per column
//            of D, i.e. per output feature = the bias gradient.
//   matmul   c (M,N) = a (M,K) @ b (K,N): D (N x M, ld N) = (b: N x K, ld N) @ (a: K x M, ld K)
// The RELU_AUX bitmask is column-major over D: column r of D (= row r of y) starts at bit
// r * mask_ld, bit c of it is element (r, c) of y.
//
// The GEMMs go through csrc/cuda/cublaslt.cu (run-time loading, plan cache); this file holds the
// elementwise kernels and the orchestration.
#include "cuda/linear.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "core/philox.h"
#include "cuda/cublaslt.h"
#include "cuda/device.h"
#include "cuda/device_math.cuh"
#include "cuda/launch.cuh"
#include "cuda/linear_kernels.cuh"


namespace fastnn {
namespace cuda {
namespace {

using launch::ceil_div;
using launch::check_launch;

using namespace linear_detail;

// (rng on the device: q0 unknown here, size for the worst shift 63.)
template <class F>
unsigned grid_for_units(F kernel, int64_t n, uint64_t q0) {
  const int64_t units = ((static_cast<int64_t>(q0 & 63) + n + 63) >> 6) * 16;
  return launch::grid_for<kThreads>(kernel, units);
}

// ---- host-side launchers ----------------------------------------------------------------------------------

[[maybe_unused]] size_t elem_size(LDType dt) { return dt == LDType::F64 ? 8 : dt == LDType::F32 ? 4 : 2; }

template <class F>
void dispatch(LDType dt, F&& f) {
  if (dt == LDType::F32) f(float{});
  else if (dt == LDType::F64) f(double{});
  else f(__nv_bfloat16{});
}

// A block of the caching allocator for the duration of one call (stream-0 ordered reuse is safe).
struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes) { if (bytes > 0) p = device_malloc(bytes); }
  ~Scratch() { device_free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

template <class C>
ActC<C> act_c(const LinearAct& a) {
  ActC<C> p;
  p.act = a.act;
  p.slope = static_cast<C>(a.slope);
  p.pos = static_cast<C>(a.scale);
  p.neg = static_cast<C>(a.scale * a.alpha);
  p.prelu_w = a.prelu_w;
  p.prelu_size = a.prelu_size;
  return p;
}

template <class T>
void drop_scale(const T* w, T* out, int64_t n, uint64_t seed, uint64_t q0, const uint64_t* rng, uint32_t thr,
                double scale) {
  if (n <= 0) return;
  using C = typename Compute<T>::type;
  auto kernel = drop_scale_kernel<T>;
  kernel<<<grid_for_units(kernel, n, rng != nullptr ? 63 : q0), kThreads, 0, launch::stream()>>>(
      w, out, n, seed, q0, rng, thr, static_cast<C>(scale));
  check_launch("linear dropconnect kernel launch");
}

template <class T>
void run_epilogue(const EpiArgs<T, typename Compute<T>::type>& a, bool drop) {
  const int64_t n = a.M * a.N;
  if (n <= 0) return;
  if (drop) {
    auto kernel = epilogue_kernel<T, true>;
    kernel<<<grid_for_units(kernel, n, a.rng != nullptr ? 63 : a.q0), kThreads, 0, launch::stream()>>>(a);
  } else {
    auto kernel = epilogue_kernel<T, false>;
    kernel<<<grid_for_units(kernel, n, 0), kThreads, 0, launch::stream()>>>(a);
  }
  check_launch("linear epilogue kernel launch");
}

template <class T>
void run_grad(const GradArgs<T, typename Compute<T>::type>& a, bool drop) {
  const int64_t n = a.M * a.N;
  if (n <= 0) return;
  if (drop) {
    auto kernel = grad_kernel<T, true>;
    kernel<<<grid_for_units(kernel, n, a.rng != nullptr ? 63 : a.q0), kThreads, 0, launch::stream()>>>(a);
  } else {
    auto kernel = grad_kernel<T, false>;
    kernel<<<grid_for_units(kernel, n, 0), kThreads, 0, launch::stream()>>>(a);
  }
  check_launch("linear backward kernel launch");
}

// out (N values, or 1 when all) = column sums of an (M, N) array, see colsum_partial_kernel.
template <class T, int Mode>
void colsum(const T* a, const T* g, int64_t M, int64_t N, bool all, const LinearRandom& rnd, T* out) {
  if (N <= 0) return;
  const int64_t chunks = std::max<int64_t>(1, ceil_div(M, kRowsPerChunk));
  if (chunks > 65535) throw std::runtime_error("linear: too many rows for the column sums (M > 65535 * 256)");
  Scratch partial(static_cast<size_t>(chunks * N) * sizeof(double));
  auto* part = static_cast<double*>(partial.p);
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kThreads)), static_cast<unsigned>(chunks));
  colsum_partial_kernel<T, Mode><<<grid, kThreads, 0, launch::stream()>>>(a, g, M, N, rnd.dropout, rnd.seed, rnd.offset, rnd.rng_dev, rnd.drop_thr,
                                                      rnd.drop_scale, part);
  check_launch("linear column-sum kernel launch");
  const unsigned fgrid = all ? 1u : static_cast<unsigned>(ceil_div(N, kThreads));
  colsum_finish_kernel<T><<<fgrid, kThreads, 0, launch::stream()>>>(part, chunks, N, all, out);
  check_launch("linear column-sum kernel launch");
}

// ---- forward and backward ---------------------------------------------------------------------------------

template <class T>
void forward_impl(const LinearForwardArgs& a) {
  using C = typename Compute<T>::type;
  const int64_t M = a.M, N = a.N, K = a.K;
  if (M == 0 || N == 0) return;
  const LinearRandom& rnd = a.rnd;
  const int kind = linear_save_kind(a.act.act, rnd.dropout);

  // DropConnect: W_eff in scratch, positions offset + M*N + j.
  const T* W = static_cast<const T*>(a.w);
  Scratch weff(rnd.dropconnect ? static_cast<size_t>(N * K) * sizeof(T) : 0);
  if (rnd.dropconnect && K > 0) {
    drop_scale<T>(W, static_cast<T*>(weff.p), N * K, rnd.seed, rnd.offset + static_cast<uint64_t>(M * N), rnd.rng_dev,
                  rnd.dc_thr, rnd.dc_scale);
    W = static_cast<const T*>(weff.p);
  }

  // The GEMM writes the pre-activation where the backward wants it kept, else straight into y.
  T* dst = static_cast<T*>(kind == kSavePre && a.save != nullptr ? a.save : a.y);
  const bool relu = a.act.act == kActRelu;
  uint32_t epi = a.bias != nullptr ? kEpiBias : kEpiDefault;
  if (relu) epi = a.mask != nullptr ? (a.bias != nullptr ? kEpiReluAuxBias : kEpiReluAux)
                                    : (a.bias != nullptr ? kEpiReluBias : kEpiRelu);
  GemmCall g{a.dtype, /*transa=*/true, /*transb=*/false, N, M, K, W, K, a.x, K, dst, N};
  g.epi = epi;
  g.bias = a.bias;
  g.aux = a.mask;
  g.aux_ld = a.mask_ld;
  g.math = a.math;
  g.stream = current_stream();
  bool fused = epi != kEpiDefault && gemm(g);
  if (!fused) {
    g.epi = kEpiDefault;
    g.bias = nullptr;
    g.aux = nullptr;
    gemm(g);
  }
  const bool act_done = fused && relu;  // the epilogue applied relu (and wrote the mask)
  const bool act_left = !act_done && a.act.act != kActIdentity;
  const bool bias_left = !fused && a.bias != nullptr;
  if (!act_left && !bias_left && !rnd.dropout) return;

  EpiArgs<T, C> e{};
  e.src = dst;
  e.y = static_cast<T*>(a.y);
  e.save = nullptr;
  if (kind == kSaveActOut) e.save = static_cast<T*>(a.save);  // (null when not kept)
  if (kind == kSavePre && bias_left && a.save != nullptr) e.save = dst;  // z = gemm + bias, in place
  e.save_pre = kind == kSavePre;
  e.mask = nullptr;
  e.mask_words = a.mask_ld / 32;
  if (relu && !act_done && a.mask != nullptr) {
    FASTNN_CUDA_CHECK(cudaMemsetAsync(a.mask, 0, static_cast<size_t>(M * (a.mask_ld / 8)), launch::stream()));
    e.mask = reinterpret_cast<uint32_t*>(a.mask);
  }
  e.bias = bias_left ? static_cast<const T*>(a.bias) : nullptr;
  e.M = M;
  e.N = N;
  e.act = act_c<C>(a.act);
  if (act_done) e.act.act = kActIdentity;
  e.seed = rnd.seed;
  e.q0 = rnd.offset;
  e.rng = rnd.rng_dev;
  e.thr = rnd.drop_thr;
  e.scale = static_cast<C>(rnd.drop_scale);
  run_epilogue<T>(e, rnd.dropout);
}

template <class T>
void backward_impl(const LinearBackwardArgs& a) {
  using C = typename Compute<T>::type;
  const int64_t M = a.M, N = a.N, K = a.K;
  const LinearRandom& rnd = a.rnd;

  // Gz = grad_output * keep * scale * act'(.)  (grad_output itself when there is nothing to apply)
  const T* gz = static_cast<const T*>(a.g);
  Scratch gz_buf((a.act.act != kActIdentity || rnd.dropout) ? static_cast<size_t>(M * N) * sizeof(T) : 0);
  if (a.act.act != kActIdentity || rnd.dropout) {
    GradArgs<T, C> r{};
    r.g = static_cast<const T*>(a.g);
    r.saved = static_cast<const T*>(a.saved);
    r.mask = reinterpret_cast<const uint32_t*>(a.mask);
    r.mask_words = a.mask_ld / 32;
    r.gz = static_cast<T*>(gz_buf.p);
    r.M = M;
    r.N = N;
    r.act = act_c<C>(a.act);
    r.seed = rnd.seed;
    r.q0 = rnd.offset;
    r.rng = rnd.rng_dev;
    r.thr = rnd.drop_thr;
    r.scale = static_cast<C>(rnd.drop_scale);
    run_grad<T>(r, rnd.dropout);
    gz = r.gz;
  }
  if (a.grad_prelu != nullptr)
    colsum<T, kSumPrelu>(static_cast<const T*>(a.saved), static_cast<const T*>(a.g), M, N, a.act.prelu_size == 1, rnd,
                         static_cast<T*>(a.grad_prelu));

  // wgrad (+ BGRADB): D (K x N) = x (K x M) @ op_T(Gz: N x M)
  GemmCall w{a.dtype, /*transa=*/false, /*transb=*/true, K, N, M, a.x, K, gz, N, a.grad_w, K};
  w.math = a.math;
  w.stream = current_stream();
  bool bias_done = false;
  if (a.grad_bias != nullptr) {
    w.epi = kEpiBgradB;
    w.bias = a.grad_bias;
    bias_done = gemm(w);
    w.epi = kEpiDefault;
    w.bias = nullptr;
  }
  if (!bias_done) gemm(w);
  if (a.grad_bias != nullptr && !bias_done) {
    LinearRandom none;
    colsum<T, kSumPlain>(gz, nullptr, M, N, false, none, static_cast<T*>(a.grad_bias));
  }
  const uint64_t dc_q0 = rnd.offset + static_cast<uint64_t>(M * N);
  if (rnd.dropconnect)
    drop_scale<T>(static_cast<const T*>(a.grad_w), static_cast<T*>(a.grad_w), N * K, rnd.seed, dc_q0, rnd.rng_dev,
                  rnd.dc_thr, rnd.dc_scale);

  // dgrad: D (K x M) = W_eff (K x N) @ Gz (N x M); skipped when no grad_x is asked for (a first
  // layer, whose input is data).
  if (a.grad_x == nullptr) return;
  const T* W = static_cast<const T*>(a.w);
  Scratch weff(rnd.dropconnect ? static_cast<size_t>(N * K) * sizeof(T) : 0);
  if (rnd.dropconnect && M > 0) {
    drop_scale<T>(W, static_cast<T*>(weff.p), N * K, rnd.seed, dc_q0, rnd.rng_dev, rnd.dc_thr, rnd.dc_scale);
    W = static_cast<const T*>(weff.p);
  }
  GemmCall d{a.dtype, /*transa=*/false, /*transb=*/false, K, M, N, W, K, gz, N, a.grad_x, K};
  d.math = a.math;
  d.stream = current_stream();
  gemm(d);
}

}  // namespace

void linear_forward(const LinearForwardArgs& a) {
  require_cublaslt();
  dispatch(a.dtype, [&](auto zero) { forward_impl<decltype(zero)>(a); });
}

void linear_backward(const LinearBackwardArgs& a) {
  require_cublaslt();
  dispatch(a.dtype, [&](auto zero) { backward_impl<decltype(zero)>(a); });
}

void matmul(LDType dtype, int64_t M, int64_t N, int64_t K, const void* a, const void* b, void* c, int math) {
  require_cublaslt();
  GemmCall g{dtype, /*transa=*/false, /*transb=*/false, N, M, K, b, N, a, K, c, N};
  g.math = math;
  g.stream = current_stream();
  gemm(g);
}

}  // namespace cuda
}  // namespace fastnn
