// pybind11 glue for csrc/cpu/train.h: argument checks (every index before any copy), GIL release.
#include <string>
#include <vector>

#include "bindings/common.h"
#include "cpu/train.h"

namespace fastnn {

namespace {

template <typename I>
void gather_checked(const py::array& src, const py::array& idx, py::array& out, int64_t n, int64_t row_bytes) {
  const int64_t m = idx.shape(0);
  const I* ip = cptr<I>(idx);
  bool wrap = false;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t v = static_cast<int64_t>(ip[i]);
    if (v < -n || v >= n)
      throw py::index_error("idx: index " + std::to_string(v) + " at position " + std::to_string(i) +
                            " is out of bounds for " + std::to_string(n) + " rows");
    wrap |= v < 0;
  }
  std::vector<int64_t> wrapped;
  if (wrap) {  // (NumPy's negative indices: counted from the end)
    wrapped.resize(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) wrapped[i] = ip[i] < 0 ? static_cast<int64_t>(ip[i]) + n : ip[i];
  }
  const uint8_t* s = static_cast<const uint8_t*>(src.data());
  uint8_t* d = static_cast<uint8_t*>(out.mutable_data());
  py::gil_scoped_release nogil;
  if (wrap) gather_rows<int64_t>(s, row_bytes, wrapped.data(), m, d);
  else gather_rows<I>(s, row_bytes, ip, m, d);
}

void gather(const py::array& src, const py::array& idx, py::array out) {
  if (src.ndim() < 1) throw py::value_error("src: expected at least one dimension (the rows), got a 0-d array");
  require_c_contiguous(src, "src");
  if (idx.ndim() != 1) throw py::type_error("idx: expected a 1-D integer array, got shape " + shape_str(idx));
  const bool i64 = idx.dtype().equal(py::dtype::of<int64_t>());
  if (!i64 && !idx.dtype().equal(py::dtype::of<int32_t>()))
    throw py::type_error("idx: expected int32 or int64 indices, got " + dtype_str(idx));
  require_c_contiguous(idx, "idx");
  if (!out.dtype().equal(src.dtype()))
    throw py::type_error("out: expected dtype " + dtype_str(src) + " like src, got " + dtype_str(out));
  bool same = out.ndim() == src.ndim() && out.shape(0) == idx.shape(0);
  for (py::ssize_t k = 1; same && k < src.ndim(); ++k) same = out.shape(k) == src.shape(k);
  if (!same) throw py::value_error("out: expected (len(idx),) + src.shape[1:], got shape " + shape_str(out));
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  const int64_t n = src.shape(0);
  const int64_t row_bytes = n > 0 ? static_cast<int64_t>(src.nbytes()) / n : 0;
  if (i64) gather_checked<int64_t>(src, idx, out, n, row_bytes);
  else gather_checked<int32_t>(src, idx, out, n, row_bytes);
}

}  // namespace

void register_train(py::module_& m) {
  m.def("gather_rows", &gather, py::arg("src"), py::arg("idx"), py::arg("out"),
        "out[i] = src[idx[i]] for the rows of a C-contiguous src (any dtype), int32/int64 idx (negative "
        "counts from the end; every index checked before anything is written), threaded over rows.");
}

}  // namespace fastnn
