// pybind11 glue for GPU linear layers and matmul (csrc/cuda/linear.h), and the DLPack reader that
// lets bfloat16 tensors in (their __cuda_array_interface__ cannot describe bfloat16). Pointers travel
// as Python ints; python/fastnn/cuda.py checks shapes, dtypes and devices and gives the user-facing
// messages. The checks here keep _C itself safe: a bad size or pointer is an exception, never a launch.
#include <cstdint>
#include <string>

#include <pybind11/stl.h>
#include <vector>

#include "bindings/common.h"
#include "bindings/dlpack.h"
#include "cuda/cublaslt.h"
#include "cuda/linear.h"

namespace fastnn {
namespace {

using cuda::LDType;

LDType parse_linear_dtype(const std::string& s) {
  if (s == "float32") return LDType::F32;
  if (s == "float64") return LDType::F64;
  if (s == "bfloat16") return LDType::BF16;
  throw py::type_error("dtype: expected 'float32', 'float64' or 'bfloat16', got '" + s + "'");
}

// fastnn.set_matmul_precision's cuBLASLt math mode (cuda::LtMath), from python/fastnn/_precision.py.
int check_math(int math) {
  if (math < cuda::kLtMathF32 || math > cuda::kLtMathBf16)
    throw py::value_error("math: expected 0 (float32), 1 (TF32) or 2 (bf16), got " + std::to_string(math));
  return math;
}

size_t esize(LDType dt) { return dt == LDType::F64 ? 8 : dt == LDType::F32 ? 4 : 2; }

template <class T>
T* ptr_of(uint64_t p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

void check_dims(int64_t M, int64_t N, int64_t K) {
  if (M < 0 || N < 0 || K < 0)
    throw py::value_error("linear: dimensions must be >= 0, got (M, N, K) = (" + std::to_string(M) + ", " +
                          std::to_string(N) + ", " + std::to_string(K) + ")");
  const int64_t lim = INT64_MAX / 16;
  if ((M > 0 && N > lim / M) || (N > 0 && K > lim / N) || (M > 0 && K > lim / M))
    throw py::value_error("linear: M*N, N*K or M*K overflows");
}

// A non-empty operand needs a non-null pointer aligned to its elements.
void check_operand(uint64_t p, int64_t n, LDType dt, const char* name) {
  if (n > 0 && p == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
  if (p % esize(dt) != 0)
    throw py::value_error(std::string(name) + ": device pointer is not aligned to its " + std::to_string(esize(dt)) +
                          "-byte elements");
}

void check_act(int act, uint64_t prelu_w, int64_t prelu_size, int64_t N, LDType dt) {
  if (act < 0 || act >= kActCount)
    throw py::value_error("act: expected an activation id in [0, " + std::to_string(kActCount) + "), got " +
                          std::to_string(act));
  if (act == kActPrelu) {
    if (prelu_size != 1 && prelu_size != N)
      throw py::value_error("prelu_weight: expected 1 or " + std::to_string(N) + " elements, got " +
                            std::to_string(prelu_size));
    check_operand(prelu_w, 1, dt, "prelu_weight");
  }
}

// Positions offset .. offset + count - 1 must exist in the 2^64-position stream.
void check_positions(uint64_t offset, uint64_t count) {
  if (count > 0 && offset > UINT64_MAX - (count - 1))
    throw py::value_error("offset: offset + the positions used (M*N, + N*K with DropConnect) must be at most 2**64");
}

// The device uint64[2] (seed, offset) of the graph-safe variant, or null.
const uint64_t* rng_of(uint64_t p) {
  if (p % 8 != 0) throw py::value_error("rng_ptr: expected a device uint64[2], 8-byte aligned");
  return p != 0 ? ptr_of<const uint64_t>(p) : nullptr;
}

cuda::LinearRandom make_random(uint64_t seed, uint64_t offset, bool dropout, uint32_t drop_thr, double drop_scale,
                               bool dropconnect, uint32_t dc_thr, double dc_scale, int64_t M, int64_t N, int64_t K) {
  cuda::LinearRandom r;
  r.seed = seed;
  r.offset = offset;
  r.dropout = dropout;
  r.drop_thr = drop_thr;
  r.drop_scale = drop_scale;
  r.dropconnect = dropconnect;
  r.dc_thr = dc_thr;
  r.dc_scale = dc_scale;
  if (dropout || dropconnect)
    check_positions(offset, static_cast<uint64_t>(M * N) + (dropconnect ? static_cast<uint64_t>(N * K) : 0));
  return r;
}

cuda::LinearAct make_act(int act, double slope, double alpha, double scale, uint64_t prelu_w, int64_t prelu_size) {
  cuda::LinearAct a;
  a.act = act;
  a.slope = slope;
  a.alpha = alpha;
  a.scale = scale;
  a.prelu_w = ptr_of<const void>(prelu_w);
  a.prelu_size = prelu_size;
  return a;
}

void check_saved(int kind, uint64_t saved, uint64_t mask, int64_t mask_ld, int64_t M, int64_t N, LDType dt) {
  if (kind == cuda::kSaveReluMask) {
    if (mask_ld != cuda::linear_mask_ld(N))
      throw py::value_error("mask_ld: expected " + std::to_string(cuda::linear_mask_ld(N)) + " bits, got " +
                            std::to_string(mask_ld));
    if (M * N > 0 && (mask == 0 || mask % 16 != 0))
      throw py::value_error("mask: expected a 16-byte aligned device pointer");
  } else if (kind != cuda::kSaveNothing) {
    check_operand(saved, M * N, dt, "saved");
  }
}

// ---- DLPack reading ----------------------------------------------------------------------------------

py::dict dlpack_describe(py::capsule cap) {
  if (std::string(cap.name() ? cap.name() : "") != "dltensor")
    throw py::value_error("capsule: expected an unconsumed 'dltensor' capsule");
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (m == nullptr) throw py::error_already_set();
  const DLTensor& t = m->dl_tensor;
  py::dict d;
  d["ptr"] = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(t.data)) + t.byte_offset;
  py::list shape, strides;
  for (int i = 0; i < t.ndim; ++i) {
    shape.append(t.shape[i]);
    if (t.strides != nullptr) strides.append(t.strides[i]);
  }
  d["shape"] = py::tuple(shape);
  d["strides"] = t.strides != nullptr ? py::object(py::tuple(strides)) : py::object(py::none());
  d["code"] = static_cast<int>(t.dtype.code);
  d["bits"] = static_cast<int>(t.dtype.bits);
  d["lanes"] = static_cast<int>(t.dtype.lanes);
  d["device_type"] = t.device.device_type;
  d["device_id"] = t.device.device_id;
  return d;
}

}  // namespace

void register_cuda_linear(py::module_& m) {
  m.def("cuda_cublaslt_compiled", &cuda::cublaslt_compiled, "Whether the cuBLASLt calls are compiled in.");
  m.def(
      "cublaslt_load",
      [](const std::vector<std::string>& candidates) {
        py::gil_scoped_release nogil;
        return cuda::cublaslt_load(candidates);
      },
      py::arg("candidates"),
      "Loads libcublasLt (FASTNN_CUBLASLT, an already-loaded copy, each candidate folder, then the soname) and "
      "returns the file it came from; raises with every path tried. A failure is retried on the next call.");
  m.def("cublaslt_location", &cuda::cublaslt_location, "The libcublasLt file loaded ('' while none is).");
  m.def("cuda_cublaslt_load_error", &cuda::cublaslt_load_error,
        "'' when libcublasLt loads in this process (loading it on first call), else why not.");
  m.def("cuda_linear_save_kind", &cuda::linear_save_kind, py::arg("act"), py::arg("dropout"),
        "What the forward keeps for the backward (LinSave in csrc/cuda/linear.h).");
  m.def("cuda_linear_mask_ld", &cuda::linear_mask_ld, py::arg("N"), "Bits per row of the relu mask.");
  m.def("cuda_dlpack_describe", &dlpack_describe, py::arg("capsule"),
        "ptr (data + byte_offset), shape, strides (elements, or None), dtype code/bits/lanes and device of a "
        "'dltensor' capsule, which is left unconsumed.");

  m.def(
      "cuda_linear_forward",
      [](const std::string& dtype, int64_t M, int64_t N, int64_t K, uint64_t x, uint64_t w, uint64_t bias, int act,
         double slope, double alpha, double scale, uint64_t prelu_w, int64_t prelu_size, uint64_t seed,
         uint64_t offset, bool dropout, uint32_t drop_thr, double drop_scale, bool dropconnect, uint32_t dc_thr,
         double dc_scale, uint64_t y, uint64_t save, uint64_t mask, int64_t mask_ld, bool want_mask, int math,
         uint64_t rng) {
        const LDType dt = parse_linear_dtype(dtype);
        check_dims(M, N, K);
        check_act(act, prelu_w, prelu_size, N, dt);
        check_operand(x, M * K, dt, "x");
        check_operand(w, N * K, dt, "weight");
        check_operand(bias, 0, dt, "bias");
        check_operand(y, M * N, dt, "y");
        cuda::LinearForwardArgs a;
        a.dtype = dt;
        a.M = M;
        a.N = N;
        a.K = K;
        a.x = ptr_of<const void>(x);
        a.w = ptr_of<const void>(w);
        a.bias = bias != 0 ? ptr_of<const void>(bias) : nullptr;
        a.act = make_act(act, slope, alpha, scale, prelu_w, prelu_size);
        a.rnd = make_random(seed, offset, dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, M, N, K);
        a.rnd.rng_dev = rng_of(rng);
        a.y = ptr_of<void>(y);
        // Optional (0 = not kept): the mask (relu), the activation output (sigmoid/tanh with dropout)
        // or the pre-activation (leaky_relu/elu/selu/prelu).
        const int kind = cuda::linear_save_kind(act, dropout);
        if (kind == cuda::kSaveReluMask && want_mask) {
          check_saved(kind, save, mask, mask_ld, M, N, dt);
          a.mask = ptr_of<uint8_t>(mask);
          a.mask_ld = mask_ld;
        }
        if ((kind == cuda::kSaveActOut || kind == cuda::kSavePre) && save != 0) {
          check_saved(kind, save, mask, mask_ld, M, N, dt);
          a.save = ptr_of<void>(save);
        }
        a.math = check_math(math);
        py::gil_scoped_release nogil;
        cuda::linear_forward(a);
      },
      py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("x_ptr"), py::arg("w_ptr"),
      py::arg("bias_ptr"), py::arg("act"), py::arg("slope"), py::arg("alpha"), py::arg("scale"), py::arg("prelu_ptr"),
      py::arg("prelu_size"), py::arg("seed"), py::arg("offset"), py::arg("dropout"), py::arg("drop_thr"),
      py::arg("drop_scale"), py::arg("dropconnect"), py::arg("dc_thr"), py::arg("dc_scale"), py::arg("y_ptr"),
      py::arg("save_ptr"), py::arg("mask_ptr"), py::arg("mask_ld"), py::arg("want_mask"), py::arg("math"),
      py::arg("rng_ptr") = 0,
      "y = dropout(act(x @ dropconnect(W)^T + bias)) on the current device (bias_ptr 0: no bias); save_ptr / "
      "mask_ptr receive what the backward needs (see cuda_linear_save_kind). rng_ptr (a device uint64[2]): seed "
      "and offset read on the device (seed ignored, offset added), for graph replay.");

  m.def(
      "cuda_linear_backward",
      [](const std::string& dtype, int64_t M, int64_t N, int64_t K, uint64_t g, uint64_t x, uint64_t w, int act,
         double slope, double alpha, double scale, uint64_t prelu_w, int64_t prelu_size, uint64_t saved,
         uint64_t mask, int64_t mask_ld, uint64_t seed, uint64_t offset, bool dropout, uint32_t drop_thr,
         double drop_scale, bool dropconnect, uint32_t dc_thr, double dc_scale, uint64_t grad_x, uint64_t grad_w,
         uint64_t grad_bias, uint64_t grad_prelu, int math, uint64_t rng) {
        const LDType dt = parse_linear_dtype(dtype);
        check_dims(M, N, K);
        check_act(act, prelu_w, prelu_size, N, dt);
        check_operand(g, M * N, dt, "grad_output");
        check_operand(x, M * K, dt, "x");
        check_operand(w, N * K, dt, "weight");
        check_operand(grad_x, 0, dt, "grad_x");  // 0: no dgrad GEMM (the input needs no gradient)
        check_operand(grad_w, N * K, dt, "grad_weight");
        check_operand(grad_bias, 0, dt, "grad_bias");
        if (act == kActPrelu) check_operand(grad_prelu, 1, dt, "grad_prelu");
        const int kind = cuda::linear_save_kind(act, dropout);
        check_saved(kind, saved, mask, mask_ld, M, N, dt);
        cuda::LinearBackwardArgs a;
        a.dtype = dt;
        a.M = M;
        a.N = N;
        a.K = K;
        a.g = ptr_of<const void>(g);
        a.x = ptr_of<const void>(x);
        a.w = ptr_of<const void>(w);
        a.act = make_act(act, slope, alpha, scale, prelu_w, prelu_size);
        a.rnd = make_random(seed, offset, dropout, drop_thr, drop_scale, dropconnect, dc_thr, dc_scale, M, N, K);
        a.rnd.rng_dev = rng_of(rng);
        a.saved = ptr_of<const void>(saved);
        a.mask = ptr_of<const uint8_t>(mask);
        a.mask_ld = mask_ld;
        a.grad_x = ptr_of<void>(grad_x);
        a.grad_w = ptr_of<void>(grad_w);
        a.grad_bias = grad_bias != 0 ? ptr_of<void>(grad_bias) : nullptr;
        a.grad_prelu = act == kActPrelu ? ptr_of<void>(grad_prelu) : nullptr;
        a.math = check_math(math);
        py::gil_scoped_release nogil;
        cuda::linear_backward(a);
      },
      py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("g_ptr"), py::arg("x_ptr"), py::arg("w_ptr"),
      py::arg("act"), py::arg("slope"), py::arg("alpha"), py::arg("scale"), py::arg("prelu_ptr"), py::arg("prelu_size"),
      py::arg("saved_ptr"), py::arg("mask_ptr"), py::arg("mask_ld"), py::arg("seed"), py::arg("offset"),
      py::arg("dropout"), py::arg("drop_thr"), py::arg("drop_scale"), py::arg("dropconnect"), py::arg("dc_thr"),
      py::arg("dc_scale"), py::arg("grad_x_ptr"), py::arg("grad_w_ptr"), py::arg("grad_bias_ptr"),
      py::arg("grad_prelu_ptr"), py::arg("math"), py::arg("rng_ptr") = 0,
      "grad_x, grad_weight, grad_bias (grad_bias_ptr 0: none) and the PReLU weight gradient of cuda_linear_forward.");

  m.def(
      "cuda_matmul",
      [](const std::string& dtype, int64_t M, int64_t N, int64_t K, uint64_t a, uint64_t b, uint64_t c, int math) {
        const LDType dt = parse_linear_dtype(dtype);
        check_dims(M, N, K);
        check_operand(a, M * K, dt, "a");
        check_operand(b, K * N, dt, "b");
        check_operand(c, M * N, dt, "out");
        py::gil_scoped_release nogil;
        cuda::matmul(dt, M, N, K, ptr_of<const void>(a), ptr_of<const void>(b), ptr_of<void>(c), check_math(math));
      },
      py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("a_ptr"), py::arg("b_ptr"), py::arg("c_ptr"),
      py::arg("math"), "c (M, N) = a (M, K) @ b (K, N), C-contiguous, on the current device.");
}

}  // namespace fastnn
