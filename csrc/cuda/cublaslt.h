// cuBLASLt for the GPU linear layers and matmul: finding libcublasLt at run time, and one GEMM call
// with its epilogue behind a per-shape plan cache. No cuBLASLt types here: csrc/bindings includes it.
//
// Lookup (first hit wins; nothing of the build machine is baked in):
//   1. FASTNN_CUBLASLT, the path of a libcublasLt file;
//   2. the soname already loaded in this process (PyTorch or CuPy opened it; dlopen RTLD_NOLOAD);
//   3. <folder>/<soname> for each candidate folder the caller passes (Python hands over the
//      nvidia/cu<major>/lib and nvidia/cublas/lib folders found on sys.path);
//   4. the bare soname (the system's loader path, LD_LIBRARY_PATH).
// A failed lookup is not remembered: the next call tries again (a wheel installed meanwhile works).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/linear.h"

namespace fastnn {
namespace cuda {

// Epilogue ids (cublasLtEpilogue_t values), spelled here so the no-cuBLASLt build compiles the same code.
enum Epi : uint32_t {
  kEpiDefault = 1, kEpiRelu = 2, kEpiReluAux = 130, kEpiBias = 4, kEpiReluBias = 6, kEpiReluAuxBias = 134,
  kEpiBgradB = 512,
};

// One column-major D (m x n, ld ldd) = op(A) @ op(B) with cuBLASLt's naming; see linear.cu for how
// the row-major products map onto it.
// The arithmetic of a float32 GEMM (fastnn.set_matmul_precision): "highest" float32, "high"
// TF32 tensor cores, "medium" bf16 tensor cores; float32 accumulation and scale in every case.
enum LtMath : int { kLtMathF32 = 0, kLtMathTf32 = 1, kLtMathBf16 = 2 };

struct GemmCall {
  LDType dt;
  bool transa, transb;
  int64_t m, n, k;
  const void* A;
  int64_t lda;
  const void* B;
  int64_t ldb;
  void* D;
  int64_t ldd;
  uint32_t epi = kEpiDefault;
  const void* bias = nullptr;  // BIAS*: input (m values); BGRADB: output (n values)
  void* aux = nullptr;         // RELU_AUX*: the bitmask
  int64_t aux_ld = 0;
  int math = kLtMathF32;        // float32 only (LtMath); float64 and bf16 ignore it
  uintptr_t stream = 0;        // cudaStream_t; 0 = legacy default
};

// Runs the GEMM with its epilogue on g.stream; false when cuBLASLt has no algorithm for that
// epilogue (CUBLAS_STATUS_NOT_SUPPORTED or none found: the caller then does the epilogue's work
// itself). DEFAULT with no algorithm is an error. Throws when libcublasLt cannot be loaded.
bool gemm(const GemmCall& g);

// Throws (with the install hint) unless cuBLASLt is compiled in and loads.
void require_cublaslt();

// Frees the workspaces GEMMs on `stream` used (one per device). stream_destroy calls it once the
// stream has finished its work: each Trainer.fit on a GPU makes a stream, and a 32 MiB workspace
// kept per stream handle for the life of the process added up over a search's fits.
void release_stream(uintptr_t stream);

// Sets the candidate folders (kept for later implicit loads), loads libcublasLt if not loaded yet and
// returns the file it came from; throws with every path tried when none loads.
std::string cublaslt_load(const std::vector<std::string>& candidate_dirs);
// Where libcublasLt was loaded from ("" while not loaded).
std::string cublaslt_location();
bool cublaslt_compiled();
// "" when libcublasLt loads (trying now with the known candidates), else why not.
std::string cublaslt_load_error();

}  // namespace cuda
}  // namespace fastnn
