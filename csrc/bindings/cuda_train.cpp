// pybind11 glue for the device ops of a graph-captured training step (csrc/cuda/train.h; SPEC12
// ops 1-3): _C.cuda_gather_rows, _C.cuda_counter_add, _C.cuda_step_metrics. Device pointers travel
// as Python ints. Every argument is checked here, before any CUDA call, so that _C stays safe to
// call directly: a bad count, a null or misaligned pointer, an unknown dtype or target kind is a
// ValueError / TypeError naming the argument, never a launch.
#include <cstdint>
#include <limits>
#include <string>

#include "bindings/common.h"
#include "cuda/train.h"

namespace fastnn {

namespace {

void check_count(int64_t n, const char* name) {
  if (n < 0) throw py::value_error(std::string(name) + ": expected a count >= 0, got " + std::to_string(n));
}

// rows * cols elements must be addressable (the kernels index with int64).
int64_t checked_product(int64_t rows, int64_t cols, const char* what) {
  if (cols > 0 && rows > std::numeric_limits<int64_t>::max() / cols)
    throw py::value_error(std::string(what) + ": " + std::to_string(rows) + " x " + std::to_string(cols) +
                          " elements overflow int64");
  return rows * cols;
}

// A null pointer for a non-empty array, or one not aligned to its `size`-byte elements (a sticky
// CUDA error would end every later CUDA call of the process): refused up front.
void check_ptr(uint64_t p, int64_t n, uint64_t size, const char* name) {
  if (n > 0 && p == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
  if (p % size != 0)
    throw py::value_error(std::string(name) + ": device pointer is not aligned to its " + std::to_string(size) +
                          "-byte elements");
}

template <class T>
T* as_ptr(uint64_t p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

}  // namespace

void register_cuda_train(py::module_& m) {
  m.def(
      "cuda_gather_rows",
      [](const std::string& dtype, uint64_t src, int64_t n_src, int64_t row_elems, uint64_t idx, uint64_t pos,
         int64_t n_rows, uint64_t dst) {
        int bytes;
        uint64_t fill;
        if (dtype == "float32") bytes = 4, fill = 0x7fc00000u;                  // quiet NaN
        else if (dtype == "float64") bytes = 8, fill = 0x7ff8000000000000ull;  // quiet NaN
        else if (dtype == "int32") bytes = 4, fill = 0xffffffffu;              // -1
        else throw py::type_error("dtype: expected 'float32', 'float64' or 'int32', got '" + dtype + "'");
        check_count(n_src, "n_src");
        check_count(row_elems, "row_elems");
        check_count(n_rows, "n_rows");
        const int64_t n_out = checked_product(n_rows, row_elems, "dst");
        check_ptr(src, n_out > 0 ? checked_product(n_src, row_elems, "src") : 0, bytes, "src");
        check_ptr(idx, n_out > 0 ? n_rows : 0, 8, "idx");
        check_ptr(pos, n_out > 0 ? 1 : 0, 8, "pos");
        check_ptr(dst, n_out, bytes, "dst");
        py::gil_scoped_release nogil;
        cuda::gather_rows(bytes, as_ptr<const void>(src), n_src, row_elems, as_ptr<const int64_t>(idx),
                          as_ptr<const uint64_t>(pos), n_rows, as_ptr<void>(dst), fill);
      },
      py::arg("dtype"), py::arg("src_ptr"), py::arg("n_src"), py::arg("row_elems"), py::arg("idx_ptr"),
      py::arg("pos_ptr"), py::arg("n_rows"), py::arg("dst_ptr"),
      "dst[i, :] = src[idx[pos + i], :] for i < n_rows (rows of row_elems elements, C-contiguous; dtype float32, "
      "float64 or int32; idx a device int64 array, pos a device uint64 read when the kernel runs). A row whose index "
      "is outside [0, n_src) is not read: NaN (floats) or -1 (int32). Asynchronous on the current stream; "
      "capturable.");

  m.def(
      "cuda_counter_add",
      [](uint64_t ptr, int64_t delta) {
        check_ptr(ptr, 1, 8, "ptr");
        py::gil_scoped_release nogil;
        cuda::counter_add(as_ptr<uint64_t>(ptr), static_cast<uint64_t>(delta));
      },
      py::arg("ptr"), py::arg("delta"),
      "*ptr += delta (mod 2**64) on a device uint64 (a negative delta subtracts). Asynchronous on the current "
      "stream; capturable.");

  m.def(
      "cuda_step_metrics",
      [](const std::string& dtype, uint64_t logits, int64_t M, int64_t C, uint64_t target,
         const std::string& target_kind, uint64_t loss, uint64_t sums) {
        DType dt;
        if (dtype == "float32") dt = DType::F32;
        else if (dtype == "float64") dt = DType::F64;
        else throw py::type_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
        const uint64_t es = dt == DType::F32 ? 4 : 8;
        int kind;
        if (target_kind == "labels") kind = 0;
        else if (target_kind == "soft") kind = 1;
        else if (target_kind == "none") kind = 2;
        else throw py::value_error("target_kind: expected 'labels', 'soft' or 'none', got '" + target_kind + "'");
        check_count(M, "M");
        check_count(C, "C");
        if (kind != 2) {
          if (C == 0) throw py::value_error("C: expected >= 1 classes to count hits against '" + target_kind + "', got 0");
          const int64_t mc = checked_product(M, C, "logits");
          check_ptr(logits, mc, es, "logits");
          if (kind == 0) check_ptr(target, M, 4, "target");
          else check_ptr(target, mc, es, "target");
        }
        check_ptr(loss, 1, 8, "loss");
        check_ptr(sums, 4, 8, "sums");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::step_metrics(as_ptr<const T>(logits), M, C, as_ptr<const void>(target), kind,
                             as_ptr<const double>(loss), as_ptr<double>(sums));
        });
      },
      py::arg("dtype"), py::arg("logits_ptr"), py::arg("M"), py::arg("C"), py::arg("target_ptr"),
      py::arg("target_kind"), py::arg("loss_ptr"), py::arg("sums_ptr"),
      "Adds one step's figures to sums (device float64[4]), in this float64 order: sums[0] += loss * M, sums[1] += "
      "rows whose first argmax of logits (M, C) equals the target (target_kind 'labels': int32 labels; 'soft': the "
      "first argmax of (M, C) soft targets of dtype; 'none': nothing added, logits and target not read; a NaN counts "
      "as the maximum, as numpy.argmax and argmax_count), sums[2] += M, sums[3] = 1.0 when loss (the device float64 "
      "at loss_ptr) is not finite. Asynchronous on the current stream; capturable.");
}

}  // namespace fastnn
