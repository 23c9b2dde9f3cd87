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
// The cuBLASLt library is opened with dlopen at first use (the path the build found first, then the
// nvidia-cublas wheel next to this module, then the system's), so the module imports and every
// other kernel works where libcublasLt is missing. Without FASTNN_HAVE_CUBLASLT only the
// elementwise kernels are compiled, and every GEMM entry point throws.
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
#include "cuda/device.h"
#include "cuda/launch.cuh"

#ifndef FASTNN_HAVE_CUBLASLT
#define FASTNN_HAVE_CUBLASLT 0
#endif
#if FASTNN_HAVE_CUBLASLT
#include <cublasLt.h>
#include <dlfcn.h>
#endif

namespace fastnn {
namespace cuda {
namespace {

using launch::ceil_div;
using launch::check_launch;

constexpr int kThreads = 256;

// ---- scalar types ----------------------------------------------------------------------------------
// Compute type: float for float32 and bfloat16, double for float64.

template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

__device__ __forceinline__ float to_c(float v) { return v; }
__device__ __forceinline__ double to_c(double v) { return v; }
__device__ __forceinline__ float to_c(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_c(typename Compute<T>::type v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_c<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dexpm1(float x) { return expm1f(x); }
__device__ __forceinline__ double dexpm1(double x) { return expm1(x); }
__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }

// Activation parameters rounded once to the compute type.
template <class C>
struct ActC {
  int act;
  C slope, pos, neg;  // leaky slope; ELU family: x > 0 ? pos * x : neg * expm1(x)
  const void* prelu_w;
  int64_t prelu_size;
};

// The forward of each activation, with csrc/cuda/activation.cu's formulas (NaN stays NaN).
template <class T, class C>
__device__ __forceinline__ C act_fwd(const ActC<C>& p, C z, int64_t col) {
  switch (p.act) {
    case kLinSigmoid: {
      const C e = dexp(C(0) - fabs(z));
      return (z < C(0) ? e : C(1)) / (C(1) + e);
    }
    case kLinTanh: return dtanh(z);
    case kLinRelu: return !(z <= C(0)) ? z : C(0);
    case kLinLeaky: return z > C(0) ? z : z * p.slope;
    case kLinElu: return z > C(0) ? z * p.pos : dexpm1(z) * p.neg;
    case kLinPrelu: {
      const C w = to_c(static_cast<const T*>(p.prelu_w)[p.prelu_size == 1 ? 0 : col]);
      return z > C(0) ? z : z * w;
    }
    default: return z;
  }
}

// ---- the stream, one Philox counter per thread ------------------------------------------------------
// Elements [0, n) at stream positions q0 + i. A unit is one counter: block b = b0 + r, counter c in
// [0, 16); it decides positions 64b + 16j + c (j = 0..3), i.e. elements i = 64r + 16j + c - s with
// s = q0 % 64 (csrc/core/philox.h's layout). A warp covers 2 blocks, 16 consecutive elements per
// half-warp and j. Without dropout the same walk runs with q0 = 0 and no Philox work.
template <bool Drop, class F>
__device__ __forceinline__ void for_each_position(int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, F&& f) {
  const uint64_t b0 = Drop ? q0 >> 6 : 0;
  const int64_t s = Drop ? static_cast<int64_t>(q0 & 63) : 0;
  const int64_t nunits = ((s + n + 63) >> 6) * 16;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < nunits; u += stride) {
    const int64_t r = u >> 4;
    const int c = static_cast<int>(u & 15);
    uint32_t keep = 0xF;
    if (Drop) {
      const philox::U32x4 w = philox::counter_words((b0 + static_cast<uint64_t>(r)) * 16 + static_cast<uint64_t>(c), seed);
      keep = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) keep |= static_cast<uint32_t>(w.v[j] >= thr) << j;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = r * 64 + 16 * j + c - s;
      if (i >= 0 && i < n) f(i, (keep >> j) & 1u);
    }
  }
}

template <class F>
unsigned grid_for_units(F kernel, int64_t n, uint64_t q0) {
  const int64_t units = ((static_cast<int64_t>(q0 & 63) + n + 63) >> 6) * 16;
  return launch::grid_for<kThreads>(kernel, units);
}

// ---- DropConnect: w_eff = w * (keep(q0 + j) ? scale : 0) over n elements ----------------------------
template <class T>
__global__ void __launch_bounds__(kThreads)
    drop_scale_kernel(const T* w, T* out, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr,
                      typename Compute<T>::type scale) {
  using C = typename Compute<T>::type;
  for_each_position<true>(n, seed, q0, thr, [&](int64_t i, uint32_t keep) {
    out[i] = from_c<T>(to_c(w[i]) * (keep ? scale : C(0)));
  });
}

// ---- the forward epilogue ------------------------------------------------------------------------------
// y[i] = act(src[i] + bias[col]) * (keep(q0 + i) ? scale : 0) over y (M, N); i = row * N + col.
// bias null: none (cuBLASLt added it). save (when not null) gets z = src + bias (save_pre) or the
// activation output. mask (fallback path only, zeroed by the caller) gets the relu bits of z > 0.
// y may be src; save may be src (each element is read, then written, by one thread).
template <class T, class C>
struct EpiArgs {
  const T* src;
  T* y;
  T* save;
  bool save_pre;
  uint32_t* mask;
  int64_t mask_words;  // 32-bit words per row of y
  const T* bias;
  int64_t M, N;
  ActC<C> act;
  uint64_t seed, q0;
  uint32_t thr;
  C scale;
};

template <class T, bool Drop>
__global__ void __launch_bounds__(kThreads) epilogue_kernel(EpiArgs<T, typename Compute<T>::type> a) {
  using C = typename Compute<T>::type;
  const int64_t n = a.M * a.N;
  for_each_position<Drop>(n, a.seed, a.q0, a.thr, [&](int64_t i, uint32_t keep) {
    const int64_t row = i / a.N, col = i - row * a.N;
    C z = to_c(a.src[i]);
    if (a.bias != nullptr) z += to_c(a.bias[col]);
    const C v = act_fwd<T, C>(a.act, z, col);
    if (a.save != nullptr) a.save[i] = from_c<T>(a.save_pre ? z : v);
    if (a.mask != nullptr && z > C(0))
      atomicOr(a.mask + row * a.mask_words + (col >> 5), 1u << (col & 31));
    a.y[i] = from_c<T>(Drop ? v * (keep ? a.scale : C(0)) : v);
  });
}

// ---- the backward's Gz -----------------------------------------------------------------------------------
// gz[i] = (g[i] * (keep ? scale : 0)) * act'(.), act' from the saved array (output or pre-activation)
// or the relu mask. NaN in the pre-activation gives NaN (as the activation kernels' backward).
template <class T, class C>
struct GradArgs {
  const T* g;
  const T* saved;
  const uint32_t* mask;
  int64_t mask_words;
  T* gz;
  int64_t M, N;
  ActC<C> act;
  uint64_t seed, q0;
  uint32_t thr;
  C scale;
};

template <class T, bool Drop>
__global__ void __launch_bounds__(kThreads) grad_kernel(GradArgs<T, typename Compute<T>::type> a) {
  using C = typename Compute<T>::type;
  const int64_t n = a.M * a.N;
  for_each_position<Drop>(n, a.seed, a.q0, a.thr, [&](int64_t i, uint32_t keep) {
    const int64_t row = i / a.N, col = i - row * a.N;
    C gd = to_c(a.g[i]);
    if (Drop) gd = gd * (keep ? a.scale : C(0));
    C d = C(1);
    switch (a.act.act) {
      case kLinRelu:
        d = ((a.mask[row * a.mask_words + (col >> 5)] >> (col & 31)) & 1u) ? C(1) : C(0);
        break;
      case kLinSigmoid: {
        const C s = to_c(a.saved[i]);
        d = s * (C(1) - s);
        break;
      }
      case kLinTanh: {
        const C t = to_c(a.saved[i]);
        d = C(1) - t * t;
        break;
      }
      case kLinLeaky: {
        const C z = to_c(a.saved[i]);
        d = isnan(z) ? z : (z > C(0) ? C(1) : a.act.slope);
        break;
      }
      case kLinElu: {
        const C z = to_c(a.saved[i]);
        d = z > C(0) ? a.act.pos : dexp(z) * a.act.neg;
        break;
      }
      case kLinPrelu: {
        const C z = to_c(a.saved[i]);
        const C w = to_c(static_cast<const T*>(a.act.prelu_w)[a.act.prelu_size == 1 ? 0 : col]);
        d = isnan(z) ? z : (z > C(0) ? C(1) : w);
        break;
      }
      default: break;
    }
    a.gz[i] = from_c<T>(gd * d);
  });
}

// ---- column sums, in double, in an order fixed by the shape ------------------------------------------
// Mode kSumPlain: sum over rows of a[row, col] (the bias gradient when BGRADB is not available).
// Mode kSumPrelu: sum over rows of (z > 0 ? 0 : z * gd), gd = g * (keep(q0 + i) ? scale : 0) (the
// PReLU weight gradient; the keep bits are regenerated per element).
// partial[chunk, col] for row chunks of kRowsPerChunk rows; then colsum_finish adds the chunks in
// order (and, for a shared PReLU weight, all columns with a fixed tree).
constexpr int64_t kRowsPerChunk = 256;
enum SumMode : int { kSumPlain = 0, kSumPrelu = 1 };

template <class T, int Mode>
__global__ void __launch_bounds__(kThreads)
    colsum_partial_kernel(const T* a, const T* g, int64_t M, int64_t N, bool drop, uint64_t seed, uint64_t q0,
                          uint32_t thr, double scale, double* partial) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (col >= N) return;
  const int64_t r0 = chunk * kRowsPerChunk, r1 = M < r0 + kRowsPerChunk ? M : r0 + kRowsPerChunk;
  double s = 0.0;
#pragma unroll 1
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r * N + col;
    if (Mode == kSumPlain) {
      s += static_cast<double>(to_c(a[i]));
    } else {
      const double z = static_cast<double>(to_c(a[i]));
      if (!(z > 0.0)) {
        double gd = static_cast<double>(to_c(g[i]));
        if (drop) gd = gd * (philox::bits_at(seed, q0 + static_cast<uint64_t>(i)) >= thr ? scale : 0.0);
        s += z * gd;
      }
    }
  }
  partial[chunk * N + col] = s;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    colsum_finish_kernel(const double* partial, int64_t chunks, int64_t N, bool all, T* out) {
  if (!all) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (col >= N) return;
    double s = 0.0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[k * N + col];
    out[col] = from_c<T>(static_cast<typename Compute<T>::type>(s));
    return;
  }
  // One block: thread t adds entries t, t + 256, ... in order, then a fixed tree.
  __shared__ double sh[kThreads];
  const int t = threadIdx.x;
  double s = 0.0;
  for (int64_t e = t; e < chunks * N; e += kThreads) s += partial[e];
  sh[t] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (t < w) sh[t] += sh[t + w];
    __syncthreads();
  }
  if (t == 0) out[0] = from_c<T>(static_cast<typename Compute<T>::type>(sh[0]));
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
void drop_scale(const T* w, T* out, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, double scale) {
  if (n <= 0) return;
  using C = typename Compute<T>::type;
  auto kernel = drop_scale_kernel<T>;
  kernel<<<grid_for_units(kernel, n, q0), kThreads>>>(w, out, n, seed, q0, thr, static_cast<C>(scale));
  check_launch("linear dropconnect kernel launch");
}

template <class T>
void run_epilogue(const EpiArgs<T, typename Compute<T>::type>& a, bool drop) {
  const int64_t n = a.M * a.N;
  if (n <= 0) return;
  if (drop) {
    auto kernel = epilogue_kernel<T, true>;
    kernel<<<grid_for_units(kernel, n, a.q0), kThreads>>>(a);
  } else {
    auto kernel = epilogue_kernel<T, false>;
    kernel<<<grid_for_units(kernel, n, 0), kThreads>>>(a);
  }
  check_launch("linear epilogue kernel launch");
}

template <class T>
void run_grad(const GradArgs<T, typename Compute<T>::type>& a, bool drop) {
  const int64_t n = a.M * a.N;
  if (n <= 0) return;
  if (drop) {
    auto kernel = grad_kernel<T, true>;
    kernel<<<grid_for_units(kernel, n, a.q0), kThreads>>>(a);
  } else {
    auto kernel = grad_kernel<T, false>;
    kernel<<<grid_for_units(kernel, n, 0), kThreads>>>(a);
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
  colsum_partial_kernel<T, Mode><<<grid, kThreads>>>(a, g, M, N, rnd.dropout, rnd.seed, rnd.offset, rnd.drop_thr,
                                                      rnd.drop_scale, part);
  check_launch("linear column-sum kernel launch");
  const unsigned fgrid = all ? 1u : static_cast<unsigned>(ceil_div(N, kThreads));
  colsum_finish_kernel<T><<<fgrid, kThreads>>>(part, chunks, N, all, out);
  check_launch("linear column-sum kernel launch");
}

// ---- cuBLASLt ------------------------------------------------------------------------------------------------

// Epilogue ids (cublasLtEpilogue_t values), spelled here so the no-cuBLASLt build compiles the same code.
enum Epi : uint32_t {
  kEpiDefault = 1, kEpiRelu = 2, kEpiReluAux = 130, kEpiBias = 4, kEpiReluBias = 6, kEpiReluAuxBias = 134,
  kEpiBgradB = 512,
};

struct GemmCall {
  LDType dt;
  bool transa, transb;
  int64_t m, n, k;
  const void* A;
  int64_t lda;
  const void* B;
  int64_t ldb;
  void* D;
  int64_t ldd;
  uint32_t epi = kEpiDefault;
  const void* bias = nullptr;  // BIAS*: input (m values); BGRADB: output (n values)
  void* aux = nullptr;         // RELU_AUX*: the bitmask
  int64_t aux_ld = 0;
  bool tf32 = false;
};

#if FASTNN_HAVE_CUBLASLT

#ifndef FASTNN_CUBLASLT_PATH
#define FASTNN_CUBLASLT_PATH ""
#endif
#ifndef FASTNN_CUBLASLT_SONAME
#define FASTNN_CUBLASLT_SONAME "libcublasLt.so.13"
#endif

// The entry points used, resolved with dlsym (typed from the header's declarations).
struct LtApi {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtGetStatusString) status_string;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
  std::string error;  // "" once loaded
  std::string path;   // the file that was loaded
};

// The directory of this extension module (for the wheel's site-packages/nvidia/cu13/lib next to it).
std::string module_dir() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&module_dir), &info) == 0 || info.dli_fname == nullptr) return "";
  std::string p = info.dli_fname;
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? std::string(".") : p.substr(0, slash);
}

const LtApi& lt() {
  static LtApi api = [] {
    LtApi a{};
    std::string tried;
    void* h = nullptr;
    std::string candidates[4];
    const char* env = std::getenv("FASTNN_CUBLASLT_LIBRARY");
    candidates[0] = env != nullptr ? env : "";
    candidates[1] = FASTNN_CUBLASLT_PATH;
    const std::string md = module_dir();
    candidates[2] = md.empty() ? "" : md + "/../nvidia/cu13/lib/" + FASTNN_CUBLASLT_SONAME;
    candidates[3] = FASTNN_CUBLASLT_SONAME;
    for (const std::string& c : candidates) {
      if (c.empty()) continue;
      h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h != nullptr) {
        a.path = c;
        break;
      }
      const char* e = dlerror();
      tried += "\n  " + c + ": " + (e != nullptr ? e : "not found");
    }
    if (h == nullptr) {
      a.error = "fastnn: libcublasLt could not be loaded; tried:" + tried +
                "\nInstall the nvidia-cublas wheel (pip install nvidia-cublas) or the CUDA toolkit's cuBLAS, or set "
                "FASTNN_CUBLASLT_LIBRARY to the path of " FASTNN_CUBLASLT_SONAME;
      return a;
    }
    bool ok = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (fn == nullptr) {
        ok = false;
        a.error += std::string(a.error.empty() ? "" : ", ") + name;
      }
    };
    sym(a.create, "cublasLtCreate");
    sym(a.status_string, "cublasLtGetStatusString");
    sym(a.desc_create, "cublasLtMatmulDescCreate");
    sym(a.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(a.desc_destroy, "cublasLtMatmulDescDestroy");
    sym(a.layout_create, "cublasLtMatrixLayoutCreate");
    sym(a.layout_destroy, "cublasLtMatrixLayoutDestroy");
    sym(a.pref_create, "cublasLtMatmulPreferenceCreate");
    sym(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(a.matmul, "cublasLtMatmul");
    if (!ok) a.error = "fastnn: " + a.path + " lacks the cuBLASLt entry points " + a.error;
    return a;
  }();
  return api;
}

const LtApi& lt_checked() {
  const LtApi& a = lt();
  if (!a.error.empty()) throw std::runtime_error(a.error);
  return a;
}

void lt_check(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  const char* s = lt().status_string != nullptr ? lt().status_string(st) : "?";
  throw std::runtime_error(std::string(what) + ": " + s + " (cublasStatus " + std::to_string(static_cast<int>(st)) +
                           ")");
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // NVIDIA's recommendation for Hopper

struct DeviceLt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

// One plan per (device, dtype, transposes, m, n, k, leading dimensions, epilogue, tf32, pointer
// alignments): the heuristic's choice depends on all of them. ok = false: no algorithm for it.
using PlanKey = std::array<int64_t, 19>;
struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t ws = 0;
};

// Never destroyed: cuBLASLt objects must not be released after the driver is torn down at exit.
std::mutex& lt_mutex() {
  static std::mutex* m = new std::mutex();
  return *m;
}
std::map<int, DeviceLt>& device_lt() {
  static auto* m = new std::map<int, DeviceLt>();
  return *m;
}
std::map<PlanKey, Plan>& plans() {
  static auto* m = new std::map<PlanKey, Plan>();
  return *m;
}

int64_t alignment(const void* p, int64_t cap) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int64_t a = 1;
  while (a < cap && (v % static_cast<uintptr_t>(a * 2)) == 0) a *= 2;
  return a;
}

cudaDataType_t cuda_type(LDType dt) {
  return dt == LDType::F32 ? CUDA_R_32F : dt == LDType::F64 ? CUDA_R_64F : CUDA_R_16BF;
}

bool uses_bias(uint32_t epi) { return epi == kEpiBias || epi == kEpiReluBias || epi == kEpiReluAuxBias || epi == kEpiBgradB; }
bool uses_aux(uint32_t epi) { return epi == kEpiReluAux || epi == kEpiReluAuxBias; }

// Builds the plan (caller holds lt_mutex). A failing heuristic leaves ok = false.
Plan make_plan(const LtApi& api, DeviceLt& dev, const GemmCall& g, const int64_t align[5]) {
  Plan p;
  const cudaDataType_t t = cuda_type(g.dt);
  const cublasComputeType_t compute = g.dt == LDType::F64 ? CUBLAS_COMPUTE_64F
                                      : (g.dt == LDType::F32 && g.tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                        : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale = g.dt == LDType::F64 ? CUDA_R_64F : CUDA_R_32F;
  lt_check(api.desc_create(&p.desc, compute, scale), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = g.transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  const cublasLtEpilogue_t epi = static_cast<cublasLtEpilogue_t>(g.epi);
  lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
  // The heuristic reads the pointers' values for their alignment: give it this call's.
  if (uses_bias(g.epi))
    lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)), "set BIAS_POINTER");
  if (uses_aux(g.epi)) {
    lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)), "set AUX_POINTER");
    lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.aux_ld, sizeof(g.aux_ld)), "set AUX_LD");
  }
  // Stored shapes (before op): A is (transa ? k x m : m x k), B is (transb ? n x k : k x n).
  lt_check(api.layout_create(&p.a, t, g.transa ? g.k : g.m, g.transa ? g.m : g.k, g.lda), "layout A");
  lt_check(api.layout_create(&p.b, t, g.transb ? g.n : g.k, g.transb ? g.k : g.n, g.ldb), "layout B");
  lt_check(api.layout_create(&p.d, t, g.m, g.n, g.ldd), "layout D");
  cublasLtMatmulPreference_t pref = nullptr;
  lt_check(api.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  lt_check(api.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), "set MAX_WORKSPACE");
  const cublasLtMatmulPreferenceAttributes_t attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  const int64_t which[4] = {align[0], align[1], align[2], align[2]};
  for (int i = 0; i < 4; ++i) {
    const uint32_t v = static_cast<uint32_t>(which[i]);
    lt_check(api.pref_set(pref, attrs[i], &v, sizeof(v)), "set MIN_ALIGNMENT");
  }
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st = api.heuristic(dev.handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &res, &found);
  api.pref_destroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
    p.ok = true;
    p.algo = res.algo;
    p.ws = res.workspaceSize;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE) {
    lt_check(st, "cublasLtMatmulAlgoGetHeuristic");
  }
  return p;
}

// Runs the GEMM with its epilogue; false when cuBLASLt has no algorithm for that epilogue (the
// caller then does its work itself). DEFAULT with no algorithm is an error.
bool gemm(const GemmCall& g) {
  if (g.m <= 0 || g.n <= 0 || g.k <= 0) {
    if (g.epi != kEpiDefault) return false;
    if (g.m > 0 && g.n > 0)  // k == 0: D = 0
      FASTNN_CUDA_CHECK(cudaMemsetAsync(g.D, 0, static_cast<size_t>(g.m * g.n) * elem_size(g.dt), 0));
    return true;
  }
  const LtApi& api = lt_checked();
  const int device = get_device();
  const int64_t align[5] = {alignment(g.A, 256), alignment(g.B, 256), alignment(g.D, 256),
                            uses_bias(g.epi) ? alignment(g.bias, 256) : 0, uses_aux(g.epi) ? alignment(g.aux, 256) : 0};
  const PlanKey key = {device, static_cast<int64_t>(g.dt), g.transa, g.transb, g.m, g.n, g.k, g.lda, g.ldb, g.ldd,
                       static_cast<int64_t>(g.epi), g.tf32 && g.dt == LDType::F32, align[0], align[1], align[2],
                       align[3], align[4], uses_aux(g.epi) ? g.aux_ld : 0, 0};
  std::lock_guard<std::mutex> lock(lt_mutex());
  DeviceLt& dev = device_lt()[device];
  if (dev.handle == nullptr) {
    lt_check(api.create(&dev.handle), "cublasLtCreate");
    dev.workspace = device_malloc(kWorkspaceBytes);  // kept for the life of the process
  }
  auto it = plans().find(key);
  if (it == plans().end()) it = plans().emplace(key, make_plan(api, dev, g, align)).first;
  Plan& p = it->second;
  if (!p.ok) {
    if (g.epi == kEpiDefault)
      throw std::runtime_error("cuBLASLt has no matmul algorithm for (m, n, k) = (" + std::to_string(g.m) + ", " +
                               std::to_string(g.n) + ", " + std::to_string(g.k) + ") of this dtype");
    return false;
  }
  // This call's pointers (same alignment as the plan's, by the key).
  if (uses_bias(g.epi))
    lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)), "set BIAS_POINTER");
  if (uses_aux(g.epi))
    lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)), "set AUX_POINTER");
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const bool f64 = g.dt == LDType::F64;
  const void* alpha = f64 ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f);
  const void* beta = f64 ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f);
  lt_check(api.matmul(dev.handle, p.desc, alpha, g.A, p.a, g.B, p.b, beta, g.D, p.d, g.D, p.d, &p.algo, dev.workspace,
                      p.ws, /*stream=*/0),
           "cublasLtMatmul");
  return true;
}

#else  // !FASTNN_HAVE_CUBLASLT

[[noreturn]] void no_cublaslt() {
  throw std::runtime_error(
      "fastnn was built without cuBLASLt, which GPU linear layers and matmul need: install the nvidia-cublas wheel "
      "(pip install nvidia-cublas) or the CUDA toolkit's cuBLAS, then rebuild fastnn with CUDA "
      "(pip install --no-build-isolation -Ccmake.define.FASTNN_CUDA=ON .)");
}

bool gemm(const GemmCall&) { no_cublaslt(); }

#endif  // FASTNN_HAVE_CUBLASLT

void require_cublaslt() {
#if FASTNN_HAVE_CUBLASLT
  lt_checked();
#else
  no_cublaslt();
#endif
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
    drop_scale<T>(W, static_cast<T*>(weff.p), N * K, rnd.seed, rnd.offset + static_cast<uint64_t>(M * N), rnd.dc_thr,
                  rnd.dc_scale);
    W = static_cast<const T*>(weff.p);
  }

  // The GEMM writes the pre-activation where the backward wants it kept, else straight into y.
  T* dst = static_cast<T*>(kind == kSavePre && a.save != nullptr ? a.save : a.y);
  const bool relu = a.act.act == kLinRelu;
  uint32_t epi = a.bias != nullptr ? kEpiBias : kEpiDefault;
  if (relu) epi = a.mask != nullptr ? (a.bias != nullptr ? kEpiReluAuxBias : kEpiReluAux)
                                    : (a.bias != nullptr ? kEpiReluBias : kEpiRelu);
  GemmCall g{a.dtype, /*transa=*/true, /*transb=*/false, N, M, K, W, K, a.x, K, dst, N};
  g.epi = epi;
  g.bias = a.bias;
  g.aux = a.mask;
  g.aux_ld = a.mask_ld;
  g.tf32 = a.tf32;
  bool fused = epi != kEpiDefault && gemm(g);
  if (!fused) {
    g.epi = kEpiDefault;
    g.bias = nullptr;
    g.aux = nullptr;
    gemm(g);
  }
  const bool act_done = fused && relu;  // the epilogue applied relu (and wrote the mask)
  const bool act_left = !act_done && a.act.act != kLinIdentity;
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
    FASTNN_CUDA_CHECK(cudaMemsetAsync(a.mask, 0, static_cast<size_t>(M * (a.mask_ld / 8)), 0));
    e.mask = reinterpret_cast<uint32_t*>(a.mask);
  }
  e.bias = bias_left ? static_cast<const T*>(a.bias) : nullptr;
  e.M = M;
  e.N = N;
  e.act = act_c<C>(a.act);
  if (act_done) e.act.act = kLinIdentity;
  e.seed = rnd.seed;
  e.q0 = rnd.offset;
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
  Scratch gz_buf((a.act.act != kLinIdentity || rnd.dropout) ? static_cast<size_t>(M * N) * sizeof(T) : 0);
  if (a.act.act != kLinIdentity || rnd.dropout) {
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
  w.tf32 = a.tf32;
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
    drop_scale<T>(static_cast<const T*>(a.grad_w), static_cast<T*>(a.grad_w), N * K, rnd.seed, dc_q0, rnd.dc_thr,
                  rnd.dc_scale);

  // dgrad: D (K x M) = W_eff (K x N) @ Gz (N x M)
  const T* W = static_cast<const T*>(a.w);
  Scratch weff(rnd.dropconnect ? static_cast<size_t>(N * K) * sizeof(T) : 0);
  if (rnd.dropconnect && M > 0) {
    drop_scale<T>(W, static_cast<T*>(weff.p), N * K, rnd.seed, dc_q0, rnd.dc_thr, rnd.dc_scale);
    W = static_cast<const T*>(weff.p);
  }
  GemmCall d{a.dtype, /*transa=*/false, /*transb=*/false, K, M, N, W, K, gz, N, a.grad_x, K};
  d.tf32 = a.tf32;
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

void matmul(LDType dtype, int64_t M, int64_t N, int64_t K, const void* a, const void* b, void* c, bool tf32) {
  require_cublaslt();
  GemmCall g{dtype, /*transa=*/false, /*transb=*/false, N, M, K, b, N, a, K, c, N};
  g.tf32 = tf32;
  gemm(g);
}

bool cublaslt_compiled() { return FASTNN_HAVE_CUBLASLT != 0; }

std::string cublaslt_library() {
#if FASTNN_HAVE_CUBLASLT
  return FASTNN_CUBLASLT_PATH;
#else
  return "";
#endif
}

std::string cublaslt_load_error() {
#if FASTNN_HAVE_CUBLASLT
  return lt().error;
#else
  return "fastnn was built without cuBLASLt";
#endif
}

}  // namespace cuda
}  // namespace fastnn
