// pybind11 glue for the activation family: checks and GIL release (csrc/cpu/activation_ops.cpp
// threads the kernels).
#include <vector>

#include "bindings/common.h"
#include "cpu/activation_ops.h"

namespace fastnn {

namespace {

ActParams make_params(double slope, double alpha, double scale) {
  ActParams p;
  p.slope = slope;
  p.alpha = alpha;
  p.scale = scale;
  return p;
}

void check_op(int op) {
  if (op < 0 || op >= kActCount || op == kActPrelu)
    throw py::value_error("op: unknown activation id " + std::to_string(op) + " (PReLU: use prelu_forward)");
}

cpu::PreluShape check_prelu(const py::array& x, const py::array& w, int64_t outer, int64_t C, int64_t inner) {
  if (outer < 0 || C < 0 || inner < 0 || outer * C * inner != static_cast<int64_t>(x.size()))
    throw py::value_error("prelu: shape (outer, C, inner) does not match x");
  if (w.size() != C && w.size() != 1)
    throw py::value_error("weight: expected 1 or " + std::to_string(C) + " elements, got " + std::to_string(w.size()));
  return {outer, C, inner};
}

// Expands a 1-element weight to C elements so that the kernels see one layout.
template <class T>
std::vector<T> weight_vector(const py::array& w, int64_t C) {
  const T* wp = cptr<T>(w);
  if (w.size() == C) return std::vector<T>(wp, wp + C);
  return std::vector<T>(static_cast<size_t>(C), wp[0]);
}

}  // namespace

void register_activation(py::module_& m) {
  m.def(
      "parallel_copy",
      [](py::array dst, py::array src) {
        DType dt = float_dtype(src, "src");
        require_same(src, "src", dst, "dst");
        require_c_contiguous(src, "src");
        require_c_contiguous(dst, "dst");
        require_writeable(dst, "dst");
        const int64_t n = src.size();
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cpu::parallel_copy<T>(cptr<T>(src), mptr<T>(dst), n);
        });
      },
      py::arg("dst"), py::arg("src"),
      "dst[...] = src (float32/float64, C-contiguous) on the pool with the activations' load/store path: "
      "the copy ceiling for the benchmarks.");

  m.def(
      "act_forward",
      [](int op, py::array x, py::array out, double slope, double alpha, double scale) {
        check_op(op);
        DType dt = float_dtype(x, "x");
        require_same(x, "x", out, "out");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        const ActParams p = make_params(slope, alpha, scale);
        const int64_t n = x.size();
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cpu::act_forward<T>(op, cptr<T>(x), mptr<T>(out), n, p);
        });
      },
      py::arg("op"), py::arg("x"), py::arg("out"), py::arg("slope"), py::arg("alpha"), py::arg("scale"),
      "out = f(x) over C-contiguous arrays of the same dtype and size (out may be x).");

  m.def(
      "act_backward",
      [](int op, py::array g, py::array x, py::array out, double slope, double alpha, double scale) {
        check_op(op);
        DType dt = float_dtype(x, "x");
        require_same(x, "x", g, "grad_output");
        require_same(x, "x", out, "out");
        require_c_contiguous(g, "grad_output");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        const ActParams p = make_params(slope, alpha, scale);
        const int64_t n = x.size();
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cpu::act_backward<T>(op, cptr<T>(g), cptr<T>(x), mptr<T>(out), n, p);
        });
      },
      py::arg("op"), py::arg("grad_output"), py::arg("x"), py::arg("out"), py::arg("slope"), py::arg("alpha"),
      py::arg("scale"), "out = grad_output * f'(x) (out may alias grad_output or x).");

  m.def(
      "prelu_forward",
      [](py::array x, py::array w, py::array out, int64_t outer, int64_t C, int64_t inner) {
        DType dt = float_dtype(x, "x");
        require_same(x, "x", out, "out");
        if (!w.dtype().equal(x.dtype())) throw py::type_error("weight: expected dtype " + dtype_str(x) + " like x, got " + dtype_str(w));
        require_c_contiguous(x, "x");
        require_c_contiguous(w, "weight");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        cpu::PreluShape s = check_prelu(x, w, outer, C, inner);
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          auto wv = weight_vector<T>(w, C);
          py::gil_scoped_release nogil;
          cpu::prelu_forward<T>(cptr<T>(x), wv, mptr<T>(out), s);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("outer"), py::arg("C"), py::arg("inner"));

  m.def(
      "prelu_backward",
      [](py::array g, py::array x, py::array w, py::array gx, py::array gw, int64_t outer, int64_t C, int64_t inner) {
        DType dt = float_dtype(x, "x");
        require_same(x, "x", g, "grad_output");
        require_same(x, "x", gx, "grad_input");
        if (!w.dtype().equal(x.dtype()) || !gw.dtype().equal(x.dtype()))
          throw py::type_error("weight: expected dtype " + dtype_str(x) + " like x");
        if (gw.size() != w.size()) throw py::value_error("grad_weight: expected as many elements as weight");
        for (auto* a : {&g, &x, &w, &gx, &gw}) require_c_contiguous(*a, "prelu_backward argument");
        require_writeable(gx, "grad_input");
        require_writeable(gw, "grad_weight");
        cpu::PreluShape s = check_prelu(x, w, outer, C, inner);
        const bool shared = w.size() == 1;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          auto wv = weight_vector<T>(w, C);
          py::gil_scoped_release nogil;
          cpu::prelu_backward<T>(cptr<T>(g), cptr<T>(x), wv, mptr<T>(gx), mptr<T>(gw), shared, s);
        });
      },
      py::arg("grad_output"), py::arg("x"), py::arg("weight"), py::arg("grad_input"), py::arg("grad_weight"),
      py::arg("outer"), py::arg("C"), py::arg("inner"));
}

}  // namespace fastnn
