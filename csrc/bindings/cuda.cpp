// pybind11 glue for the GPU: device queries, memory, copies, the activation and dropout launchers
// and the DLPack exporter. Device pointers travel as Python ints; python/fastnn/cuda.py owns the arrays
// and checks shapes against them. Checks here keep _C safe to call directly: a bad argument is
// an exception, never a launch with a bad size.
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "bindings/dlpack.h"
#include "cuda/activation.h"
#include "cuda/device.h"
#include "cuda/dropout.h"

namespace fastnn {

namespace {

DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "float64") return DType::F64;
  throw py::type_error("dtype: expected 'float32' or 'float64', got '" + s + "'");
}

void check_count(int64_t n, const char* name) {
  if (n < 0) throw py::value_error(std::string(name) + ": expected a count >= 0, got " + std::to_string(n));
}

void check_ptr(uint64_t p, int64_t n, const char* name) {
  if (n > 0 && p == 0) throw py::value_error(std::string(name) + ": null device pointer for a non-empty array");
}

// A misaligned element access would be a sticky CUDA error that ends every later CUDA call of the
// process (PyTorch's included): refuse such pointers up front.
void check_aligned(uint64_t p, DType dt, const char* name) {
  const uint64_t size = dt == DType::F32 ? 4 : 8;
  if (p % size != 0)
    throw py::value_error(std::string(name) + ": device pointer is not aligned to its " + std::to_string(size) +
                          "-byte elements");
}

template <class T>
T* as_ptr(uint64_t p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

// Stream positions offset .. offset + n - 1 must all exist (the last one is 2^64 - 1), as in
// csrc/bindings/dropout.cpp.
void check_positions(uint64_t offset, int64_t n) {
  if (n > 0 && offset > UINT64_MAX - static_cast<uint64_t>(n - 1))
    throw py::value_error("offset: offset + number of elements must be at most 2**64");
}

void check_op(int op) {
  if (op < 0 || op >= kActCount || op == kActPrelu)
    throw py::value_error("op: expected an activation id in [0, " + std::to_string(kActCount) + ") other than PReLU (" + std::to_string(kActPrelu) + "), got " +
                          std::to_string(op));
}

ActParams make_params(double slope, double alpha, double scale) {
  ActParams p;
  p.slope = slope;
  p.alpha = alpha;
  p.scale = scale;
  return p;
}

// (outer, C, inner) of a PReLU call; returns outer*C*inner.
int64_t check_prelu_shape(int64_t w_size, int64_t outer, int64_t C, int64_t inner) {
  if (outer < 0 || C < 1 || inner < 0)
    throw py::value_error("prelu: expected outer >= 0, C >= 1, inner >= 0, got (" + std::to_string(outer) + ", " +
                          std::to_string(C) + ", " + std::to_string(inner) + ")");
  if (w_size != 1 && w_size != C)
    throw py::value_error("weight: expected 1 or " + std::to_string(C) + " elements, got " + std::to_string(w_size));
  if (outer > 0 && inner > 0 && C > INT64_MAX / outer / inner)
    throw py::value_error("prelu: outer * C * inner overflows int64");
  return outer * C * inner;
}

py::array c_contiguous_array(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + ": expected a NumPy array, got " +
                         py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(o);
  require_c_contiguous(a, name);
  return a;
}

// ---- DLPack export -------------------------------------------------------------------------------

struct DLPackExport {
  DLManagedTensor managed;
  DLManagedTensorVersioned versioned;  // the one handed out when the consumer asked for >= 1.0
  std::vector<int64_t> shape, strides;
  PyObject* owner;  // a strong reference: keeps the device memory alive while a consumer holds it
};

// Called by the consumer when it is done with the tensor (from any thread, GIL held or not), or
// by the capsule destructor when nobody consumed it.
void dlpack_release(DLPackExport* ctx) {
  bool alive = Py_IsInitialized() != 0;
#if PY_VERSION_HEX >= 0x030D0000
  alive = alive && !Py_IsFinalizing();
#endif
  if (ctx->owner != nullptr && alive) {  // at interpreter exit the reference is simply dropped
    PyGILState_STATE st = PyGILState_Ensure();
    Py_DECREF(ctx->owner);
    PyGILState_Release(st);
  }
  delete ctx;
}

extern "C" void dlpack_deleter(DLManagedTensor* self) { dlpack_release(static_cast<DLPackExport*>(self->manager_ctx)); }
extern "C" void dlpack_versioned_deleter(DLManagedTensorVersioned* self) {
  dlpack_release(static_cast<DLPackExport*>(self->manager_ctx));
}

// A capsule that was consumed has been renamed "used_dltensor": its tensor belongs to the
// consumer, which calls the deleter itself.
extern "C" void dlpack_capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, "used_dltensor")) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed == nullptr) {
    PyErr_WriteUnraisable(capsule);
  } else if (managed->deleter != nullptr) {
    managed->deleter(managed);
  }
  PyErr_Restore(type, value, traceback);
}

extern "C" void dlpack_versioned_capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, "used_dltensor_versioned")) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule, "dltensor_versioned"));
  if (managed == nullptr) {
    PyErr_WriteUnraisable(capsule);
  } else if (managed->deleter != nullptr) {
    managed->deleter(managed);
  }
  PyErr_Restore(type, value, traceback);
}

// max_version: the consumer's (major, minor) or None; >= (1, 0) gets a "dltensor_versioned" capsule
// (version 1.0), else the v0.8 "dltensor" one. An array with no elements exports data = NULL.
py::object dlpack_capsule(uint64_t ptr, const std::vector<int64_t>& shape, const std::string& dtype, int device_index,
                          py::object owner, py::object max_version) {
  bool versioned = false;
  if (!max_version.is_none()) {
    py::tuple v;
    try {
      v = py::tuple(max_version);
    } catch (const py::error_already_set&) {
      throw py::type_error("max_version: expected None or a (major, minor) tuple");
    }
    if (v.size() != 2) throw py::type_error("max_version: expected None or a (major, minor) tuple");
    versioned = v[0].cast<int64_t>() >= 1;
  }
  // bfloat16 (DLPack kDLBfloat) for GPU linear results; DeviceArray itself is float32/float64.
  DLDataType dl;
  if (dtype == "bfloat16") dl = DLDataType{kDLBfloat, 16, 1};
  else dl = DLDataType{kDLFloat, static_cast<uint8_t>(parse_dtype(dtype) == DType::F32 ? 32 : 64), 1};
  if (device_index < 0) throw py::value_error("device_index: expected >= 0, got " + std::to_string(device_index));
  for (int64_t d : shape)
    if (d < 0) throw py::value_error("shape: dimensions must be >= 0");
  auto* ctx = new DLPackExport();
  ctx->shape = shape;
  ctx->strides.assign(shape.size(), 1);
  for (int64_t i = static_cast<int64_t>(shape.size()) - 2; i >= 0; --i)
    ctx->strides[i] = ctx->strides[i + 1] * std::max<int64_t>(shape[i + 1], 1);
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  DLTensor& t = versioned ? ctx->versioned.dl_tensor : ctx->managed.dl_tensor;
  t.data = count == 0 ? nullptr : as_ptr<void>(ptr);
  t.device = DLDevice{kDLCUDA, device_index};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = dl;
  t.shape = ctx->shape.empty() ? nullptr : ctx->shape.data();
  t.strides = ctx->strides.empty() ? nullptr : ctx->strides.data();
  t.byte_offset = 0;
  ctx->owner = owner.ptr();
  Py_INCREF(ctx->owner);
  PyObject* cap = nullptr;
  if (versioned) {
    ctx->versioned.version = DLPackVersion{1, 0};
    ctx->versioned.manager_ctx = ctx;
    ctx->versioned.deleter = &dlpack_versioned_deleter;
    ctx->versioned.flags = 0;
    cap = PyCapsule_New(&ctx->versioned, "dltensor_versioned", &dlpack_versioned_capsule_destructor);
  } else {
    ctx->managed.manager_ctx = ctx;
    ctx->managed.deleter = &dlpack_deleter;
    cap = PyCapsule_New(&ctx->managed, "dltensor", &dlpack_capsule_destructor);
  }
  if (cap == nullptr) {
    Py_DECREF(ctx->owner);
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(cap);
}

}  // namespace

void register_cuda_ops(py::module_& m);  // csrc/bindings/cuda_ops.cpp: the _C.cuda submodule
void register_cuda_train(py::module_& m);  // csrc/bindings/cuda_train.cpp: gather, counter, step metrics

void register_cuda(py::module_& m) {
  register_cuda_ops(m);
  register_cuda_train(m);
  // ---- devices ----
  m.def("cuda_device_count", &cuda::device_count, "GPUs visible to this process (0 without a driver or GPU).");
  m.def("cuda_init_error", &cuda::init_error, "Why cuda_device_count() is 0 ('' when GPUs were found).");
  m.def(
      "cuda_device_properties",
      [](int index) {
        const cuda::DeviceProperties p = cuda::device_properties(index);
        py::dict d;
        d["index"] = p.index;
        d["name"] = p.name;
        d["major"] = p.major;
        d["minor"] = p.minor;
        d["memory_bytes"] = p.memory_bytes;
        return d;
      },
      py::arg("index"));
  m.def("cuda_get_device", &cuda::get_device, "The current device of this thread.");
  m.def("cuda_set_device", &cuda::set_device, py::arg("index"));
  m.def(
      "cuda_pointer_device", [](uint64_t ptr) { return cuda::pointer_device(static_cast<uintptr_t>(ptr)); },
      py::arg("ptr"), "Device owning a device/managed pointer, or -1 for host or unknown memory.");

  // ---- memory ----
  m.def(
      "cuda_malloc",
      [](int64_t nbytes) {
        check_count(nbytes, "nbytes");
        return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(cuda::device_malloc(static_cast<size_t>(nbytes))));
      },
      py::arg("nbytes"), "Device memory on the current device (cached); 0 bytes gives a valid block.");
  m.def(
      "cuda_free", [](uint64_t ptr) { cuda::device_free(as_ptr<void>(ptr)); }, py::arg("ptr"),
      "Returns a cuda_malloc block to the cache (stream-0 ordered).");
  m.def("cuda_empty_cache", &cuda::empty_cache, "Frees the cached device blocks; returns the bytes freed.");
  m.def("cuda_cached_bytes", &cuda::cached_bytes);
  m.def("cuda_allocated_bytes", &cuda::allocated_bytes);

  // ---- copies and synchronization ----
  m.def(
      "cuda_memcpy_htod",
      [](uint64_t dst, py::object src) {
        py::array a = c_contiguous_array(src, "src");
        const size_t bytes = static_cast<size_t>(a.nbytes());
        check_ptr(dst, static_cast<int64_t>(bytes), "dst");
        const void* s = a.data();
        py::gil_scoped_release nogil;
        cuda::memcpy_htod(as_ptr<void>(dst), s, bytes);
      },
      py::arg("dst_ptr"), py::arg("src"), "Copies src.nbytes bytes of a C-contiguous array to the device.");
  m.def(
      "cuda_memcpy_dtoh",
      [](py::object dst, uint64_t src) {
        py::array a = c_contiguous_array(dst, "dst");
        require_writeable(a, "dst");
        const size_t bytes = static_cast<size_t>(a.nbytes());
        check_ptr(src, static_cast<int64_t>(bytes), "src");
        void* d = a.mutable_data();
        py::gil_scoped_release nogil;
        cuda::memcpy_dtoh(d, as_ptr<const void>(src), bytes);
      },
      py::arg("dst"), py::arg("src_ptr"),
      "Fills a C-contiguous writeable array from the device (waits for the current stream).");
  m.def(
      "cuda_memcpy_dtod",
      [](uint64_t dst, uint64_t src, int64_t nbytes) {
        check_count(nbytes, "nbytes");
        check_ptr(dst, nbytes, "dst");
        check_ptr(src, nbytes, "src");
        py::gil_scoped_release nogil;
        cuda::memcpy_dtod(as_ptr<void>(dst), as_ptr<const void>(src), static_cast<size_t>(nbytes));
      },
      py::arg("dst_ptr"), py::arg("src_ptr"), py::arg("nbytes"),
      "Device-to-device copy, asynchronous on the current stream.");
  m.def(
      "cuda_synchronize",
      [] {
        py::gil_scoped_release nogil;
        cuda::synchronize();
      },
      "Waits for all work on the current device.");
  m.def(
      "cuda_legacy_wait_on", [](uint64_t stream) { cuda::legacy_wait_on(static_cast<uintptr_t>(stream)); },
      py::arg("stream"), "Later stream-0 work waits for the work queued on `stream` now.");
  m.def(
      "cuda_wait_on_legacy", [](uint64_t stream) { cuda::wait_on_legacy(static_cast<uintptr_t>(stream)); },
      py::arg("stream"), "Later work on `stream` waits for the work queued on stream 0 now.");

  // ---- driver, streams and graphs (handles are cudaStream_t / cudaGraphExec_t as ints) ----
  m.def(
      "cuda_driver_info",
      [] {
        const cuda::DriverInfo d = cuda::driver_info();
        py::dict r;
        r["driver_version"] = d.driver_version;
        r["runtime_version"] = d.runtime_version;
        r["state"] = d.state;
        r["detail"] = d.detail;
        return r;
      },
      "Driver and runtime CUDA versions (1000*major + 10*minor; driver 0 = none) and state: 'ok', 'no driver', "
      "'driver too old', 'no device' or 'error', with a detail line.");
  m.def(
      "stream_create", [](int priority) { return static_cast<uint64_t>(cuda::stream_create(priority)); },
      py::arg("priority") = 0, "A new non-blocking stream (lower priority numbers run first).");
  m.def(
      "stream_destroy", [](uint64_t h) { cuda::stream_destroy(static_cast<uintptr_t>(h)); }, py::arg("h"));
  m.def(
      "stream_synchronize",
      [](uint64_t h) {
        py::gil_scoped_release nogil;
        cuda::stream_synchronize(static_cast<uintptr_t>(h));
      },
      py::arg("h"), "Waits for the work queued on stream h (0 = legacy default).");
  m.def(
      "stream_wait",
      [](uint64_t waiter, uint64_t waited) {
        cuda::stream_wait(static_cast<uintptr_t>(waiter), static_cast<uintptr_t>(waited));
      },
      py::arg("waiter"), py::arg("waited"),
      "Later work on `waiter` waits for the work queued on `waited` now (an event; 0 = legacy default).");
  m.def(
      "set_current_stream", [](uint64_t h) { cuda::set_current_stream(static_cast<uintptr_t>(h)); }, py::arg("h"),
      "The stream this thread's fastnn launches, copies and allocations go to (0 = legacy default).");
  m.def(
      "current_stream", [] { return static_cast<uint64_t>(cuda::current_stream()); },
      "This thread's current stream (0 = legacy default).");
  m.def(
      "graph_capture_begin", [](uint64_t h) { cuda::graph_capture_begin(static_cast<uintptr_t>(h)); }, py::arg("h"),
      "Starts capturing stream h (not the legacy stream); allocations come from the graph's private pool.");
  m.def(
      "graph_capture_end", [](uint64_t h) { return static_cast<uint64_t>(cuda::graph_capture_end(static_cast<uintptr_t>(h))); },
      py::arg("h"), "Ends the capture on h and returns the instantiated graph.");
  m.def(
      "graph_replay",
      [](uint64_t g, uint64_t h) { cuda::graph_replay(static_cast<uintptr_t>(g), static_cast<uintptr_t>(h)); },
      py::arg("g"), py::arg("h"), "Launches graph g on stream h (asynchronous).");
  m.def(
      "graph_destroy", [](uint64_t g) { cuda::graph_destroy(static_cast<uintptr_t>(g)); }, py::arg("g"),
      "Destroys graph g; its private pool returns to the shared cache after its last replay.");
  m.def(
      "cuda_set_cache_limit",
      [](int64_t nbytes) {
        check_count(nbytes, "nbytes");
        cuda::set_cache_limit(static_cast<size_t>(nbytes));
      },
      py::arg("nbytes"), "Caps the bytes the allocator keeps cached (freed blocks above it go back to CUDA).");

  // ---- activation launchers (asynchronous on stream 0) ----
  m.def(
      "cuda_act_forward",
      [](int op, const std::string& dtype, uint64_t x, uint64_t y, int64_t n, double slope, double alpha,
         double scale) {
        check_op(op);
        const DType dt = parse_dtype(dtype);
        check_count(n, "n");
        check_ptr(x, n, "x");
        check_ptr(y, n, "y");
        check_aligned(x, dt, "x");
        check_aligned(y, dt, "y");
        const ActParams p = make_params(slope, alpha, scale);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::act_forward(op, as_ptr<const T>(x), as_ptr<T>(y), n, p);
        });
      },
      py::arg("op"), py::arg("dtype"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("n"), py::arg("slope"),
      py::arg("alpha"), py::arg("scale"), "y = f(x) over n elements (y may be x).");
  m.def(
      "cuda_act_backward",
      [](int op, const std::string& dtype, uint64_t g, uint64_t x, uint64_t y, int64_t n, double slope, double alpha,
         double scale) {
        check_op(op);
        const DType dt = parse_dtype(dtype);
        check_count(n, "n");
        check_ptr(g, n, "grad_output");
        check_ptr(x, n, "x");
        check_ptr(y, n, "y");
        check_aligned(g, dt, "grad_output");
        check_aligned(x, dt, "x");
        check_aligned(y, dt, "y");
        const ActParams p = make_params(slope, alpha, scale);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::act_backward(op, as_ptr<const T>(g), as_ptr<const T>(x), as_ptr<T>(y), n, p);
        });
      },
      py::arg("op"), py::arg("dtype"), py::arg("g_ptr"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("n"),
      py::arg("slope"), py::arg("alpha"), py::arg("scale"), "y = grad_output * f'(x) over n elements.");
  m.def(
      "cuda_prelu_forward",
      [](const std::string& dtype, uint64_t x, uint64_t w, int64_t w_size, uint64_t y, int64_t outer, int64_t C,
         int64_t inner) {
        const DType dt = parse_dtype(dtype);
        const int64_t n = check_prelu_shape(w_size, outer, C, inner);
        check_ptr(x, n, "x");
        check_ptr(w, 1, "weight");
        check_ptr(y, n, "y");
        for (auto [p, name] : {std::pair<uint64_t, const char*>{x, "x"}, {w, "weight"}, {y, "y"}})
          check_aligned(p, dt, name);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::prelu_forward(as_ptr<const T>(x), as_ptr<const T>(w), w_size, as_ptr<T>(y), outer, C, inner);
        });
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("w_ptr"), py::arg("w_size"), py::arg("y_ptr"), py::arg("outer"),
      py::arg("C"), py::arg("inner"), "PReLU over x viewed as (outer, C, inner); weight has 1 or C elements.");
  m.def(
      "cuda_prelu_backward",
      [](const std::string& dtype, uint64_t g, uint64_t x, uint64_t w, int64_t w_size, uint64_t gx, uint64_t gw,
         int64_t outer, int64_t C, int64_t inner) {
        const DType dt = parse_dtype(dtype);
        const int64_t n = check_prelu_shape(w_size, outer, C, inner);
        check_ptr(g, n, "grad_output");
        check_ptr(x, n, "x");
        check_ptr(w, 1, "weight");
        check_ptr(gx, n, "grad_input");
        check_ptr(gw, 1, "grad_weight");
        for (auto [p, name] : {std::pair<uint64_t, const char*>{g, "grad_output"}, {x, "x"}, {w, "weight"},
                               {gx, "grad_input"}, {gw, "grad_weight"}})
          check_aligned(p, dt, name);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::prelu_backward(as_ptr<const T>(g), as_ptr<const T>(x), as_ptr<const T>(w), w_size, as_ptr<T>(gx),
                               as_ptr<T>(gw), outer, C, inner);
        });
      },
      py::arg("dtype"), py::arg("g_ptr"), py::arg("x_ptr"), py::arg("w_ptr"), py::arg("w_size"), py::arg("gx_ptr"),
      py::arg("gw_ptr"), py::arg("outer"), py::arg("C"), py::arg("inner"),
      "grad_input and grad_weight (w_size elements, summed in double in a fixed order) of PReLU.");

  // ---- dropout launchers (asynchronous on stream 0); the semantics of dropout_mask,
  // dropout_apply and dropout_apply_mask (csrc/bindings/dropout.cpp), on device pointers ----
  m.def(
      "cuda_dropout_mask",
      [](int64_t n, uint64_t seed, uint64_t offset, uint32_t threshold, uint64_t out) {
        check_count(n, "n");
        check_positions(offset, n);
        check_ptr(out, n, "out");
        py::gil_scoped_release nogil;
        cuda::dropout_mask(seed, offset, n, threshold, as_ptr<uint8_t>(out));
      },
      py::arg("n"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("out_ptr"),
      "Packed keep bits (1 = kept) of stream positions offset .. offset + n - 1 into ceil(n/8) bytes at out_ptr.");
  m.def(
      "cuda_dropout_apply",
      [](const std::string& dtype, uint64_t x, uint64_t y, int64_t n, uint64_t seed, uint64_t offset,
         uint32_t threshold, double scale) {
        const DType dt = parse_dtype(dtype);
        check_count(n, "n");
        check_positions(offset, n);
        check_ptr(x, n, "x");
        check_ptr(y, n, "y");
        check_aligned(x, dt, "x");
        check_aligned(y, dt, "y");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::dropout_apply(as_ptr<const T>(x), as_ptr<T>(y), n, seed, offset, threshold, static_cast<T>(scale));
        });
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("n"), py::arg("seed"), py::arg("offset"),
      py::arg("threshold"), py::arg("scale"),
      "y = x * (keep ? scale : 0) over n elements, keep from the Philox stream at offset + i (y may be x).");
  m.def(
      "cuda_dropout_apply_dev",
      [](const std::string& dtype, uint64_t x, uint64_t y, int64_t n, uint64_t rng, uint64_t shift,
         uint32_t threshold, double scale) {
        const DType dt = parse_dtype(dtype);
        check_count(n, "n");
        check_ptr(x, n, "x");
        check_ptr(y, n, "y");
        check_aligned(x, dt, "x");
        check_aligned(y, dt, "y");
        if (rng == 0 || rng % 8 != 0)
          throw py::value_error("rng_ptr: expected a device uint64[2] (seed, offset), 8-byte aligned, got " +
                                std::to_string(rng));
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::dropout_apply_dev(as_ptr<const T>(x), as_ptr<T>(y), n, as_ptr<const uint64_t>(rng), shift, threshold,
                                  static_cast<T>(scale));
        });
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("n"), py::arg("rng_ptr"), py::arg("shift"),
      py::arg("threshold"), py::arg("scale"),
      "cuda_dropout_apply with seed = rng[0] and offset = rng[1] + shift read on the device when it runs "
      "(graph capture: a replay after cuda_rng_advance draws a new mask).");
  m.def(
      "cuda_rng_advance",
      [](uint64_t rng, uint64_t count) {
        if (rng == 0 || rng % 8 != 0)
          throw py::value_error("rng_ptr: expected a device uint64[2] (seed, offset), 8-byte aligned");
        cuda::rng_advance(as_ptr<uint64_t>(rng), count);
      },
      py::arg("rng_ptr"), py::arg("count"), "rng[1] += count on the device, on the current stream (capturable).");
  m.def(
      "cuda_dropout_apply_mask",
      [](const std::string& dtype, uint64_t x, uint64_t mask, uint64_t y, int64_t n, double scale) {
        const DType dt = parse_dtype(dtype);
        check_count(n, "n");
        check_ptr(x, n, "x");
        check_ptr(mask, n, "mask");
        check_ptr(y, n, "y");
        check_aligned(x, dt, "x");
        check_aligned(y, dt, "y");
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          cuda::dropout_apply_mask(as_ptr<const T>(x), as_ptr<const uint8_t>(mask), as_ptr<T>(y), n,
                                   static_cast<T>(scale));
        });
      },
      py::arg("dtype"), py::arg("x_ptr"), py::arg("mask_ptr"), py::arg("y_ptr"), py::arg("n"), py::arg("scale"),
      "y = x * (mask bit i ? scale : 0) over n elements with a packed mask of ceil(n/8) bytes (y may be x).");

  // ---- DLPack ----
  m.def("cuda_dlpack_capsule", &dlpack_capsule, py::arg("ptr"), py::arg("shape"), py::arg("dtype"),
        py::arg("device_index"), py::arg("owner"), py::arg("max_version") = py::none(),
        "A 'dltensor' capsule (or 'dltensor_versioned', DLPack 1.0, when max_version >= (1, 0)) for a "
        "C-contiguous CUDA array at ptr (data NULL when it has no elements); holds a reference to owner until "
        "the consumer's deleter runs (or the unconsumed capsule dies).");
}

}  // namespace fastnn
