// pybind11 glue for the GEMM family: checks, GIL release; the kernel threads itself.
#include <string>

#include "bindings/common.h"
#include "core/dispatch.h"

namespace fastnn {

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void require_2d(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + ": expected a 2-D array, got shape " + shape_str(a));
}

// Element strides of a 2-D operand (any strides that are whole elements, the data aligned).
void element_strides(const py::array& a, const char* name, int64_t* rs, int64_t* cs) {
  const auto item = static_cast<int64_t>(a.itemsize());
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || a.strides(0) % item || a.strides(1) % item)
    throw py::value_error(std::string(name) + ": expected strides that are whole elements and aligned data");
  *rs = a.strides(0) / item;
  *cs = a.strides(1) / item;
}

}  // namespace

void register_gemm(py::module_& m) {
  m.def(
      "matmul",
      [](py::array a, py::array b, py::array out, py::object bias, int act, double slope, double alpha,
         double scale) {
        DType dt = float_dtype(a, "a");
        require_2d(a, "a");
        require_2d(b, "b");
        require_2d(out, "out");
        if (!a.dtype().is(b.dtype()))
          throw py::type_error("b: expected dtype " + dtype_str(a) + " like a, got " + dtype_str(b));
        if (!a.dtype().is(out.dtype()))
          throw py::type_error("out: expected dtype " + dtype_str(a) + " like a, got " + dtype_str(out));
        const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
        if (b.shape(0) != K)
          throw py::value_error("matmul: inner dimensions differ: a " + shape_str(a) + ", b " + shape_str(b));
        if (out.shape(0) != M || out.shape(1) != N)
          throw py::value_error("out: expected shape (" + std::to_string(M) + ", " + std::to_string(N) + "), got " +
                                shape_str(out));
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        int64_t rsa, csa, rsb, csb;
        element_strides(a, "a", &rsa, &csa);
        element_strides(b, "b", &rsb, &csb);
        py::array bias_arr;  // default-constructed: an empty array, not a null handle
        const bool has_bias = !bias.is_none();
        if (has_bias) {
          bias_arr = bias.cast<py::array>();
          if (!a.dtype().is(bias_arr.dtype()))
            throw py::type_error("bias: expected dtype " + dtype_str(a) + " like a, got " + dtype_str(bias_arr));
          if (bias_arr.ndim() != 1 || bias_arr.shape(0) != N)
            throw py::value_error("bias: expected shape (" + std::to_string(N) + ",), got " + shape_str(bias_arr));
          require_c_contiguous(bias_arr, "bias");
        }
        if (act < -1 || act >= kNumActs) throw py::value_error("act: unknown activation id " + std::to_string(act));
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          GemmEpilogue<T> ep;
          ep.bias = has_bias ? cptr<T>(bias_arr) : nullptr;
          ep.act = act;
          ep.params.slope = slope;
          ep.params.alpha = alpha;
          ep.params.scale = scale;
          gemm_kernels_for<T>().gemm(M, N, K, cptr<T>(a), rsa, csa, cptr<T>(b), rsb, csb, mptr<T>(out), N, ep);
        });
      },
      py::arg("a"), py::arg("b"), py::arg("out"), py::arg("bias") = py::none(), py::arg("act") = -1,
      py::arg("slope") = 0.01, py::arg("alpha") = 1.0, py::arg("scale") = 1.0,
      "out[...] = act(a @ b + bias) for 2-D float32/float64 a (M, K), b (K, N) of any element strides "
      "(C- and F-contiguous read as they lie), out (M, N) C-contiguous and not overlapping a or b; "
      "bias (N,) or None; act an activation id or -1. Threads over the pool; GIL released.");

  m.def("gemm_tile", [](const std::string& dtype) {
    const bool f32 = dtype == "float32";
    if (!f32 && dtype != "float64") throw py::value_error("dtype: expected float32 or float64, got " + dtype);
    return f32 ? py::make_tuple(gemm_kernels().f32.mr, gemm_kernels().f32.nr)
               : py::make_tuple(gemm_kernels().f64.mr, gemm_kernels().f64.nr);
  }, py::arg("dtype"), "(MR, NR) of the GEMM micro-tile on the current CPU path.");
}

}  // namespace fastnn
