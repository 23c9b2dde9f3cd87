// pybind11 glue for the GPU column statistics (csrc/cuda/stats.h): device pointers as Python ints,
// checked before any CUDA call. python/fastnn/_backend/cuda.py (col_stats) gives the user-facing
// messages; these checks keep _C itself safe.
#include <cstdint>
#include <string>

#include "bindings/common.h"
#include "cuda/stats.h"

namespace fastnn {
namespace {

template <class T>
T* dptr(uint64_t p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

size_t dtype_size(const std::string& dtype) {
  if (dtype != "float32" && dtype != "float64")
    throw py::type_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
  return dtype == "float32" ? 4 : 8;
}

// A non-empty device array needs a non-null pointer aligned to its elements.
void check_ptr(uint64_t p, int64_t count, size_t es, const char* name) {
  if (count > 0 && p == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
  if (p % es != 0)
    throw py::value_error(std::string(name) + ": not aligned to its " + std::to_string(es) + "-byte elements");
}

void check_shape(int64_t n, int64_t d, int64_t ldx) {
  if (n < 0) throw py::value_error("n: expected a row count >= 0, got " + std::to_string(n));
  if (d < 0) throw py::value_error("d: expected a column count >= 0, got " + std::to_string(d));
  if (ldx < d)
    throw py::value_error("ldx: expected a row stride >= d (" + std::to_string(d) + "), got " + std::to_string(ldx));
  if (d > 0 && n > INT64_MAX / 8 / (ldx > 0 ? ldx : 1)) throw py::value_error("x: too many elements");
}

// y (n, d) must be x itself (ldx == d) or not overlap x's rows.
void check_y(uint64_t x, int64_t ldx, uint64_t y, int64_t n, int64_t d, size_t es) {
  if (n == 0 || d == 0 || (x == y && ldx == d)) return;
  const uint64_t xe = x + static_cast<uint64_t>(((n - 1) * ldx + d) * static_cast<int64_t>(es));
  const uint64_t ye = y + static_cast<uint64_t>(n * d * static_cast<int64_t>(es));
  if (x < ye && y < xe) throw py::value_error("y_ptr: must be x itself or not overlap it");
}

}  // namespace

void register_cuda_stats(py::module_& m) {
  m.def(
      "cuda_col_stats",
      [](const std::string& dtype, uint64_t x, int64_t n, int64_t d, int64_t ldx, uint64_t out) {
        if (dtype != "float32" && dtype != "float64")
          throw py::type_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
        const size_t es = dtype == "float32" ? 4 : 8;
        if (n < 1) throw py::value_error("n: expected at least 1 row, got " + std::to_string(n));
        if (d < 0) throw py::value_error("d: expected a column count >= 0, got " + std::to_string(d));
        if (ldx < d) throw py::value_error("ldx: expected a row stride >= d (" + std::to_string(d) + "), got " +
                                           std::to_string(ldx));
        if (d > 0 && n > INT64_MAX / 8 / (ldx > 0 ? ldx : 1)) throw py::value_error("x: too many elements");
        if (d > 0 && (x == 0 || out == 0)) throw py::value_error("x_ptr, out_ptr: null device pointer");
        if (x % es != 0) throw py::value_error("x_ptr: not aligned to its " + std::to_string(es) + "-byte elements");
        if (out % 8 != 0) throw py::value_error("out_ptr: not aligned to its 8-byte elements");
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::col_stats(dptr<const float>(x), n, d, ldx, dptr<double>(out));
        else
          cuda::col_stats(dptr<const double>(x), n, d, ldx, dptr<double>(out));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("ldx"), py::arg("out_ptr"),
      "Column statistics of x (n, d) float32/float64 (row stride ldx elements) into out (2, d) float64: the "
      "means, then the sums of squared deviations, every sum in float64 in a fixed order (asynchronous on the "
      "current stream). A NaN or inf in a column makes its mean or m2 non-finite.");

  m.def(
      "cuda_center_scale",
      [](const std::string& dtype, uint64_t x, int64_t n, int64_t d, int64_t ldx, uint64_t y, uint64_t shift,
         uint64_t mul, uint64_t bad) {
        const size_t es = dtype_size(dtype);
        check_shape(n, d, ldx);
        const int64_t work = n * d;
        check_ptr(x, work, es, "x_ptr");
        check_ptr(y, work, es, "y_ptr");
        check_ptr(shift, work > 0 ? d : 0, es, "shift_ptr");
        check_ptr(mul, work > 0 ? d : 0, es, "mul_ptr");
        check_ptr(bad, work, 4, "bad_ptr");
        check_y(x, ldx, y, n, d, es);
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::center_scale(dptr<const float>(x), ldx, dptr<float>(y), n, d, dptr<const float>(shift),
                             dptr<const float>(mul), dptr<int>(bad));
        else
          cuda::center_scale(dptr<const double>(x), ldx, dptr<double>(y), n, d, dptr<const double>(shift),
                             dptr<const double>(mul), dptr<int>(bad));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("ldx"), py::arg("y_ptr"),
      py::arg("shift_ptr"), py::arg("mul_ptr"), py::arg("bad_ptr"),
      "y (n, d) = (x - shift) * mul per column (x rows at stride ldx; the CPU center_scale's roundings); the "
      "device int at bad_ptr is set to 1 when x holds a NaN or inf (asynchronous on the current stream).");

  m.def(
      "cuda_scale_shift",
      [](const std::string& dtype, uint64_t x, int64_t n, int64_t d, int64_t ldx, uint64_t y, uint64_t mul,
         uint64_t add) {
        const size_t es = dtype_size(dtype);
        check_shape(n, d, ldx);
        const int64_t work = n * d;
        check_ptr(x, work, es, "x_ptr");
        check_ptr(y, work, es, "y_ptr");
        check_ptr(mul, work > 0 ? d : 0, es, "mul_ptr");
        check_ptr(add, work > 0 ? d : 0, es, "add_ptr");
        check_y(x, ldx, y, n, d, es);
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::scale_shift(dptr<const float>(x), ldx, dptr<float>(y), n, d, dptr<const float>(mul),
                            dptr<const float>(add));
        else
          cuda::scale_shift(dptr<const double>(x), ldx, dptr<double>(y), n, d, dptr<const double>(mul),
                            dptr<const double>(add));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("ldx"), py::arg("y_ptr"),
      py::arg("mul_ptr"), py::arg("add_ptr"),
      "y (n, d) = x * mul + add per column (one FMA, as the CPU scale_shift; asynchronous on the current stream).");

  m.def(
      "cuda_gram",
      [](const std::string& dtype, uint64_t x, int64_t n, int64_t d, uint64_t g) {
        const size_t es = dtype_size(dtype);
        check_shape(n, d, d);
        check_ptr(x, n * d, es, "x_ptr");
        check_ptr(g, d * d, es, "g_ptr");
        if (d > 0 && n > 0 && x < g + static_cast<uint64_t>(d * d * static_cast<int64_t>(es)) &&
            g < x + static_cast<uint64_t>(n * d * static_cast<int64_t>(es)))
          throw py::value_error("g_ptr: must not overlap x");
        py::gil_scoped_release nogil;
        cuda::gram(es == 4 ? cuda::LDType::F32 : cuda::LDType::F64, dptr<const void>(x), n, d, dptr<void>(g));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("d"), py::arg("g_ptr"),
      "g (d, d) = x^T x for x (n, d) C-contiguous float32/float64, with cuBLASLt (no TF32) on the current stream.");

  m.def(
      "cuda_first_nonfinite",
      [](const std::string& dtype, uint64_t x, int64_t n, uint64_t out) {
        const size_t es = dtype_size(dtype);
        if (n < 0) throw py::value_error("n: expected an element count >= 0, got " + std::to_string(n));
        check_ptr(x, n, es, "x_ptr");
        check_ptr(out, 1, 8, "out_ptr");
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::first_nonfinite(dptr<const float>(x), n, dptr<uint64_t>(out));
        else
          cuda::first_nonfinite(dptr<const double>(x), n, dptr<uint64_t>(out));
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("n"), py::arg("out_ptr"),
      "The device uint64 at out_ptr = 0 when the n elements at x_ptr are all finite, else n - (the index of the "
      "first NaN or inf) (asynchronous on the current stream; out is zeroed first).");

  m.def(
      "cuda_argmax_count",
      [](const std::string& dtype, uint64_t logits, int64_t M, int64_t C, uint64_t target,
         const std::string& target_kind, uint64_t count) {
        const size_t es = dtype_size(dtype);
        if (M < 0) throw py::value_error("M: expected a row count >= 0, got " + std::to_string(M));
        if (C < 1) throw py::value_error("C: expected at least 1 class (column), got " + std::to_string(C));
        if (M > INT64_MAX / C) throw py::value_error("logits: too many elements");
        int label_bytes = 0;
        if (target_kind == "int32") label_bytes = 4;
        else if (target_kind == "int64") label_bytes = 8;
        else if (target_kind != "soft")
          throw py::value_error("target_kind: expected 'int32', 'int64' or 'soft', got '" + target_kind + "'");
        check_ptr(logits, M * C, es, "logits_ptr");
        check_ptr(target, label_bytes ? M : M * C, label_bytes ? label_bytes : es, "target_ptr");
        check_ptr(count, 1, 8, "count_ptr");
        py::gil_scoped_release nogil;
        if (es == 4)
          cuda::argmax_count(dptr<const float>(logits), M, C, dptr<const void>(target), label_bytes,
                             label_bytes ? nullptr : dptr<const float>(target), dptr<uint64_t>(count));
        else
          cuda::argmax_count(dptr<const double>(logits), M, C, dptr<const void>(target), label_bytes,
                             label_bytes ? nullptr : dptr<const double>(target), dptr<uint64_t>(count));
      },
      py::arg("dtype"), py::arg("logits_ptr"), py::arg("M"), py::arg("C"), py::arg("target_ptr"),
      py::arg("target_kind"), py::arg("count_ptr"),
      "The device uint64 at count_ptr = the rows of logits (M, C) whose argmax (first maximum, NaN wins) equals "
      "the target: int32/int64 labels (M,) (one outside [0, C) never matches) or the argmax of soft targets (M, C) "
      "of logits' dtype (asynchronous on the current stream; count is zeroed first).");

  m.def(
      "cuda_fill",
      [](uint64_t p, int64_t elems, int elem_bytes, uint64_t bits) {
        if (elem_bytes != 1 && elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8)
          throw py::value_error("elem_bytes: expected 1, 2, 4 or 8, got " + std::to_string(elem_bytes));
        if (elems < 0) throw py::value_error("elems: expected an element count >= 0, got " + std::to_string(elems));
        check_ptr(p, elems, static_cast<size_t>(elem_bytes), "ptr");
        py::gil_scoped_release nogil;
        cuda::fill(dptr<void>(p), elems, elem_bytes, bits);
      },
      py::arg("ptr"), py::arg("elems"), py::arg("elem_bytes"), py::arg("bits"),
      "Sets elems elements of elem_bytes bytes at ptr to the low elem_bytes bytes of bits (the value's bit pattern; "
      "asynchronous on the current stream).");
}

}  // namespace fastnn
