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
}

}  // namespace fastnn
