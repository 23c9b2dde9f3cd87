// Argument checks shared by the binding files. The Python layer (python/fastnn) normalizes user
// input and produces the user-facing messages; these checks keep _C itself safe to call
// directly: a wrong array here is an exception, never an out-of-bounds access.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace fastnn {
namespace py = pybind11;

enum class DType { F32, F64 };

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// "(2, 3)", "(5,)": a shape as Python writes it, for error messages.
inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// dtype checks compare with ==, never by identity: an unpickled array's dtype is an equal but
// distinct object.
inline DType float_dtype(const py::array& a, const char* name) {
  if (a.dtype().equal(py::dtype::of<float>())) return DType::F32;
  if (a.dtype().equal(py::dtype::of<double>())) return DType::F64;
  throw py::type_error(std::string(name) + ": expected float32 or float64, got " + dtype_str(a));
}

// Calls f(T{}) with T = float or double according to dt (one body for both dtypes).
template <class F>
inline void dispatch_float(DType dt, F&& f) {
  if (dt == DType::F32) f(float{});
  else f(double{});
}

inline void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + ": expected an array aligned to its element size");
}

inline void require_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
}

inline void require_same(const py::array& a, const char* an, const py::array& b, const char* bn) {
  if (!a.dtype().equal(b.dtype()))
    throw py::type_error(std::string(bn) + ": expected dtype " + dtype_str(a) + " like " + an + ", got " + dtype_str(b));
  if (a.size() != b.size())
    throw py::value_error(std::string(bn) + ": expected " + std::to_string(a.size()) + " elements like " + an +
                          ", got " + std::to_string(b.size()));
}

template <class T>
inline const T* cptr(const py::array& a) { return static_cast<const T*>(a.data()); }
template <class T>
inline T* mptr(py::array& a) { return static_cast<T*>(a.mutable_data()); }

// An uninitialized C-ordered array from the host block cache (fastnn._C.empty; bindings/module.cpp).
py::array host_empty(const std::vector<int64_t>& shape, py::dtype dtype);

void register_activation(py::module_& m);
void register_dropout(py::module_& m);
void register_gemm(py::module_& m);
void register_optim(py::module_& m);
void register_loss(py::module_& m);
void register_augment(py::module_& m);
void register_stats(py::module_& m);
#ifdef FASTNN_WITH_CUDA
void register_cuda(py::module_& m);
void register_cuda_linear(py::module_& m);
void register_cuda_optim(py::module_& m);
void register_cuda_augment(py::module_& m);
#endif

}  // namespace fastnn
