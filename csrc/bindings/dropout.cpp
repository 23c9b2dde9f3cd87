// pybind11 glue for dropout / DropConnect: checks, GIL release, threading. Chunks start on
// 64-element boundaries, so every chunk's mask bytes and stream positions line up.
#include <cstdint>

#include "bindings/common.h"
#include "core/cpu_features.h"
#include "cpu/kernels.h"
#include "core/parallel.h"

namespace fastnn {

namespace {

constexpr int64_t kAlign = 64;

bool use_stream(int64_t n, size_t elem_bytes) {
  return static_cast<long long>(n) * static_cast<long long>(elem_bytes) * 2 > llc_bytes();
}

// Positions offset .. offset + n - 1 must all exist (the last one is 2^64 - 1).
void check_positions(uint64_t offset, int64_t n) {
  if (n > 0 && offset > UINT64_MAX - static_cast<uint64_t>(n - 1))
    throw py::value_error("offset: offset + number of elements must be at most 2**64");
}

}  // namespace

void register_dropout(py::module_& m) {
  m.def(
      "dropout_mask",
      [](int64_t n, uint64_t seed, uint64_t offset, uint32_t threshold, py::array out) {
        if (n < 0) throw py::value_error("n: expected >= 0");
        check_positions(offset, n);
        if (!out.dtype().equal(py::dtype::of<uint8_t>())) throw py::type_error("out: expected uint8");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        if (out.size() != (n + 7) / 8) throw py::value_error("out: expected ceil(n/8) bytes");
        uint8_t* o = static_cast<uint8_t*>(out.mutable_data());
        const auto& k = dropout_kernels();
        py::gil_scoped_release nogil;
        parallel_for(n, kGrainElements * 4, kAlign, [&](int64_t b, int64_t e) {
          k.mask_bits(seed, offset + static_cast<uint64_t>(b), e - b, threshold, o + b / 8);
        });
      },
      py::arg("n"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("out"),
      "Packed keep bits of stream positions offset .. offset + n - 1 (1 = kept).");

  m.def(
      "dropout_apply",
      [](py::array x, py::array out, uint64_t seed, uint64_t offset, uint32_t threshold, double scale) {
        DType dt = float_dtype(x, "x");
        require_same(x, "x", out, "out");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        const int64_t n = x.size();
        check_positions(offset, n);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const auto apply = dropout_kernels_for<T>().apply;
          const T* xp = cptr<T>(x);
          T* yp = mptr<T>(out);
          const T s = static_cast<T>(scale);
          const bool st = use_stream(n, sizeof(T));
          parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) {
            apply(xp + b, yp + b, e - b, seed, offset + static_cast<uint64_t>(b), threshold, s, st);
          });
        });
      },
      py::arg("x"), py::arg("out"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("scale"),
      "out = x * (keep ? scale : 0) with keep from the Philox stream (out may be x).");

  m.def(
      "dropout_apply_mask",
      [](py::array x, py::array mask, py::array out, double scale) {
        DType dt = float_dtype(x, "x");
        require_same(x, "x", out, "out");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        if (!mask.dtype().equal(py::dtype::of<uint8_t>())) throw py::type_error("mask: expected uint8");
        require_c_contiguous(mask, "mask");
        const int64_t n = x.size();
        if (mask.size() != (n + 7) / 8) throw py::value_error("mask: expected ceil(n/8) bytes");
        const uint8_t* mp = static_cast<const uint8_t*>(mask.data());
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const auto apply_mask = dropout_kernels_for<T>().apply_mask;
          const T* xp = cptr<T>(x);
          T* yp = mptr<T>(out);
          const T s = static_cast<T>(scale);
          const bool st = use_stream(n, sizeof(T));
          parallel_for(n, kGrainElements, kAlign,
                       [&](int64_t b, int64_t e) { apply_mask(xp + b, mp + b / 8, yp + b, e - b, s, st); });
        });
      },
      py::arg("x"), py::arg("mask"), py::arg("out"), py::arg("scale"),
      "out = x * (mask bit ? scale : 0) with a packed mask (out may be x).");
}

}  // namespace fastnn
