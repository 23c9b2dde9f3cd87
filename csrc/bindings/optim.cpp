// pybind11 glue for the optimizer updates: checks, GIL release, threading over the pool. The
// update of each element depends on that element alone, so any chunking gives the same bits.
#include <cmath>

#include "bindings/common.h"
#include "bindings/optim_args.h"
#include "cpu/kernels.h"
#include "core/parallel.h"

namespace fastnn {

namespace {

constexpr int64_t kAlign = 64;

void check_state(const py::array& w, const py::array& a, const char* name) {
  require_same(w, "param", a, name);
  require_c_contiguous(a, name);
}

DType check_param(const py::array& w, const py::array& g) {
  DType dt = float_dtype(w, "param");
  require_c_contiguous(w, "param");
  require_writeable(w, "param");
  check_state(w, g, "grad");
  return dt;
}

}  // namespace

void register_optim(py::module_& m) {
  m.def(
      "sgd_step",
      [](py::array w, py::array g, py::object buf_obj, double lr, double momentum, double dampening, double l2,
         double l1, bool nesterov, bool first) {
        DType dt = check_param(w, g);
        py::array buf;
        if (momentum != 0.0) {
          if (buf_obj.is_none()) throw py::value_error("momentum_buffer: required when momentum != 0");
          buf = py::reinterpret_borrow<py::array>(buf_obj);
          check_state(w, buf, "momentum_buffer");
          require_writeable(buf, "momentum_buffer");
        }
        const SgdArgs a = sgd_args(lr, momentum, dampening, l2, l1, nesterov, first);
        const int64_t n = w.size();
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          T* wp = mptr<T>(w);
          const T* gp = cptr<T>(g);
          T* bp = momentum != 0.0 ? mptr<T>(buf) : nullptr;
          const auto fn = optim_kernels_for<T>().sgd;
          py::gil_scoped_release nogil;
          parallel_for(n, kGrainElements, kAlign,
                       [&](int64_t b, int64_t e) { fn(wp + b, gp + b, bp ? bp + b : nullptr, e - b, a); });
        });
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("l2"), py::arg("l1"), py::arg("nesterov"), py::arg("first"),
      "One fused SGD update in place (torch.optim.SGD semantics; see csrc/cpu/optim.h).");

  m.def(
      "adam_step",
      [](py::array w, py::array g, py::array mm, py::array vv, double lr, double beta1, double beta2, double eps,
         double l2, double l1, double decoupled, int64_t step) {
        DType dt = check_param(w, g);
        check_state(w, mm, "exp_avg");
        check_state(w, vv, "exp_avg_sq");
        require_writeable(mm, "exp_avg");
        require_writeable(vv, "exp_avg_sq");
        const AdamArgs a = adam_args(lr, beta1, beta2, eps, l2, l1, decoupled, step);
        const int64_t n = w.size();
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          T* wp = mptr<T>(w);
          const T* gp = cptr<T>(g);
          T* mp = mptr<T>(mm);
          T* vp = mptr<T>(vv);
          const auto fn = optim_kernels_for<T>().adam;
          py::gil_scoped_release nogil;
          parallel_for(n, kGrainElements, kAlign,
                       [&](int64_t b, int64_t e) { fn(wp + b, gp + b, mp + b, vp + b, e - b, a); });
        });
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("l2"), py::arg("l1"), py::arg("decoupled"), py::arg("step"),
      "One fused Adam/AdamW update in place (torch.optim.Adam/AdamW semantics; see csrc/cpu/optim.h).");
}

}  // namespace fastnn
