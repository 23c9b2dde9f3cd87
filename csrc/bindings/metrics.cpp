// pybind11 glue for csrc/cpu/metrics.h: argument checks and GIL release.
#include <string>

#include "bindings/common.h"
#include "cpu/metrics.h"

namespace fastnn {

namespace {

// out (M, C) float32/float64 C-contiguous; target (M,) int32/int64 labels or (M, C) soft
// targets of out's dtype. The number of rows whose argmax of out hits the target.
int64_t argmax_count(const py::array& out, const py::array& target) {
  const DType dt = float_dtype(out, "out");
  if (out.ndim() != 2) throw py::value_error("out: expected a 2-D array (rows, classes), got shape " + shape_str(out));
  require_c_contiguous(out, "out");
  const int64_t m = out.shape(0), c = out.shape(1);
  if (target.ndim() == 1) {
    const bool i64 = target.dtype().equal(py::dtype::of<int64_t>());
    if (!i64 && !target.dtype().equal(py::dtype::of<int32_t>()))
      throw py::type_error("target: expected int32 or int64 labels, got " + dtype_str(target));
    if (target.shape(0) != m)
      throw py::value_error("target: expected " + std::to_string(m) + " labels like out's rows, got " +
                            std::to_string(target.shape(0)));
    require_c_contiguous(target, "target");
    int64_t hits = 0;
    py::gil_scoped_release nogil;
    dispatch_float(dt, [&](auto t) {
      using T = decltype(t);
      hits = i64 ? argmax_count_labels(cptr<T>(out), m, c, c, cptr<int64_t>(target))
                 : argmax_count_labels(cptr<T>(out), m, c, c, cptr<int32_t>(target));
    });
    return hits;
  }
  if (target.ndim() != 2 || target.shape(0) != m || target.shape(1) != c)
    throw py::value_error("target: expected labels of shape (" + std::to_string(m) + ",) or soft targets of shape " +
                          shape_str(out) + ", got shape " + shape_str(target));
  if (!target.dtype().equal(out.dtype()))
    throw py::type_error("target: expected soft targets of dtype " + dtype_str(out) + " like out, got " +
                         dtype_str(target));
  require_c_contiguous(target, "target");
  int64_t hits = 0;
  py::gil_scoped_release nogil;
  dispatch_float(dt, [&](auto t) {
    using T = decltype(t);
    hits = argmax_count_soft(cptr<T>(out), m, c, c, cptr<T>(target), c);
  });
  return hits;
}

}  // namespace

void register_metrics(py::module_& m) {
  m.def("argmax_count", &argmax_count, py::arg("out"), py::arg("target"),
        "Rows of out (M, C) whose argmax (first maximum; NaN counts as the maximum, as numpy.argmax) "
        "equals target: (M,) int32/int64 labels, or the argmax of (M, C) soft targets of out's dtype.");
}

}  // namespace fastnn
