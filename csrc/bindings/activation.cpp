// pybind11 glue for the activation family: checks, GIL release, threading over the CPU kernels.
#include <algorithm>
#include <vector>

#include "bindings/common.h"
#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "core/parallel.h"

namespace fastnn {

namespace {

constexpr int64_t kAlign = 64;  // chunk starts: a cache line for both float and double

// Streaming stores pay off once the arrays a call touches no longer fit in the last-level cache.
bool use_stream(int64_t n, size_t elem_bytes, int arrays) {
  return static_cast<long long>(n) * static_cast<long long>(elem_bytes) * arrays > llc_bytes();
}

template <class T>
void run_forward(int op, const T* x, T* y, int64_t n, ActParams p) {
  p.stream = use_stream(n, sizeof(T), 2);
  auto fn = activation_kernels_for<T>().forward[op];
  parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(x + b, y + b, e - b, p); });
}

template <class T>
void run_backward(int op, const T* g, const T* x, T* gx, int64_t n, ActParams p) {
  p.stream = use_stream(n, sizeof(T), 3);
  auto fn = activation_kernels_for<T>().backward[op];
  parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(g + b, x + b, gx + b, e - b, p); });
}

ActParams make_params(double slope, double alpha, double scale) {
  ActParams p;
  p.slope = slope;
  p.alpha = alpha;
  p.scale = scale;
  return p;
}

void check_op(int op) {
  if (op < 0 || op >= kNumActs) throw py::value_error("op: unknown activation id " + std::to_string(op));
}

// x viewed as (outer, C, inner), all C-contiguous; weight (C).
struct PreluShape {
  int64_t outer, C, inner;
};

PreluShape check_prelu(const py::array& x, const py::array& w, int64_t outer, int64_t C, int64_t inner) {
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

template <class T>
void prelu_forward_impl(const T* x, const std::vector<T>& w, T* y, PreluShape s) {
  if (s.outer == 0 || s.C == 0 || s.inner == 0) return;
  const auto& k = activation_kernels_for<T>();
  const bool stream = use_stream(s.outer * s.C * s.inner, sizeof(T), 2);
  if (s.inner == 1) {  // (rows, C): the weight runs along the contiguous axis
    std::vector<T> wext(static_cast<size_t>(s.C + kPreluWeightPad));
    for (size_t j = 0; j < wext.size(); ++j) wext[j] = w[j % static_cast<size_t>(s.C)];
    parallel_for(s.outer * s.C, kGrainElements, kAlign, [&](int64_t b, int64_t e) {
      k.prelu_last_forward(x + b, wext.data(), y + b, e - b, s.C, b % s.C, stream);
    });
    return;
  }
  // (outer*C rows of `inner` elements): each row is a leaky ReLU with slope w[c].
  const int64_t rows = s.outer * s.C;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / s.inner);
  parallel_for(rows, grain, 1, [&](int64_t b, int64_t e) {
    ActParams p;
    p.stream = stream;
    for (int64_t r = b; r < e; ++r) {
      p.slope = static_cast<double>(w[r % s.C]);
      k.forward[kLeakyRelu](x + r * s.inner, y + r * s.inner, s.inner, p);
    }
  });
}

// The weight gradient is reduced over fixed blocks whose bounds depend only on the shape, then
// summed in block order: bit-identical for any thread count.
template <class T>
void prelu_backward_impl(const T* g, const T* x, const std::vector<T>& w, T* gx, T* gw, bool shared_w,
                         PreluShape s) {
  if (s.outer == 0 || s.C == 0 || s.inner == 0) {
    for (int64_t c = 0; c < (shared_w ? 1 : s.C); ++c) gw[c] = T(0);
    return;
  }
  const auto& k = activation_kernels_for<T>();
  const bool stream = use_stream(s.outer * s.C * s.inner, sizeof(T), 3);
  std::vector<double> acc(static_cast<size_t>(s.C), 0.0);
  if (s.inner == 1) {
    // At most 64 blocks (bounded scratch), each at least a grain's worth of rows.
    int64_t rows_per_block = std::max<int64_t>(1, kGrainElements / s.C);
    int64_t nblocks = std::min<int64_t>((s.outer + rows_per_block - 1) / rows_per_block, 64);
    if (nblocks > 0) {
      rows_per_block = (s.outer + nblocks - 1) / nblocks;
      nblocks = (s.outer + rows_per_block - 1) / rows_per_block;
    }
    std::vector<double> partial(static_cast<size_t>(nblocks * s.C), 0.0);
    parallel_for(nblocks, 1, 1, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t r0 = blk * rows_per_block, r1 = std::min(s.outer, r0 + rows_per_block);
        k.prelu_last_backward(g + r0 * s.C, x + r0 * s.C, w.data(), gx + r0 * s.C, partial.data() + blk * s.C,
                              r1 - r0, s.C, stream);
      }
    });
    for (int64_t blk = 0; blk < nblocks; ++blk)
      for (int64_t c = 0; c < s.C; ++c) acc[c] += partial[blk * s.C + c];
  } else {
    const int64_t rows = s.outer * s.C;
    std::vector<double> row_sums(static_cast<size_t>(rows), 0.0);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.inner);
    parallel_for(rows, grain, 1, [&](int64_t b, int64_t e) {
      ActParams p;
      p.stream = stream;
      for (int64_t r = b; r < e; ++r) {
        p.slope = static_cast<double>(w[r % s.C]);
        const int64_t o = r * s.inner;
        k.backward[kLeakyRelu](g + o, x + o, gx + o, s.inner, p);
        row_sums[r] = k.prelu_row_wsum(g + o, x + o, s.inner);
      }
    });
    for (int64_t r = 0; r < rows; ++r) acc[r % s.C] += row_sums[r];
  }
  if (shared_w) {
    double total = 0.0;
    for (double v : acc) total += v;
    gw[0] = static_cast<T>(total);
  } else {
    for (int64_t c = 0; c < s.C; ++c) gw[c] = static_cast<T>(acc[c]);
  }
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
          ActParams p;
          p.stream = use_stream(n, sizeof(T), 2);
          const auto fn = activation_kernels_for<T>().copy;
          const T* s = cptr<T>(src);
          T* d = mptr<T>(dst);
          parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(s + b, d + b, e - b, p); });
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
          run_forward<T>(op, cptr<T>(x), mptr<T>(out), n, p);
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
          run_backward<T>(op, cptr<T>(g), cptr<T>(x), mptr<T>(out), n, p);
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
        PreluShape s = check_prelu(x, w, outer, C, inner);
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          auto wv = weight_vector<T>(w, C);
          py::gil_scoped_release nogil;
          prelu_forward_impl<T>(cptr<T>(x), wv, mptr<T>(out), s);
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
        PreluShape s = check_prelu(x, w, outer, C, inner);
        const bool shared = w.size() == 1;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          auto wv = weight_vector<T>(w, C);
          py::gil_scoped_release nogil;
          prelu_backward_impl<T>(cptr<T>(g), cptr<T>(x), wv, mptr<T>(gx), mptr<T>(gw), shared, s);
        });
      },
      py::arg("grad_output"), py::arg("x"), py::arg("weight"), py::arg("grad_input"), py::arg("grad_weight"),
      py::arg("outer"), py::arg("C"), py::arg("inner"));
}

}  // namespace fastnn
