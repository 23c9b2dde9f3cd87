// The extension module fastnn._C: build facts, CPU dispatch, threads, host allocator; each
// kernel family registers itself from its own binding file.
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "core/allocator.h"
#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "core/parallel.h"

namespace fastnn {
void register_metrics(py::module_& m);  // bindings/metrics.cpp
namespace {

py::list compiled_capabilities() {
  py::list l;
  for (int i = 0; i <= 2; ++i) {
    auto c = static_cast<CpuCapability>(i);
    if (capability_compiled(c)) l.append(capability_name(c));
  }
  return l;
}

py::list supported_capabilities() {
  py::list l;
  for (int i = 0; i <= 2; ++i) {
    auto c = static_cast<CpuCapability>(i);
    if (capability_compiled(c) && capability_supported(c)) l.append(capability_name(c));
  }
  return l;
}

// An uninitialized C-ordered array whose memory comes from the host block cache; the block goes
// back to the cache when the array (and every view of it) is gone.
py::array empty(const std::vector<int64_t>& shape, py::dtype dtype) {
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
          throw py::value_error("capability: expected one of baseline, avx2, avx512, got '" + name + "'");
        try {
          set_capability(c);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("capability"), "Forces a CPU kernel path (for tests and benchmarks).");

  m.def("llc_bytes", &llc_bytes, "Last-level cache size used to choose non-temporal stores.");
  m.def("get_num_threads", &num_threads);
  m.def("default_num_threads", &default_num_threads);
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("n: expected an integer >= 1, got " + std::to_string(n));
        set_num_threads(n);
      },
      py::arg("n"));

  m.def("empty", &empty, py::arg("shape"), py::arg("dtype"),
        "Uninitialized C-ordered array from the host block cache (large arrays reuse warm pages).");
  m.def("empty_cache", &host_empty_cache, "Returns every cached host block to the OS; returns the bytes.");
  m.def("cached_bytes", &host_cached_bytes);
  m.def("get_cache_limit", &host_cache_limit);
  m.def("set_cache_limit", &set_host_cache_limit, py::arg("bytes"));
  m.attr("cached_alloc_min") = kCachedAllocMin;

  register_activation(m);
  register_dropout(m);
  register_gemm(m);
  register_optim(m);
  register_loss(m);
  register_augment(m);
  register_stats(m);
  register_metrics(m);
#ifdef FASTNN_WITH_CUDA
  m.attr("cuda_compiled") = true;
  register_cuda(m);
  register_cuda_linear(m);
  register_cuda_optim(m);
  register_cuda_augment(m);
#else
  m.attr("cuda_compiled") = false;
#endif
}
