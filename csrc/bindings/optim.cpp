// pybind11 glue for the optimizer updates: checks, GIL release, threading over the pool. The
// update of each element depends on that element alone, so any chunking gives the same bits.
#include <algorithm>
#include <cmath>
#include <vector>

#include "bindings/common.h"
#include "bindings/optim_args.h"
#include "cpu/kernels.h"
#include "core/parallel.h"

namespace fastnn {

namespace {

constexpr int64_t kAlign = 64;

// Runs fn(begin, end, sumsq_slot or null) over [0, n) on the pool; returns the sum of squares of
// the updated weights when want, else None.
template <class F>
py::object run_update(int64_t n, bool want, F fn) {
  if (!want) {
    {
      py::gil_scoped_release nogil;
      parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(b, e, nullptr); });
    }
    return py::none();
  }
  const int64_t blocks = (n + kSumsqBlock - 1) / kSumsqBlock;
  std::vector<double> part(static_cast<size_t>(blocks), 0.0);
  {
    py::gil_scoped_release nogil;
    parallel_for(blocks, kGrainElements / kSumsqBlock, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t k = b0; k < b1; ++k)
        fn(k * kSumsqBlock, std::min(n, (k + 1) * kSumsqBlock), &part[static_cast<size_t>(k)]);
    });
  }
  double total = 0.0;
  for (double v : part) total += v;
  return py::float_(total);
}

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
         double l1, bool nesterov, bool first, bool sumsq) -> py::object {
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
        py::object out;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          T* wp = mptr<T>(w);
          const T* gp = cptr<T>(g);
          T* bp = momentum != 0.0 ? mptr<T>(buf) : nullptr;
          const auto fn = optim_kernels_for<T>().sgd;
          out = run_update(n, sumsq, [&](int64_t b, int64_t e, double* ss) {
            fn(wp + b, gp + b, bp ? bp + b : nullptr, e - b, a, ss);
          });
        });
        return out;
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("l2"), py::arg("l1"), py::arg("nesterov"), py::arg("first"),
      py::arg("sumsq") = false,
      "One fused SGD update in place (torch.optim.SGD semantics; see csrc/cpu/optim.h). With sumsq=True, returns "
      "the float64 sum of the squared updated weights (else None).");

  m.def(
      "adam_step",
      [](py::array w, py::array g, py::array mm, py::array vv, double lr, double beta1, double beta2, double eps,
         double l2, double l1, double decoupled, int64_t step, bool sumsq) -> py::object {
        DType dt = check_param(w, g);
        check_state(w, mm, "exp_avg");
        check_state(w, vv, "exp_avg_sq");
        require_writeable(mm, "exp_avg");
        require_writeable(vv, "exp_avg_sq");
        const AdamArgs a = adam_args(lr, beta1, beta2, eps, l2, l1, decoupled, step);
        const int64_t n = w.size();
        py::object out;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          T* wp = mptr<T>(w);
          const T* gp = cptr<T>(g);
          T* mp = mptr<T>(mm);
          T* vp = mptr<T>(vv);
          const auto fn = optim_kernels_for<T>().adam;
          out = run_update(n, sumsq, [&](int64_t b, int64_t e, double* ss) {
            fn(wp + b, gp + b, mp + b, vp + b, e - b, a, ss);
          });
        });
        return out;
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("l2"), py::arg("l1"), py::arg("decoupled"), py::arg("step"),
      py::arg("sumsq") = false,
      "One fused Adam/AdamW update in place (torch.optim.Adam/AdamW semantics; see csrc/cpu/optim.h). With "
      "sumsq=True, returns the float64 sum of the squared updated weights (else None).");
}

}  // namespace fastnn
