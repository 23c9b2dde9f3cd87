// The extension module fastnn._C: build facts, CPU dispatch, threads, host allocator; each
// kernel family registers itself from its own binding file.
#include <atomic>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "core/allocator.h"
#include "core/cpu_features.h"
#include "core/activation_kind.h"
#include "core/parallel.h"

namespace fastnn {
void register_metrics(py::module_& m);  // bindings/metrics.cpp
void register_train(py::module_& m);    // bindings/train.cpp
void register_cuda_stats(py::module_& m);  // bindings/cuda_stats.cpp

// An uninitialized C-ordered array whose memory comes from the host block cache; the block goes
// back to the cache when the array (and every view of it) is gone.
py::array host_empty(const std::vector<int64_t>& shape, py::dtype dtype) {
  size_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw py::value_error("shape: dimensions must be >= 0");
    n *= static_cast<size_t>(d);
  }
  const size_t bytes = n * static_cast<size_t>(dtype.itemsize());
  void* p = host_alloc(bytes ? bytes : 1);
  struct Block {
    void* p;
    size_t bytes;
  };
  auto* blk = new Block{p, bytes ? bytes : 1};
  py::capsule base(blk, [](void* b) {
    auto* blk = static_cast<Block*>(b);
    host_free(blk->p, blk->bytes);
    delete blk;
  });
  return py::array(dtype, shape, std::vector<int64_t>{}, p, base);
}

namespace {

py::list compiled_capabilities() {
  py::list l;
  for (int i = 0; i <= kMaxCapability; ++i) {
    auto c = static_cast<CpuCapability>(i);
    if (capability_compiled(c)) l.append(capability_name(c));
  }
  return l;
}

py::list supported_capabilities() {
  py::list l;
  for (int i = 0; i <= kMaxCapability; ++i) {
    auto c = static_cast<CpuCapability>(i);
    if (capability_compiled(c) && capability_supported(c)) l.append(capability_name(c));
  }
  return l;
}

// A worker thread could not be started: the region ran on fewer threads. Said as a Python
// RuntimeWarning from the thread that called the kernel (it released the GIL for the region).
void warn_thread_failure(const char* message) {
  if (!Py_IsInitialized()) return;
  py::gil_scoped_acquire gil;
  if (PyErr_WarnEx(PyExc_RuntimeWarning, message, 1) < 0) {
    // Warnings are errors here, but a kernel's result cannot carry the exception: report it.
    PyErr_WriteUnraisable(nullptr);
  }
}

}  // namespace
}  // namespace fastnn

PYBIND11_MODULE(_C, m) {
  using namespace fastnn;
  m.doc() = "fastnn's compiled kernels (use the fastnn package, not this module directly)";
  m.attr("__version__") = FASTNN_VERSION;

  try {
    init_capability_from_env();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }

  m.def("compiled_capabilities", &compiled_capabilities, "CPU kernel paths compiled into this build.");
  m.def("supported_capabilities", &supported_capabilities, "Compiled CPU paths this CPU and OS can run.");
  m.def("get_cpu_capability", [] { return std::string(capability_name(current_capability())); },
        "The CPU kernel path in use.");
  m.def(
      "set_cpu_capability",
      [](const std::string& name) {
        CpuCapability c;
        if (!parse_capability(name.c_str(), &c))
          throw py::value_error("capability: expected one of baseline, avx2, avx512, avx512_bf16, avx512_amx, got '" + name + "'");
        try {
          set_capability(c);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("capability"), "Forces a CPU kernel path (for tests and benchmarks).");

  set_thread_failure_handler(&warn_thread_failure);
  m.def("llc_bytes", &llc_bytes, "Last-level cache size used to choose non-temporal stores.");
  m.def("get_num_threads", &num_threads);
  m.def("default_num_threads", &default_num_threads);
  m.def(
      "set_num_threads",
      [](py::int_ count) {
        int overflow = 0;
        const long long n = PyLong_AsLongLongAndOverflow(count.ptr(), &overflow);
        if (n == -1 && PyErr_Occurred()) throw py::error_already_set();
        const std::string shown = py::str(count);
        if (overflow < 0 || (!overflow && n < 1)) throw py::value_error("n: expected an integer >= 1, got " + shown);
        if (overflow > 0 || n > max_num_threads())
          throw py::value_error("n: expected at most " + std::to_string(max_num_threads()) +
                                " threads (4x the larger of 1024 and this process's " +
                                std::to_string(default_num_threads()) + " CPUs), got " + shown);
        if (n > default_num_threads()) {
          const std::string msg = "set_num_threads(" + std::to_string(n) + "): more threads than the " +
                                  std::to_string(default_num_threads()) +
                                  " CPUs this process may use; kernels will run slower than with " +
                                  std::to_string(default_num_threads());
          if (PyErr_WarnEx(PyExc_RuntimeWarning, msg.c_str(), 2) < 0) throw py::error_already_set();
        }
        set_num_threads(static_cast<int>(n));
      },
      py::arg("n"),
      "Threads of the CPU kernels (n >= 1; a RuntimeWarning above the CPUs of sched_getaffinity, a "
      "ValueError above max_num_threads()). Workers start when a kernel has that many chunks of work.");
  m.def("max_num_threads", &max_num_threads, "The largest count set_num_threads accepts.");
  m.def("started_threads", &started_threads, "Worker threads the pool runs now (for tests).");
  m.def(
      "parallel_check",
      [](int64_t n, bool fail) {
        std::atomic<int64_t> done{0};
        py::gil_scoped_release nogil;
        parallel_for(n, 1, 1, [&](int64_t b, int64_t e) {
          if (fail) throw std::bad_alloc();
          done.fetch_add(e - b);
        });
        return done.load();
      },
      py::arg("n"), py::arg("fail") = false,
      "For tests: a parallel region over n items (a task per thread); with fail, every task throws "
      "std::bad_alloc, which must reach the caller as MemoryError. Returns the items run.");

  m.def("empty", &host_empty, py::arg("shape"), py::arg("dtype"),
        "Uninitialized C-ordered array from the host block cache (large arrays reuse warm pages).");
  m.def("empty_cache", &host_empty_cache, "Returns every cached host block to the OS; returns the bytes.");
  m.def("cached_bytes", &host_cached_bytes);
  m.def("get_cache_limit", &host_cache_limit);
  m.def("set_cache_limit", &set_host_cache_limit, py::arg("bytes"));
  m.attr("cached_alloc_min") = kCachedAllocMin;

  // The activation ids of every kernel that takes one (csrc/core/activation_kind.h).
  py::dict ids;
  ids["identity"] = static_cast<int>(kActIdentity);
  ids["sigmoid"] = static_cast<int>(kActSigmoid);
  ids["tanh"] = static_cast<int>(kActTanh);
  ids["relu"] = static_cast<int>(kActRelu);
  ids["leaky_relu"] = static_cast<int>(kActLeakyRelu);
  ids["elu"] = static_cast<int>(kActElu);
  ids["prelu"] = static_cast<int>(kActPrelu);
  m.attr("ACTIVATION_IDS") = ids;

  // Every CPU op lives in _C.cpu (the names _C.cuda shares); until the Python side reads them from
  // there, each is also reachable under its old flat name.
  py::module_ cpu = m.def_submodule("cpu", "The CPU kernels: the same op names and signatures as _C.cuda.");
  register_activation(cpu);
  register_dropout(cpu);
  register_gemm(cpu);
  register_optim(cpu);
  register_loss(cpu);
  register_augment(cpu);
  register_stats(cpu);
  register_metrics(cpu);
  register_train(cpu);
  for (auto item : cpu.attr("__dict__").cast<py::dict>()) {
    const std::string name = item.first.cast<std::string>();
    if (name.rfind("__", 0) == 0) continue;
    if (py::hasattr(m, name.c_str()))
      throw std::logic_error("_C.cpu." + name + " would shadow _C." + name);
    m.attr(name.c_str()) = item.second;
  }
#ifdef FASTNN_WITH_CUDA
  m.attr("cuda_compiled") = true;
  register_cuda(m);
  register_cuda_linear(m);
  register_cuda_optim(m);
  register_cuda_augment(m);
  register_cuda_stats(m);  // bindings/cuda_stats.cpp
#else
  m.attr("cuda_compiled") = false;
#endif
}
