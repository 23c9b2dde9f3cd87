// cuBLASLt loading and the plan cache (see cublaslt.h). csrc/cuda/linear.cu builds its GEMMs on gemm().
#include "cuda/cublaslt.h"

#include <cuda_runtime.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/device.h"

#ifndef FASTNN_HAVE_CUBLASLT
#define FASTNN_HAVE_CUBLASLT 0
#endif
#if FASTNN_HAVE_CUBLASLT
#include <cublasLt.h>
#include <dlfcn.h>
#endif

namespace fastnn {
namespace cuda {
namespace {

#ifndef FASTNN_CUBLASLT_SONAME
#define FASTNN_CUBLASLT_SONAME "libcublasLt.so.13"
#endif
constexpr const char* kSoname = FASTNN_CUBLASLT_SONAME;

std::string install_hint() {
  // "libcublasLt.so.13" -> "13": the fastnn-cu<major> distribution's extra pulls the matching wheel.
  const std::string so = kSoname;
  const size_t dot = so.rfind('.');
  const std::string major = dot == std::string::npos ? "13" : so.substr(dot + 1);
  return "install `fastnn-cu" + major + "[cublas]` (the nvidia-cublas wheel) or set FASTNN_CUBLASLT to the path of " +
         so;
}

}  // namespace

#if FASTNN_HAVE_CUBLASLT

namespace {

// The entry points used, resolved with dlsym (typed from the header's declarations).
struct LtApi {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtGetStatusString) status_string;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
  std::string path;  // the file it came from
};

// Never destroyed: cuBLASLt objects must not be released after the driver is torn down at exit.
struct LoaderState {
  std::mutex mu;
  const LtApi* api = nullptr;  // set once, on the first successful load
  std::vector<std::string> dirs;
  std::string last_error;
};
LoaderState& loader() {
  static auto* s = new LoaderState();
  return *s;
}

// Resolves the entry points from `h`; "" on success, else the missing names.
std::string resolve(void* h, LtApi& a) {
  std::string missing;
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
    if (fn == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
  };
  sym(a.create, "cublasLtCreate");
  sym(a.status_string, "cublasLtGetStatusString");
  sym(a.desc_create, "cublasLtMatmulDescCreate");
  sym(a.desc_set, "cublasLtMatmulDescSetAttribute");
  sym(a.desc_destroy, "cublasLtMatmulDescDestroy");
  sym(a.layout_create, "cublasLtMatrixLayoutCreate");
  sym(a.layout_destroy, "cublasLtMatrixLayoutDestroy");
  sym(a.pref_create, "cublasLtMatmulPreferenceCreate");
  sym(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
  sym(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
  sym(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(a.matmul, "cublasLtMatmul");
  return missing;
}

// Tries the lookup order of cublaslt.h; caller holds loader().mu. Returns the api or null (and sets
// last_error); a failure is not cached.
const LtApi* try_load(LoaderState& s) {
  if (s.api != nullptr) return s.api;
  std::vector<std::pair<std::string, int>> tries;  // (what to dlopen, extra flags)
  const char* env = std::getenv("FASTNN_CUBLASLT");
  if (env != nullptr && env[0] != '\0') tries.emplace_back(env, 0);
  tries.emplace_back(kSoname, RTLD_NOLOAD);
  std::vector<std::string> dirs = s.dirs;
  if (dirs.empty()) {
    // No folders from Python yet: the wheel's layout beside this module (site-packages/fastnn/_C*.so,
    // site-packages/nvidia/{cu<major>,cublas}/lib), relative to where the module is, not the build.
    Dl_info self;
    if (dladdr(reinterpret_cast<void*>(&try_load), &self) != 0 && self.dli_fname != nullptr) {
      std::string md = self.dli_fname;
      const size_t slash = md.rfind('/');
      md = slash == std::string::npos ? std::string(".") : md.substr(0, slash);
      const std::string so = kSoname;
      const std::string major = so.substr(so.rfind('.') + 1);
      dirs.push_back(md + "/../nvidia/cu" + major + "/lib");
      dirs.push_back(md + "/../nvidia/cublas/lib");
    }
  }
  for (const std::string& d : dirs)
    if (!d.empty()) tries.emplace_back(d + "/" + kSoname, 0);
  tries.emplace_back(kSoname, 0);
  std::string tried;
  for (const auto& t : tries) {
    dlerror();
    void* h = dlopen(t.first.c_str(), RTLD_NOW | RTLD_LOCAL | t.second);
    if (h == nullptr) {
      const char* e = dlerror();
      tried += "\n  " + t.first + (t.second ? " (already loaded?)" : "") + ": " +
               (t.second ? std::string("no") : std::string(e != nullptr ? e : "not found"));
      continue;
    }
    auto* a = new LtApi{};
    const std::string missing = resolve(h, *a);
    if (!missing.empty()) {
      tried += "\n  " + t.first + ": lacks " + missing;
      delete a;
      dlclose(h);
      continue;
    }
    Dl_info info;
    a->path = (dladdr(reinterpret_cast<void*>(a->create), &info) != 0 && info.dli_fname != nullptr)
                  ? std::string(info.dli_fname)
                  : t.first;
    s.api = a;
    s.last_error.clear();
    return a;
  }
  s.last_error = "fastnn: libcublasLt (" + std::string(kSoname) + ") could not be loaded; tried:" + tried + "\n" +
                 install_hint();
  return nullptr;
}

const LtApi& lt_checked() {
  LoaderState& s = loader();
  std::lock_guard<std::mutex> lock(s.mu);
  const LtApi* a = try_load(s);
  if (a == nullptr) throw std::runtime_error(s.last_error);
  return *a;
}

std::string status_text(const LtApi& api, cublasStatus_t st) {
  const char* s = api.status_string != nullptr ? api.status_string(st) : "?";
  return std::string(s) + " (cublasStatus " + std::to_string(static_cast<int>(st)) + ")";
}

void lt_check(const LtApi& api, cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": " + status_text(api, st));
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // NVIDIA's recommendation for Hopper

// One handle per device; one workspace per (device, stream), since two streams running GEMMs at
// once must not share scratch. The handle stays for the life of the process, a stream's workspace
// until the stream is destroyed (release_stream).
struct DeviceLt {
  cublasLtHandle_t handle = nullptr;
  std::map<uintptr_t, void*> workspace;
};

// One plan per (device, dtype, transposes, m, n, k, leading dimensions, epilogue, math, pointer
// alignments): the heuristic's choice depends on all of them. ok = false: cuBLASLt said
// NOT_SUPPORTED (or found nothing) for it, which does not change in this process.
using PlanKey = std::array<int64_t, 19>;
struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t ws = 0;
};

// Owns the descriptors of a plan being built: released unless handed to the cache.
struct PlanGuard {
  const LtApi& api;
  Plan p;
  cublasLtMatmulPreference_t pref = nullptr;
  explicit PlanGuard(const LtApi& a) : api(a) {}
  ~PlanGuard() {
    if (pref != nullptr) api.pref_destroy(pref);
    if (p.desc != nullptr) api.desc_destroy(p.desc);
    if (p.a != nullptr) api.layout_destroy(p.a);
    if (p.b != nullptr) api.layout_destroy(p.b);
    if (p.d != nullptr) api.layout_destroy(p.d);
  }
  Plan release() {
    Plan out = p;
    p = Plan{};
    return out;
  }
};

std::mutex& lt_mutex() {
  static std::mutex* m = new std::mutex();
  return *m;
}
std::map<int, DeviceLt>& device_lt() {
  static auto* m = new std::map<int, DeviceLt>();
  return *m;
}
std::map<PlanKey, Plan>& plans() {
  static auto* m = new std::map<PlanKey, Plan>();
  return *m;
}

int64_t alignment(const void* p, int64_t cap) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int64_t a = 1;
  while (a < cap && (v % static_cast<uintptr_t>(a * 2)) == 0) a *= 2;
  return a;
}

cudaDataType_t cuda_type(LDType dt) {
  return dt == LDType::F32 ? CUDA_R_32F : dt == LDType::F64 ? CUDA_R_64F : CUDA_R_16BF;
}

bool uses_bias(uint32_t epi) { return epi == kEpiBias || epi == kEpiReluBias || epi == kEpiReluAuxBias || epi == kEpiBgradB; }
bool uses_aux(uint32_t epi) { return epi == kEpiReluAux || epi == kEpiReluAuxBias; }

enum class PlanStatus { kOk, kUnsupported, kInvalid };

// Builds the plan (caller holds lt_mutex). kUnsupported: cache "no algorithm"; kInvalid: the
// heuristic rejected the arguments (not cached; logged once); other failures throw.
PlanStatus make_plan(const LtApi& api, cublasLtHandle_t handle, const GemmCall& g, const int64_t align[5],
                     Plan* out) {
  PlanGuard guard(api);
  Plan& p = guard.p;
  const cudaDataType_t t = cuda_type(g.dt);
  // FAST_16BF: float32 A, B and D, converted to bf16 for the tensor cores, float32 sums.
  const cublasComputeType_t compute = g.dt == LDType::F64                          ? CUBLAS_COMPUTE_64F
                                      : g.dt != LDType::F32                        ? CUBLAS_COMPUTE_32F
                                      : g.math == kLtMathTf32                      ? CUBLAS_COMPUTE_32F_FAST_TF32
                                      : g.math == kLtMathBf16                      ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                                   : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale = g.dt == LDType::F64 ? CUDA_R_64F : CUDA_R_32F;
  lt_check(api, api.desc_create(&p.desc, compute, scale), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = g.transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  const cublasLtEpilogue_t epi = static_cast<cublasLtEpilogue_t>(g.epi);
  lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
  // The heuristic reads the pointers' values for their alignment: give it this call's.
  if (uses_bias(g.epi))
    lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)), "set BIAS_POINTER");
  if (uses_aux(g.epi)) {
    lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)),
             "set AUX_POINTER");
    lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.aux_ld, sizeof(g.aux_ld)),
             "set AUX_LD");
  }
  // Stored shapes (before op): A is (transa ? k x m : m x k), B is (transb ? n x k : k x n).
  lt_check(api, api.layout_create(&p.a, t, g.transa ? g.k : g.m, g.transa ? g.m : g.k, g.lda), "layout A");
  lt_check(api, api.layout_create(&p.b, t, g.transb ? g.n : g.k, g.transb ? g.k : g.n, g.ldb), "layout B");
  lt_check(api, api.layout_create(&p.d, t, g.m, g.n, g.ldd), "layout D");
  lt_check(api, api.pref_create(&guard.pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  lt_check(api, api.pref_set(guard.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
           "set MAX_WORKSPACE");
  const cublasLtMatmulPreferenceAttributes_t attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  const int64_t which[4] = {align[0], align[1], align[2], align[2]};
  for (int i = 0; i < 4; ++i) {
    const uint32_t v = static_cast<uint32_t>(which[i]);
    lt_check(api, api.pref_set(guard.pref, attrs[i], &v, sizeof(v)), "set MIN_ALIGNMENT");
  }
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st = api.heuristic(handle, p.desc, p.a, p.b, p.d, p.d, guard.pref, 1, &res, &found);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
    p.ok = true;
    p.algo = res.algo;
    p.ws = res.workspaceSize;
    *out = guard.release();
    return PlanStatus::kOk;
  }
  if (st == CUBLAS_STATUS_SUCCESS || st == CUBLAS_STATUS_NOT_SUPPORTED) return PlanStatus::kUnsupported;
  if (st == CUBLAS_STATUS_INVALID_VALUE) {
    static bool logged = false;  // under lt_mutex
    if (!logged) {
      logged = true;
      std::fprintf(stderr,
                   "fastnn: cuBLASLt rejected a matmul description (%s; m=%lld n=%lld k=%lld epilogue=%u); "
                   "using fastnn's own epilogue kernels for it (logged once)\n",
                   status_text(api, st).c_str(), static_cast<long long>(g.m), static_cast<long long>(g.n),
                   static_cast<long long>(g.k), g.epi);
    }
    return PlanStatus::kInvalid;
  }
  lt_check(api, st, "cublasLtMatmulAlgoGetHeuristic");
  return PlanStatus::kInvalid;  // not reached
}

// The device's handle and this stream's workspace, created on first use (caller holds lt_mutex).
// The workspace comes first: a handle without one would leave later calls with a null workspace.
void* prepare_device(const LtApi& api, DeviceLt& dev, uintptr_t stream) {
  auto it = dev.workspace.find(stream);
  if (it == dev.workspace.end()) {
    void* ws = device_malloc(kWorkspaceBytes);
    it = dev.workspace.emplace(stream, ws).first;
  }
  if (dev.handle == nullptr) {
    cublasLtHandle_t h = nullptr;
    lt_check(api, api.create(&h), "cublasLtCreate");
    dev.handle = h;
  }
  return it->second;
}

[[noreturn]] void no_algorithm(const GemmCall& g) {
  throw std::runtime_error("cuBLASLt has no matmul algorithm for (m, n, k) = (" + std::to_string(g.m) + ", " +
                           std::to_string(g.n) + ", " + std::to_string(g.k) + ") of this dtype");
}

}  // namespace

bool gemm(const GemmCall& g) {
  const auto stream = reinterpret_cast<cudaStream_t>(g.stream);
  if (g.m <= 0 || g.n <= 0 || g.k <= 0) {
    if (g.epi != kEpiDefault) return false;
    if (g.m > 0 && g.n > 0)  // k == 0: D = 0
      FASTNN_CUDA_CHECK(cudaMemsetAsync(g.D, 0, static_cast<size_t>(g.m * g.n) * (g.dt == LDType::F64 ? 8 : g.dt == LDType::F32 ? 4 : 2), stream));
    return true;
  }
  const LtApi& api = lt_checked();
  const int device = get_device();
  const int64_t align[5] = {alignment(g.A, 256), alignment(g.B, 256), alignment(g.D, 256),
                            uses_bias(g.epi) ? alignment(g.bias, 256) : 0, uses_aux(g.epi) ? alignment(g.aux, 256) : 0};
  const PlanKey key = {device, static_cast<int64_t>(g.dt), g.transa, g.transb, g.m, g.n, g.k, g.lda, g.ldb, g.ldd,
                       static_cast<int64_t>(g.epi), g.dt == LDType::F32 ? g.math : 0, align[0], align[1], align[2],
                       align[3], align[4], uses_aux(g.epi) ? g.aux_ld : 0, 0};
  std::lock_guard<std::mutex> lock(lt_mutex());
  DeviceLt& dev = device_lt()[device];
  void* workspace = prepare_device(api, dev, g.stream);
  auto it = plans().find(key);
  if (it == plans().end()) {
    Plan p;
    const PlanStatus st = make_plan(api, dev.handle, g, align, &p);
    if (st == PlanStatus::kInvalid) {
      if (g.epi == kEpiDefault) no_algorithm(g);
      return false;
    }
    it = plans().emplace(key, p).first;
  }
  Plan& p = it->second;
  if (!p.ok) {
    if (g.epi == kEpiDefault) no_algorithm(g);
    return false;
  }
  // This call's pointers (same alignment as the plan's, by the key).
  if (uses_bias(g.epi))
    lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)), "set BIAS_POINTER");
  if (uses_aux(g.epi))
    lt_check(api, api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)),
             "set AUX_POINTER");
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const bool f64 = g.dt == LDType::F64;
  const void* alpha = f64 ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f);
  const void* beta = f64 ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f);
  lt_check(api,
           api.matmul(dev.handle, p.desc, alpha, g.A, p.a, g.B, p.b, beta, g.D, p.d, g.D, p.d, &p.algo, workspace, p.ws,
                      stream),
           "cublasLtMatmul");
  return true;
}

void require_cublaslt() { lt_checked(); }

void release_stream(uintptr_t stream) {
  std::lock_guard<std::mutex> lock(lt_mutex());
  for (auto& [device, dev] : device_lt()) {
    const auto it = dev.workspace.find(stream);
    if (it == dev.workspace.end()) continue;
    device_free(it->second);
    dev.workspace.erase(it);
  }
}

std::string cublaslt_load(const std::vector<std::string>& candidate_dirs) {
  LoaderState& s = loader();
  std::lock_guard<std::mutex> lock(s.mu);
  s.dirs = candidate_dirs;
  const LtApi* a = try_load(s);
  if (a == nullptr) throw std::runtime_error(s.last_error);
  return a->path;
}

std::string cublaslt_location() {
  LoaderState& s = loader();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.api != nullptr ? s.api->path : std::string();
}

bool cublaslt_compiled() { return true; }

std::string cublaslt_load_error() {
  LoaderState& s = loader();
  std::lock_guard<std::mutex> lock(s.mu);
  return try_load(s) != nullptr ? std::string() : s.last_error;
}

#else  // !FASTNN_HAVE_CUBLASLT

namespace {
[[noreturn]] void no_cublaslt() {
  throw std::runtime_error(
      "fastnn was built without cuBLASLt, which GPU linear layers and matmul need: " + install_hint() +
      ", then rebuild fastnn with CUDA (pip install --no-build-isolation -Ccmake.define.FASTNN_CUDA=ON .)");
}
}  // namespace

bool gemm(const GemmCall&) { no_cublaslt(); }
void require_cublaslt() { no_cublaslt(); }
void release_stream(uintptr_t) {}
std::string cublaslt_load(const std::vector<std::string>&) { no_cublaslt(); }
std::string cublaslt_location() { return ""; }
bool cublaslt_compiled() { return false; }
std::string cublaslt_load_error() { return "fastnn was built without cuBLASLt"; }

#endif  // FASTNN_HAVE_CUBLASLT

}  // namespace cuda
}  // namespace fastnn
