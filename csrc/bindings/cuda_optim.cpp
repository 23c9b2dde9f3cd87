// pybind11 glue for the GPU optimizer updates and losses (csrc/cuda/optim.h, csrc/cuda/loss.h).
// Device pointers travel as Python ints; python/fastnn/cuda.py reads the arrays and checks
// shapes, dtypes and devices. The checks here keep _C safe to call directly: a bad count, a null
// or misaligned pointer is an exception, never a launch.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>

#include "bindings/common.h"
#include "bindings/optim_args.h"
#include "cuda/device.h"
#include "cuda/loss.h"
#include "cuda/optim.h"
#include "cuda/optim_ops.cuh"

namespace fastnn {

namespace {

DType parse_float(const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "float64") return DType::F64;
  throw py::type_error("dtype: expected 'float32' or 'float64', got '" + s + "'");
}

void check_count(int64_t n, const char* name) {
  if (n < 0) throw py::value_error(std::string(name) + ": expected a count >= 0, got " + std::to_string(n));
}

// A null pointer for a non-empty array, or one not aligned to its `size`-byte elements (a sticky
// CUDA error would end every later CUDA call of the process): refused up front.
void check_ptr(uint64_t p, int64_t n, uint64_t size, const char* name) {
  if (n > 0 && p == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
  if (p % size != 0)
    throw py::value_error(std::string(name) + ": device pointer is not aligned to its " + std::to_string(size) +
                          "-byte elements");
}

uint64_t elem_size(DType dt) { return dt == DType::F32 ? 4 : 8; }

// Table mode (SPEC12): a device float64 table and a device uint64 row counter, both or neither.
cuda::StepTable step_table(uint64_t table, uint64_t counter) {
  if ((table == 0) != (counter == 0))
    throw py::value_error(table == 0 ? "table_ptr: expected the device float64 table that counter_ptr indexes, got 0"
                                     : "counter_ptr: expected the device uint64 row counter of table_ptr, got 0");
  check_ptr(table, 0, 8, "table_ptr");
  check_ptr(counter, 0, 8, "counter_ptr");
  cuda::StepTable t;
  t.rows = reinterpret_cast<const double*>(static_cast<uintptr_t>(table));
  t.counter = reinterpret_cast<const uint64_t*>(static_cast<uintptr_t>(counter));
  return t;
}

// A device LossResult (24 bytes, 8-byte aligned) or 0 (return the loss to the host).
void check_result_ptr(uint64_t p) {
  if (p % 8 != 0) throw py::value_error("result_ptr: device pointer is not aligned to 8 bytes");
}

template <class T>
T* as_ptr(uint64_t p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

// The GPU kernels' per-element math (csrc/cuda/optim_ops.cuh) run on the host over NumPy arrays:
// lets tests compare it with csrc/cpu/optim.cpp on machines without a GPU. (This file is built
// with -ffp-contract=off, so each operation rounds as on the device.)
template <class T, class Op>
void host_apply(const Op& op, T* w, const T* g, T* s1, T* s2, int64_t n) {
  T d1 = T(0), d2 = T(0);
  for (int64_t i = 0; i < n; ++i) op(w[i], g[i], s1 ? s1[i] : d1, s2 ? s2[i] : d2);
}

}  // namespace

void register_cuda_optim(py::module_& m) {
  m.def(
      "cuda_memset_zero",
      [](uint64_t ptr, int64_t bytes) {
        check_count(bytes, "bytes");
        check_ptr(ptr, bytes, 1, "ptr");
        cuda::memset_zero(as_ptr<void>(ptr), static_cast<size_t>(bytes));
      },
      py::arg("ptr"), py::arg("bytes"), "Zeroes `bytes` bytes of device memory (asynchronous on stream 0).");

  m.def(
      "cuda_sgd_step",
      [](const std::string& dtype, uint64_t w, uint64_t g, uint64_t buf, int64_t n, double lr, double momentum,
         double dampening, double l2, double l1, bool nesterov, bool first, uint64_t table, uint64_t counter) {
        const DType dt = parse_float(dtype);
        check_count(n, "n");
        const uint64_t es = elem_size(dt);
        check_ptr(w, n, es, "param");
        check_ptr(g, n, es, "grad");
        if (momentum != 0.0) check_ptr(buf, n, es, "momentum_buffer");
        const cuda::StepTable t = step_table(table, counter);
        const SgdArgs a = sgd_args(lr, momentum, dampening, l2, l1, nesterov, first);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::sgd_step(as_ptr<T>(w), as_ptr<const T>(g), momentum != 0.0 ? as_ptr<T>(buf) : nullptr, n, a, t);
        });
      },
      py::arg("dtype"), py::arg("param_ptr"), py::arg("grad_ptr"), py::arg("buf_ptr"), py::arg("n"), py::arg("lr"),
      py::arg("momentum"), py::arg("dampening"), py::arg("l2"), py::arg("l1"), py::arg("nesterov"), py::arg("first"),
      py::kw_only(), py::arg("table_ptr") = 0, py::arg("counter_ptr") = 0,
      "One fused SGD update in place on the GPU (csrc/cuda/optim.h; the CPU's sgd_step semantics). With table_ptr "
      "(a device float64 (steps, 2) table of (lr, first) rows) and counter_ptr (a device uint64), lr and first come "
      "from row *counter when the kernel runs and the lr / first arguments are ignored; the counter is not advanced.");

  m.def(
      "cuda_adam_step",
      [](const std::string& dtype, uint64_t w, uint64_t g, uint64_t mm, uint64_t vv, int64_t n, double lr,
         double beta1, double beta2, double eps, double l2, double l1, double decoupled, int64_t step, uint64_t table,
         uint64_t counter) {
        const DType dt = parse_float(dtype);
        check_count(n, "n");
        const uint64_t es = elem_size(dt);
        check_ptr(w, n, es, "param");
        check_ptr(g, n, es, "grad");
        check_ptr(mm, n, es, "exp_avg");
        check_ptr(vv, n, es, "exp_avg_sq");
        const cuda::StepTable t = step_table(table, counter);
        // In table mode the step's scalars come from the table: `step` is ignored (not checked).
        const AdamArgs a = adam_args(lr, beta1, beta2, eps, l2, l1, decoupled, t.rows ? 1 : step);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::adam_step(as_ptr<T>(w), as_ptr<const T>(g), as_ptr<T>(mm), as_ptr<T>(vv), n, a, t);
        });
      },
      py::arg("dtype"), py::arg("param_ptr"), py::arg("grad_ptr"), py::arg("exp_avg_ptr"), py::arg("exp_avg_sq_ptr"),
      py::arg("n"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("l2"), py::arg("l1"),
      py::arg("decoupled"), py::arg("step"), py::kw_only(), py::arg("table_ptr") = 0, py::arg("counter_ptr") = 0,
      "One fused Adam/AdamW update in place on the GPU (csrc/cuda/optim.h; the CPU's adam_step semantics). With "
      "table_ptr (a device float64 (steps, 3) table of (lr, step_size, bc2_sqrt) rows, optim_table's) and "
      "counter_ptr (a device uint64), those come from row *counter when the kernel runs and lr / step are ignored; "
      "the counter is not advanced.");

  m.def(
      "cuda_sgd_host_reference",
      [](py::array w, py::array g, py::object buf_obj, double lr, double momentum, double dampening, double l2,
         double l1, bool nesterov, bool first) {
        const DType dt = float_dtype(w, "param");
        require_same(w, "param", g, "grad");
        require_c_contiguous(w, "param");
        require_c_contiguous(g, "grad");
        require_writeable(w, "param");
        py::array buf;
        if (momentum != 0.0) {
          buf = py::reinterpret_borrow<py::array>(buf_obj);
          require_same(w, "param", buf, "momentum_buffer");
          require_c_contiguous(buf, "momentum_buffer");
          require_writeable(buf, "momentum_buffer");
        }
        const SgdArgs a = sgd_args(lr, momentum, dampening, l2, l1, nesterov, first);
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          host_apply<T>(cuda::optim_ops::make_sgd<T>(a), mptr<T>(w), cptr<T>(g), momentum != 0.0 ? mptr<T>(buf) : nullptr,
                        nullptr, w.size());
        });
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("l2"), py::arg("l1"), py::arg("nesterov"), py::arg("first"),
      "The GPU SGD kernel's per-element math on host arrays (tests: compare with sgd_step).");

  m.def(
      "cuda_adam_host_reference",
      [](py::array w, py::array g, py::array mm, py::array vv, double lr, double beta1, double beta2, double eps,
         double l2, double l1, double decoupled, int64_t step) {
        const DType dt = float_dtype(w, "param");
        for (auto [arr, name] : {std::pair<py::array*, const char*>{&g, "grad"}, {&mm, "exp_avg"}, {&vv, "exp_avg_sq"}}) {
          require_same(w, "param", *arr, name);
          require_c_contiguous(*arr, name);
        }
        require_c_contiguous(w, "param");
        require_writeable(w, "param");
        require_writeable(mm, "exp_avg");
        require_writeable(vv, "exp_avg_sq");
        const AdamArgs a = adam_args(lr, beta1, beta2, eps, l2, l1, decoupled, step);
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          host_apply<T>(cuda::optim_ops::make_adam<T>(a), mptr<T>(w), cptr<T>(g), mptr<T>(mm), mptr<T>(vv), w.size());
        });
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("l2"), py::arg("l1"), py::arg("decoupled"), py::arg("step"),
      "The GPU Adam kernel's per-element math on host arrays (tests: compare with adam_step).");

  m.def(
      "cuda_softmax_xent",
      [](const std::string& dtype, uint64_t x, uint64_t target, const std::string& target_kind, uint64_t grad,
         int64_t M, int64_t C, uint64_t result) -> py::object {
        const DType dt = parse_float(dtype);
        check_count(M, "M");
        check_count(C, "C");
        if (M == 0 || C == 0) throw py::value_error("logits: expected M >= 1 rows and C >= 1 classes");
        // One warp per row, 8 rows per block: the grid must stay within 2**31 - 1 blocks.
        if (M > int64_t{0x7fffffff} * 8) throw py::value_error("logits: more than (2**31 - 1) * 8 rows");
        const uint64_t es = elem_size(dt);
        check_ptr(x, M * C, es, "logits");
        if (grad != 0) check_ptr(grad, M * C, es, "grad");
        int kind;
        if (target_kind == "int32") kind = 0, check_ptr(target, M, 4, "target");
        else if (target_kind == "int64") kind = 1, check_ptr(target, M, 8, "target");
        else if (target_kind == "soft") kind = 2, check_ptr(target, M * C, es, "target");
        else throw py::value_error("target_kind: expected 'int32', 'int64' or 'soft', got '" + target_kind + "'");
        check_result_ptr(result);
        cuda::LossResult r{};
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            r = cuda::softmax_xent(as_ptr<const T>(x), kind == 0 ? as_ptr<const int32_t>(target) : nullptr,
                                   kind == 1 ? as_ptr<const int64_t>(target) : nullptr,
                                   kind == 2 ? as_ptr<const T>(target) : nullptr, grad ? as_ptr<T>(grad) : nullptr,
                                   M, C, as_ptr<cuda::LossResult>(result));
          });
        }
        if (result != 0) return py::none();
        return py::make_tuple(r.value, r.bad_row, r.bad_label);
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("target_ptr"), py::arg("target_kind"), py::arg("grad_ptr"),
      py::arg("M"), py::arg("C"), py::arg("result_ptr") = 0,
      "(mean softmax cross-entropy, first row with a label outside [0, C) or -1, its label); writes (softmax - "
      "target)/M to grad when grad_ptr != 0. Waits for the result; with result_ptr (24 device bytes: float64 loss, "
      "int64 bad row, int64 bad label) it writes them there instead, waits for nothing and returns None.");

  m.def(
      "cuda_squared_error",
      [](const std::string& dtype, uint64_t p, uint64_t t, uint64_t grad, int64_t n, double scale,
         uint64_t result) -> py::object {
        const DType dt = parse_float(dtype);
        check_count(n, "n");
        const uint64_t es = elem_size(dt);
        // One block per 4096 elements: the grid must stay within 2**31 - 1 blocks.
        if (n > int64_t{0x7fffffff} * 4096) throw py::value_error("n: more than (2**31 - 1) * 4096 elements");
        check_ptr(p, n, es, "input");
        if (t != 0) check_ptr(t, n, es, "target");  // (0: no target, the sum of squares of p)
        if (grad != 0) check_ptr(grad, n, es, "grad");
        check_result_ptr(result);
        double total = 0.0;
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            total = cuda::squared_error(as_ptr<const T>(p), as_ptr<const T>(t), grad ? as_ptr<T>(grad) : nullptr, n,
                                        scale, as_ptr<cuda::LossResult>(result))
                        .value;
          });
        }
        if (result != 0) return py::none();
        return py::float_(total);
      },
      py::arg("dtype"), py::arg("p_ptr"), py::arg("t_ptr"), py::arg("grad_ptr"), py::arg("n"), py::arg("scale"),
      py::arg("result_ptr") = 0,
      "sum((input - target)^2) in double on the GPU; writes scale * (input - target) to grad when grad_ptr != 0. "
      "With result_ptr (24 device bytes, the float64 sum first) the sum goes there, nothing waits, and it returns "
      "None.");
}

}  // namespace fastnn
