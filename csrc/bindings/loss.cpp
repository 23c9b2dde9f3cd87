// pybind11 glue for the losses: shape and label checks, GIL release, threading. Per-row losses
// (cross-entropy) and per-block sums (squared error) go to a buffer and are added in order, in
// double: the loss is bit-identical for any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "bindings/common.h"
#include "bindings/loss_sums.h"
#include "cpu/kernels.h"
#include "core/parallel.h"

namespace fastnn {

namespace {

template <class L>
void check_labels(const L* y, int64_t M, int64_t C) {
  for (int64_t r = 0; r < M; ++r)
    if (y[r] < 0 || static_cast<int64_t>(y[r]) >= C)
      throw py::value_error("target: expected class indices in [0, " + std::to_string(C) + "), got " +
                            std::to_string(static_cast<long long>(y[r])) + " at row " + std::to_string(r));
}

}  // namespace

void register_loss(py::module_& m) {
  m.def(
      "softmax_xent",
      [](py::array x, py::array target, py::object grad_obj) {
        DType dt = float_dtype(x, "logits");
        require_c_contiguous(x, "logits");
        if (x.ndim() != 2) throw py::value_error("logits: expected a 2-D (M, C) array, got " + std::to_string(x.ndim()) + "-D");
        const int64_t M = x.shape(0), C = x.shape(1);
        if (M == 0 || C == 0) throw py::value_error("logits: expected M >= 1 rows and C >= 1 classes");
        require_c_contiguous(target, "target");
        enum { I32, I64, SOFT } kind;
        if (target.dtype().equal(py::dtype::of<int64_t>())) kind = I64;
        else if (target.dtype().equal(py::dtype::of<int32_t>())) kind = I32;
        else if (target.dtype().equal(x.dtype())) kind = SOFT;
        else
          throw py::type_error("target: expected int32/int64 labels or " + dtype_str(x) + " probabilities, got " +
                               dtype_str(target));
        if (kind == SOFT) {
          if (target.ndim() != 2 || target.shape(0) != M || target.shape(1) != C)
            throw py::value_error("target: expected soft targets of shape (" + std::to_string(M) + ", " +
                                  std::to_string(C) + ")");
        } else {
          if (target.ndim() != 1 || target.shape(0) != M)
            throw py::value_error("target: expected " + std::to_string(M) + " labels (1-D), got size " +
                                  std::to_string(target.size()));
          if (kind == I64) check_labels(static_cast<const int64_t*>(target.data()), M, C);
          else check_labels(static_cast<const int32_t*>(target.data()), M, C);
        }
        py::array grad;
        if (!grad_obj.is_none()) {
          grad = py::reinterpret_borrow<py::array>(grad_obj);
          require_same(x, "logits", grad, "grad");
          require_c_contiguous(grad, "grad");
          require_writeable(grad, "grad");
        }
        const void* tp = target.data();
        double loss = 0.0;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const T* xp = cptr<T>(x);
          T* gp = grad_obj.is_none() ? nullptr : mptr<T>(grad);
          py::gil_scoped_release nogil;
          loss = softmax_xent_mean<T>(kind == I64 ? 0 : kind == I32 ? 1 : 2, xp, tp, gp, M, C);
        });
        return loss;
      },
      py::arg("logits"), py::arg("target"), py::arg("grad") = py::none(),
      "Mean softmax cross-entropy of (M, C) logits; writes (softmax - target)/M to grad when given.");

  m.def(
      "squared_error",
      [](py::array p, py::array t, py::object grad_obj, double scale) {
        DType dt = float_dtype(p, "input");
        require_same(p, "input", t, "target");
        require_c_contiguous(p, "input");
        require_c_contiguous(t, "target");
        py::array grad;
        if (!grad_obj.is_none()) {
          grad = py::reinterpret_borrow<py::array>(grad_obj);
          require_same(p, "input", grad, "grad");
          require_c_contiguous(grad, "grad");
          require_writeable(grad, "grad");
        }
        const int64_t n = p.size();
        double total = 0.0;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const T* pp = cptr<T>(p);
          const T* tp = cptr<T>(t);
          T* gp = grad_obj.is_none() ? nullptr : mptr<T>(grad);
          py::gil_scoped_release nogil;
          total = squared_error_sum<T>(pp, tp, gp, n, scale);
        });
        return total;
      },
      py::arg("input"), py::arg("target"), py::arg("grad") = py::none(), py::arg("scale") = 1.0,
      "sum((input - target)^2) in double; writes scale * (input - target) to grad when given.");

  m.def(
      "mlp_head",
      [](py::array z, py::array y, py::object sw_obj, int kind, double sw_sum, py::array delta) {
        DType dt = float_dtype(z, "z");
        require_c_contiguous(z, "z");
        if (z.ndim() != 2) throw py::value_error("z: expected a 2-D (M, C) array, got " + std::to_string(z.ndim()) + "-D");
        const int64_t M = z.shape(0), C = z.shape(1);
        if (kind < 0 || kind > 2) throw py::value_error("kind: expected 0 (identity), 1 (logistic) or 2 (softmax)");
        if (!y.dtype().equal(py::dtype::of<double>()))
          throw py::type_error("y: expected float64 encoded targets, got " + dtype_str(y));
        if (y.ndim() != 2 || y.shape(0) != M || y.shape(1) != C)
          throw py::value_error("y: expected shape (" + std::to_string(M) + ", " + std::to_string(C) + ") like z");
        require_c_contiguous(y, "y");
        require_same(z, "z", delta, "delta");
        require_c_contiguous(delta, "delta");
        require_writeable(delta, "delta");
        const double* sw = nullptr;
        py::array swa;
        if (!sw_obj.is_none()) {
          swa = sw_obj.cast<py::array>();
          if (!swa.dtype().equal(py::dtype::of<double>()) || swa.ndim() != 1 || swa.shape(0) != M)
            throw py::value_error("sw: expected float64 sample weights of shape (" + std::to_string(M) + ",)");
          require_c_contiguous(swa, "sw");
          sw = static_cast<const double*>(swa.data());
        }
        if (M == 0 || !(sw_sum > 0.0)) throw py::value_error("sw_sum: expected a positive weight sum and M >= 1");
        const double* yp = static_cast<const double*>(y.data());
        double loss = 0.0;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const T* zp = cptr<T>(z);
          T* dp = mptr<T>(delta);
          py::gil_scoped_release nogil;
          loss = mlp_head_loss(zp, yp, sw, kind, sw_sum, dp, M, C);
        });
        return loss;
      },
      py::arg("z"), py::arg("y"), py::arg("sw"), py::arg("kind"), py::arg("sw_sum"), py::arg("delta"),
      "scikit-learn's MLP output layer on one batch, in float64 (fastnn.estimators): p = the output "
      "activation of z (kind 0 identity, 1 logistic, 2 softmax); returns the batch's data loss (half the "
      "squared error averaged over outputs, the binary log loss summed over outputs, or the log loss, "
      "probabilities clipped to [eps, 1 - eps]; the rows' mean, weighted by sw when given) and writes "
      "delta = (p - y) * sw / sw_sum in z's dtype.");
}

}  // namespace fastnn
