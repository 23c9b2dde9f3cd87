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
}

}  // namespace fastnn
