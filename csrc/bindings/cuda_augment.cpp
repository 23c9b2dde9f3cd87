// pybind11 glue for data augmentation on the GPU (csrc/cuda/augment.h). Images travel as device
// pointers (Python ints) with their shapes; the per-sample parameters as host NumPy arrays,
// checked exactly as for the CPU kernel (bindings/augment_params.h) and uploaded by the launcher.
// python/fastnn/augment.py gives the user-facing messages; these checks keep _C itself safe: a bad
// size, pointer or box is an exception, never a launch.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "bindings/augment_params.h"
#include "bindings/common.h"
#include "cuda/augment.h"

namespace fastnn {
namespace {

template <class T>
T* dptr(uint64_t p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

// A non-empty device array needs a non-null pointer aligned to its elements.
void check_operand(uint64_t p, int64_t n, size_t esize, const char* name) {
  if (n > 0 && p == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
  if (p % esize != 0)
    throw py::value_error(std::string(name) + ": device pointer is not aligned to its " + std::to_string(esize) +
                          "-byte elements");
}

// Disjoint device ranges [a, a + an) and [b, b + bn) (bytes).
void check_disjoint(uint64_t a, int64_t an, uint64_t b, int64_t bn, const char* what) {
  if (an > 0 && bn > 0 && a < b + static_cast<uint64_t>(bn) && b < a + static_cast<uint64_t>(an))
    throw py::value_error(std::string(what));
}

int64_t checked_product(std::initializer_list<int64_t> dims, const char* name) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) throw py::value_error(std::string(name) + ": dimensions must be >= 0");
    if (d > 0 && n > INT64_MAX / 8 / d) throw py::value_error(std::string(name) + ": too many elements");
    n *= d;
  }
  return n;
}

// The image batch of augment_batch and its table mode: x (N, C, H, W) -> out (N, C, OH, OW), both
// float32 on the device and disjoint, and the transform's shape checked as on the CPU.
AugShape checked_batch(uint64_t x, uint64_t out, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                       int geom, int pad_mode, double fill, int jitter) {
  const int64_t xn = checked_product({N, C, H, W}, "x");
  const int64_t yn = checked_product({N, C, OH, OW}, "out");
  check_operand(x, xn, 4, "x");
  check_operand(out, yn, 4, "out");
  check_disjoint(x, 4 * xn, out, 4 * yn, "out: must not overlap x");
  const AugShape s = augment_args::checked_shape(N, C, H, W, OH, OW, geom, pad_mode, fill, jitter);
  if (yn > 0 && C * OH * OW > cuda::kAugMaxSampleElements)
    throw py::value_error("out: expected at most 2**31 - 1 elements per sample (C * OH * OW) on the GPU, got " +
                          std::to_string(C * OH * OW));
  return s;
}

// The n float32 elements of gaussian_noise and its table mode: out is x itself or disjoint from it.
void check_noise(uint64_t x, uint64_t out, int64_t n) {
  if (n < 0) throw py::value_error("n: expected a count >= 0, got " + std::to_string(n));
  check_operand(x, n, 4, "x");
  check_operand(out, n, 4, "out");
  if (x != out) check_disjoint(x, 4 * n, out, 4 * n, "out: must be x itself or not overlap it");
}

// The rows of mixup_apply and its table mode: x and out, N x D elements of dtype on the device,
// disjoint; returns the element size.
size_t checked_mixup(const std::string& dtype, uint64_t x, uint64_t out, int64_t N, int64_t D) {
  size_t es;
  if (dtype == "float32") es = 4;
  else if (dtype == "float64") es = 8;
  else throw py::type_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
  const int64_t n = checked_product({N, D}, "x");
  check_operand(x, n, es, "x");
  check_operand(out, n, es, "out");
  check_disjoint(x, static_cast<int64_t>(es) * n, out, static_cast<int64_t>(es) * n,
                 "out: must not overlap x (rows are read after being written)");
  return es;
}

}  // namespace

void register_cuda_augment(py::module_& m) {
  m.def(
      "cuda_augment_batch",
      [](uint64_t x, uint64_t out, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int geom,
         int pad_mode, double fill, int jitter, py::array ints, py::object factors) {
        const AugShape s = checked_batch(x, out, N, C, H, W, OH, OW, geom, pad_mode, fill, jitter);
        const std::vector<AugSample> ps = augment_args::checked_samples(s, N, ints, factors);
        if (N == 0 || C * OH * OW == 0) return;
        py::gil_scoped_release nogil;
        cuda::augment_batch(dptr<const float>(x), dptr<float>(out), N, s, ps.data());
      },
      py::arg("x_ptr"), py::arg("out_ptr"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("OH"),
      py::arg("OW"), py::arg("geom"), py::arg("pad_mode"), py::arg("fill"), py::arg("jitter"), py::arg("ints"),
      py::arg("factors"),
      "augment_batch on the GPU: x (N, C, H, W) float32 at x_ptr -> out (N, C, OH, OW) at out_ptr (disjoint), "
      "with the host arrays ints (N, 5) int32 and factors (N, 3) float32 of augment_batch (asynchronous on "
      "stream 0 after the parameters' upload).");

  m.def(
      "cuda_gaussian_noise",
      [](uint64_t x, uint64_t out, int64_t n, uint64_t seed, uint64_t offset, double std, bool noise, bool clip) {
        check_noise(x, out, n);
        if (noise && n > 0) {
          const uint64_t used = 2 * static_cast<uint64_t>(n);
          if (offset > UINT64_MAX - (used - 1))
            throw py::value_error("offset: offset + number of stream positions must be at most 2**64");
        }
        const float sd = static_cast<float>(std);
        py::gil_scoped_release nogil;
        cuda::gaussian_noise(dptr<const float>(x), dptr<float>(out), n, seed, offset, sd, noise, clip);
      },
      py::arg("x_ptr"), py::arg("out_ptr"), py::arg("n"), py::arg("seed"), py::arg("offset"), py::arg("std"),
      py::arg("noise"), py::arg("clip"),
      "out = x + std * z over n float32 elements (z from stream positions offset + 2e, offset + 2e + 1; x itself "
      "when noise is False), clamped to [0, 1] when clip; out may be x.");

  m.def(
      "cuda_mixup_apply",
      [](const std::string& dtype, uint64_t x, py::array perm, uint64_t out, int64_t N, int64_t D, double lam,
         double lam1) {
        const size_t es = checked_mixup(dtype, x, out, N, D);
        const int64_t n = N * D;
        if (!perm.dtype().equal(py::dtype::of<int64_t>())) throw py::type_error("perm: expected int64, got " + dtype_str(perm));
        require_c_contiguous(perm, "perm");
        augment_args::require_shape(perm, "perm", {N});
        const int64_t* pp = static_cast<const int64_t*>(perm.data());
        for (int64_t i = 0; i < N; ++i)
          if (pp[i] < 0 || pp[i] >= N) throw py::value_error("perm: entries must be in [0, N)");
        if (n == 0) return;
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::mixup_apply(dptr<const float>(x), pp, dptr<float>(out), N, D, static_cast<float>(lam),
                            static_cast<float>(lam1));
        else
          cuda::mixup_apply(dptr<const double>(x), pp, dptr<double>(out), N, D, lam, lam1);
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("perm"), py::arg("out_ptr"), py::arg("N"), py::arg("D"),
      py::arg("lam"), py::arg("lam1"),
      "out[i] = lam * x[i] + lam1 * x[perm[i]] over N rows of D elements on the GPU (perm: host int64 array; out "
      "must not overlap x).");
  // Table mode (csrc/cuda/augment.h): the step's parameters are read on the device at row *counter
  // of tables that hold an epoch's draws, so a training step captured as a CUDA graph replays with
  // each step's own flips, boxes, factors, noise positions and mixup permutation. The tables'
  // contents cannot be checked here (device memory): the Trainer fills them from
  // augment_pack_samples (checked on the host) and keeps *counter within them.
  m.def(
      "cuda_augment_batch_table",
      [](uint64_t x, uint64_t out, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int geom,
         int pad_mode, double fill, int jitter, uint64_t samples, uint64_t counter, int64_t stride, uint64_t cm) {
        const AugShape s = checked_batch(x, out, N, C, H, W, OH, OW, geom, pad_mode, fill, jitter);
        if (stride < N) throw py::value_error("stride: expected the table's rows per step (>= N = " + std::to_string(N) +
                                              "), got " + std::to_string(stride));
        if (N == 0 || C * OH * OW == 0) return;
        check_operand(samples, 1, 4, "samples_ptr");
        check_operand(counter, 1, 8, "counter_ptr");
        if (jitter & kJitContrast) check_operand(cm, N, 4, "cm_ptr");
        py::gil_scoped_release nogil;
        cuda::augment_batch_table(dptr<const float>(x), dptr<float>(out), N, s, dptr<const AugSample>(samples),
                                  dptr<const uint64_t>(counter), stride, dptr<float>(cm));
      },
      py::arg("x_ptr"), py::arg("out_ptr"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("OH"),
      py::arg("OW"), py::arg("geom"), py::arg("pad_mode"), py::arg("fill"), py::arg("jitter"), py::arg("samples_ptr"),
      py::arg("counter_ptr"), py::arg("stride"), py::arg("cm_ptr"),
      "cuda_augment_batch whose sample i reads samples_ptr[*counter_ptr * stride + i] (a device table of packed "
      "AugSample rows from augment_pack_samples; *counter read when the kernels run); cm_ptr: N float32 of device "
      "scratch for the contrast means (with contrast jitter). Capturable: no copy, no allocation.");

  m.def(
      "cuda_gaussian_noise_table",
      [](uint64_t x, uint64_t out, int64_t n, uint64_t sq, uint64_t counter, double std, bool noise, bool clip) {
        check_noise(x, out, n);
        if (n == 0) return;
        check_operand(counter, 1, 8, "counter_ptr");
        if (noise) check_operand(sq, 2, 8, "table_ptr");
        const float sd = static_cast<float>(std);
        py::gil_scoped_release nogil;
        cuda::gaussian_noise_table(dptr<const float>(x), dptr<float>(out), n, dptr<const uint64_t>(sq),
                                   dptr<const uint64_t>(counter), sd, noise, clip);
      },
      py::arg("x_ptr"), py::arg("out_ptr"), py::arg("n"), py::arg("table_ptr"), py::arg("counter_ptr"), py::arg("std"),
      py::arg("noise"), py::arg("clip"),
      "cuda_gaussian_noise with (seed, offset) read from row *counter_ptr of the device uint64 (steps, 2) table at "
      "table_ptr when the kernel runs (the caller keeps offset + 2n - 1 < 2**64). Capturable.");

  m.def(
      "cuda_mixup_apply_table",
      [](const std::string& dtype, uint64_t x, uint64_t perms, uint64_t lams, uint64_t counter, int64_t stride,
         uint64_t out, int64_t N, int64_t D) {
        const size_t es = checked_mixup(dtype, x, out, N, D);
        const int64_t n = N * D;
        if (stride < N) throw py::value_error("stride: expected the permutation table's rows per step (>= N = " +
                                              std::to_string(N) + "), got " + std::to_string(stride));
        if (n == 0) return;
        check_operand(perms, N, 8, "perms_ptr");
        check_operand(lams, 2, es, "lams_ptr");
        check_operand(counter, 1, 8, "counter_ptr");
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::mixup_apply_table(dptr<const float>(x), dptr<const int64_t>(perms), dptr<const float>(lams),
                                  dptr<const uint64_t>(counter), stride, dptr<float>(out), N, D);
        else
          cuda::mixup_apply_table(dptr<const double>(x), dptr<const int64_t>(perms), dptr<const double>(lams),
                                  dptr<const uint64_t>(counter), stride, dptr<double>(out), N, D);
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("perms_ptr"), py::arg("lams_ptr"), py::arg("counter_ptr"),
      py::arg("stride"), py::arg("out_ptr"), py::arg("N"), py::arg("D"),
      "cuda_mixup_apply with r = *counter_ptr read when the kernel runs: perm = perms_ptr + r * stride (device "
      "int64, entries in [0, N)), (lam, lam1) = row r of the device (steps, 2) table lams_ptr of the dtype. "
      "Capturable.");
}

}  // namespace fastnn
