// _C.cuda: the CUDA ops under the SAME names, argument names and argument order as their CPU
// counterparts (_C.cpu / today's flat CPU names), so that python/fastnn/_backend can bind both
// tables alike. Arrays are any object exposing __cuda_array_interface__ (v2/v3: fastnn's DeviceArray,
// CuPy, PyTorch), C-contiguous, on the current device; the stream ordering with the producer's
// stream is the Python side's job (it passes fastnn's current stream through set_current_stream).
// Every launch goes to the calling thread's current stream.
#include <cstdint>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "bindings/optim_args.h"
#include "cpu/activation.h"
#include "cuda/activation.h"
#include "cuda/dropout.h"
#include "cuda/loss.h"
#include "cuda/optim.h"

namespace fastnn {
namespace {

// One CUDA array argument, read from its __cuda_array_interface__.
struct DevArg {
  uintptr_t ptr = 0;
  std::string typestr;  // "<f4", "<f8", "<i4", "<i8", "|u1"
  std::vector<int64_t> shape;
  int64_t size = 1;
};

DevArg dev_arg(const py::handle& obj, const char* name, bool writeable) {
  if (obj.is_none() || !py::hasattr(obj, "__cuda_array_interface__"))
    throw py::type_error(std::string(name) + ": expected a CUDA array (with __cuda_array_interface__), got " +
                         py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
  py::dict d = obj.attr("__cuda_array_interface__");
  DevArg a;
  a.typestr = d["typestr"].cast<std::string>();
  for (auto s : d["shape"].cast<py::tuple>()) a.shape.push_back(s.cast<int64_t>());
  for (int64_t s : a.shape) a.size *= s;
  py::tuple data = d["data"].cast<py::tuple>();
  a.ptr = data[0].cast<uintptr_t>();
  if (writeable && data[1].cast<bool>()) throw py::value_error(std::string(name) + ": the array is read-only");
  if (d.contains("strides") && !d["strides"].is_none()) {
    const auto st = d["strides"].cast<std::vector<int64_t>>();
    const int64_t es = a.typestr.size() >= 3 ? std::stoll(a.typestr.substr(2)) : 1;
    int64_t want = es;
    for (size_t i = a.shape.size(); i-- > 0;) {
      if (a.shape[i] != 1 && st[i] != want)
        throw py::value_error(std::string(name) + ": expected a C-contiguous array");
      want *= a.shape[i];
    }
  }
  if (a.size > 0 && a.ptr == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
  return a;
}

DType float_of(const DevArg& a, const char* name) {
  if (a.typestr == "<f4") return DType::F32;
  if (a.typestr == "<f8") return DType::F64;
  throw py::type_error(std::string(name) + ": expected float32 or float64, got '" + a.typestr + "'");
}

void same(const DevArg& a, const char* an, const DevArg& b, const char* bn) {
  if (a.typestr != b.typestr || a.size != b.size)
    throw py::value_error(std::string(bn) + ": expected the dtype and size of " + an + " ('" + a.typestr + "', " +
                          std::to_string(a.size) + " elements), got ('" + b.typestr + "', " + std::to_string(b.size) +
                          ")");
}

void aligned(const DevArg& a, DType dt, const char* name) {
  const uintptr_t es = dt == DType::F32 ? 4 : 8;
  if (a.ptr % es != 0)
    throw py::value_error(std::string(name) + ": device pointer is not aligned to its " + std::to_string(es) +
                          "-byte elements");
}

template <class T>
T* P(const DevArg& a) {
  return reinterpret_cast<T*>(a.ptr);
}

ActParams act_params(double slope, double alpha, double scale) {
  ActParams p;
  p.slope = slope;
  p.alpha = alpha;
  p.scale = scale;
  return p;
}

void check_positions(uint64_t offset, int64_t n) {
  if (n > 0 && offset > UINT64_MAX - static_cast<uint64_t>(n - 1))
    throw py::value_error("offset: offset + number of elements must be at most 2**64");
}

}  // namespace

void register_cuda_ops(py::module_& parent) {
  py::module_ m = parent.def_submodule(
      "cuda", "CUDA ops with the names and signatures of the CPU ops (arrays: __cuda_array_interface__).");

  m.def(
      "act_forward",
      [](int op, py::object x_o, py::object out_o, double slope, double alpha, double scale) {
        if (op < 0 || op >= kActCount || op == kActPrelu) throw py::value_error("op: expected an activation id in [0, " + std::to_string(kActCount) + ") other than PReLU (" + std::to_string(kActPrelu) + "), got " + std::to_string(op));
        const DevArg x = dev_arg(x_o, "x", false), out = dev_arg(out_o, "out", true);
        const DType dt = float_of(x, "x");
        same(x, "x", out, "out");
        aligned(x, dt, "x");
        aligned(out, dt, "out");
        const ActParams p = act_params(slope, alpha, scale);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::act_forward(op, P<const T>(x), P<T>(out), x.size, p);
        });
      },
      py::arg("op"), py::arg("x"), py::arg("out"), py::arg("slope"), py::arg("alpha"), py::arg("scale"));

  m.def(
      "act_backward",
      [](int op, py::object g_o, py::object x_o, py::object out_o, double slope, double alpha, double scale) {
        if (op < 0 || op >= kActCount || op == kActPrelu) throw py::value_error("op: expected an activation id in [0, " + std::to_string(kActCount) + ") other than PReLU (" + std::to_string(kActPrelu) + "), got " + std::to_string(op));
        const DevArg g = dev_arg(g_o, "grad_output", false), x = dev_arg(x_o, "x", false),
                     out = dev_arg(out_o, "out", true);
        const DType dt = float_of(x, "x");
        same(x, "x", g, "grad_output");
        same(x, "x", out, "out");
        for (auto* a : {&g, &x, &out}) aligned(*a, dt, "act_backward argument");
        const ActParams p = act_params(slope, alpha, scale);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::act_backward(op, P<const T>(g), P<const T>(x), P<T>(out), x.size, p);
        });
      },
      py::arg("op"), py::arg("grad_output"), py::arg("x"), py::arg("out"), py::arg("slope"), py::arg("alpha"),
      py::arg("scale"));

  auto prelu_shape = [](const DevArg& x, const DevArg& w, int64_t outer, int64_t C, int64_t inner) {
    if (outer < 0 || C < 1 || inner < 0)
      throw py::value_error("prelu: expected outer >= 0, C >= 1, inner >= 0");
    if (w.size != 1 && w.size != C)
      throw py::value_error("weight: expected 1 or " + std::to_string(C) + " elements, got " + std::to_string(w.size));
    if (outer > 0 && inner > 0 && C > INT64_MAX / outer / inner) throw py::value_error("prelu: outer * C * inner overflows");
    if (outer * C * inner != x.size)
      throw py::value_error("x: expected outer * C * inner = " + std::to_string(outer * C * inner) + " elements, got " +
                            std::to_string(x.size));
  };

  m.def(
      "prelu_forward",
      [prelu_shape](py::object x_o, py::object w_o, py::object out_o, int64_t outer, int64_t C, int64_t inner) {
        const DevArg x = dev_arg(x_o, "x", false), w = dev_arg(w_o, "weight", false), out = dev_arg(out_o, "out", true);
        const DType dt = float_of(x, "x");
        same(x, "x", out, "out");
        if (w.typestr != x.typestr) throw py::type_error("weight: expected the dtype of x");
        prelu_shape(x, w, outer, C, inner);
        for (auto* a : {&x, &w, &out}) aligned(*a, dt, "prelu_forward argument");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::prelu_forward(P<const T>(x), P<const T>(w), w.size, P<T>(out), outer, C, inner);
        });
      },
      py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("outer"), py::arg("C"), py::arg("inner"));

  m.def(
      "prelu_backward",
      [prelu_shape](py::object g_o, py::object x_o, py::object w_o, py::object gx_o, py::object gw_o, int64_t outer,
                    int64_t C, int64_t inner) {
        const DevArg g = dev_arg(g_o, "grad_output", false), x = dev_arg(x_o, "x", false),
                     w = dev_arg(w_o, "weight", false), gx = dev_arg(gx_o, "grad_input", true),
                     gw = dev_arg(gw_o, "grad_weight", true);
        const DType dt = float_of(x, "x");
        same(x, "x", g, "grad_output");
        same(x, "x", gx, "grad_input");
        same(w, "weight", gw, "grad_weight");
        if (w.typestr != x.typestr) throw py::type_error("weight: expected the dtype of x");
        prelu_shape(x, w, outer, C, inner);
        for (auto* a : {&g, &x, &w, &gx, &gw}) aligned(*a, dt, "prelu_backward argument");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::prelu_backward(P<const T>(g), P<const T>(x), P<const T>(w), w.size, P<T>(gx), P<T>(gw), outer, C,
                               inner);
        });
      },
      py::arg("grad_output"), py::arg("x"), py::arg("weight"), py::arg("grad_input"), py::arg("grad_weight"),
      py::arg("outer"), py::arg("C"), py::arg("inner"));

  m.def(
      "dropout_mask",
      [](int64_t n, uint64_t seed, uint64_t offset, uint32_t threshold, py::object out_o) {
        if (n < 0) throw py::value_error("n: expected >= 0");
        check_positions(offset, n);
        const DevArg out = dev_arg(out_o, "out", true);
        if (out.typestr != "|u1") throw py::type_error("out: expected uint8, got '" + out.typestr + "'");
        if (out.size != (n + 7) / 8) throw py::value_error("out: expected ceil(n/8) bytes");
        py::gil_scoped_release nogil;
        cuda::dropout_mask(seed, offset, n, threshold, P<uint8_t>(out));
      },
      py::arg("n"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("out"));

  m.def(
      "dropout_apply",
      [](py::object x_o, py::object out_o, uint64_t seed, uint64_t offset, uint32_t threshold, double scale) {
        const DevArg x = dev_arg(x_o, "x", false), out = dev_arg(out_o, "out", true);
        const DType dt = float_of(x, "x");
        same(x, "x", out, "out");
        aligned(x, dt, "x");
        aligned(out, dt, "out");
        check_positions(offset, x.size);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::dropout_apply(P<const T>(x), P<T>(out), x.size, seed, offset, threshold, static_cast<T>(scale));
        });
      },
      py::arg("x"), py::arg("out"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("scale"));

  m.def(
      "dropout_apply_mask",
      [](py::object x_o, py::object mask_o, py::object out_o, double scale) {
        const DevArg x = dev_arg(x_o, "x", false), mask = dev_arg(mask_o, "mask", false),
                     out = dev_arg(out_o, "out", true);
        const DType dt = float_of(x, "x");
        same(x, "x", out, "out");
        if (mask.typestr != "|u1" || mask.size != (x.size + 7) / 8)
          throw py::value_error("mask: expected ceil(n/8) uint8 bytes");
        aligned(x, dt, "x");
        aligned(out, dt, "out");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::dropout_apply_mask(P<const T>(x), P<const uint8_t>(mask), P<T>(out), x.size, static_cast<T>(scale));
        });
      },
      py::arg("x"), py::arg("mask"), py::arg("out"), py::arg("scale"));

  m.def(
      "softmax_xent",
      [](py::object x_o, py::object t_o, py::object grad_o) -> double {
        const DevArg x = dev_arg(x_o, "logits", false), t = dev_arg(t_o, "target", false);
        const DType dt = float_of(x, "logits");
        if (x.shape.size() != 2) throw py::value_error("logits: expected a 2-D (M, C) array");
        const int64_t M = x.shape[0], C = x.shape[1];
        if (M == 0 || C == 0) throw py::value_error("logits: expected M >= 1 rows and C >= 1 classes");
        int kind;
        if (t.typestr == "<i4") kind = 0;
        else if (t.typestr == "<i8") kind = 1;
        else if (t.typestr == x.typestr) kind = 2;
        else throw py::type_error("target: expected int32/int64 labels or " + x.typestr + " probabilities, got '" + t.typestr + "'");
        if (kind == 2 ? (t.shape.size() != 2 || t.shape[0] != M || t.shape[1] != C)
                      : (t.shape.size() != 1 || t.shape[0] != M))
          throw py::value_error("target: expected " + std::to_string(M) + " labels or (M, C) soft targets");
        DevArg g;
        if (!grad_o.is_none()) {
          g = dev_arg(grad_o, "grad", true);
          same(x, "logits", g, "grad");
        }
        cuda::LossResult r{};
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            r = cuda::softmax_xent(P<const T>(x), kind == 0 ? P<const int32_t>(t) : nullptr,
                                   kind == 1 ? P<const int64_t>(t) : nullptr, kind == 2 ? P<const T>(t) : nullptr,
                                   grad_o.is_none() ? nullptr : P<T>(g), M, C);
          });
        }
        if (r.bad_row >= 0)
          throw py::value_error("target: label " + std::to_string(r.bad_label) + " at row " +
                                std::to_string(r.bad_row) + " is outside [0, " + std::to_string(C) + ")");
        return r.value;
      },
      py::arg("logits"), py::arg("target"), py::arg("grad") = py::none());

  m.def(
      "squared_error",
      [](py::object p_o, py::object t_o, py::object grad_o, double scale) {
        const DevArg p = dev_arg(p_o, "input", false), t = dev_arg(t_o, "target", false);
        const DType dt = float_of(p, "input");
        same(p, "input", t, "target");
        DevArg g;
        if (!grad_o.is_none()) {
          g = dev_arg(grad_o, "grad", true);
          same(p, "input", g, "grad");
        }
        double total = 0.0;
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            total = cuda::squared_error(P<const T>(p), P<const T>(t), grad_o.is_none() ? nullptr : P<T>(g), p.size,
                                        scale)
                        .value;
          });
        }
        return total;
      },
      py::arg("input"), py::arg("target"), py::arg("grad") = py::none(), py::arg("scale") = 1.0);

  m.def(
      "sgd_step",
      [](py::object w_o, py::object g_o, py::object buf_o, double lr, double momentum, double dampening, double l2,
         double l1, bool nesterov, bool first, bool sumsq) -> py::object {
        const DevArg w = dev_arg(w_o, "param", true), g = dev_arg(g_o, "grad", false);
        const DType dt = float_of(w, "param");
        same(w, "param", g, "grad");
        DevArg buf;
        if (momentum != 0.0) {
          if (buf_o.is_none()) throw py::value_error("momentum_buffer: required when momentum != 0");
          buf = dev_arg(buf_o, "momentum_buffer", true);
          same(w, "param", buf, "momentum_buffer");
        }
        const SgdArgs a = sgd_args(lr, momentum, dampening, l2, l1, nesterov, first);
        double total = 0.0;
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            cuda::sgd_step(P<T>(w), P<const T>(g), momentum != 0.0 ? P<T>(buf) : nullptr, w.size, a);
            if (sumsq) total = cuda::squared_error(P<const T>(w), nullptr, nullptr, w.size, 1.0).value;
          });
        }
        return sumsq ? py::object(py::float_(total)) : py::object(py::none());
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("l2"), py::arg("l1"), py::arg("nesterov"), py::arg("first"),
      py::arg("sumsq") = false);

  m.def(
      "adam_step",
      [](py::object w_o, py::object g_o, py::object m_o, py::object v_o, double lr, double beta1, double beta2,
         double eps, double l2, double l1, double decoupled, int64_t step, bool sumsq) -> py::object {
        const DevArg w = dev_arg(w_o, "param", true), g = dev_arg(g_o, "grad", false),
                     mm = dev_arg(m_o, "exp_avg", true), vv = dev_arg(v_o, "exp_avg_sq", true);
        const DType dt = float_of(w, "param");
        same(w, "param", g, "grad");
        same(w, "param", mm, "exp_avg");
        same(w, "param", vv, "exp_avg_sq");
        const AdamArgs a = adam_args(lr, beta1, beta2, eps, l2, l1, decoupled, step);
        double total = 0.0;
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            cuda::adam_step(P<T>(w), P<const T>(g), P<T>(mm), P<T>(vv), w.size, a);
            if (sumsq) total = cuda::squared_error(P<const T>(w), nullptr, nullptr, w.size, 1.0).value;
          });
        }
        return sumsq ? py::object(py::float_(total)) : py::object(py::none());
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("l2"), py::arg("l1"), py::arg("decoupled"), py::arg("step"),
      py::arg("sumsq") = false);
}

}  // namespace fastnn
