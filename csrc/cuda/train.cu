// Launchers of the training-step kernels (csrc/cuda/train_kernels.cuh holds the kernels and the
// reasons for their shapes). Gather: a grid-stride over rows, at most one full wave. Counter: one
// thread. Step metrics: one block (M x C is one batch; a single block keeps the integer hit count
// and the float64 update in one place, no atomics, no second launch).
#include "cuda/train.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "cuda/train_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace train_detail;

template <class U>
void gather_impl(const void* src, int64_t n_src, int64_t row_elems, const int64_t* idx, const uint64_t* pos,
                 int64_t n_rows, void* dst, U fill) {
  const int log2g = gather_log2g(row_elems);
  const int64_t per_block = int64_t{kThreads} >> log2g;
  auto kernel = gather_rows_kernel<U>;
  const int64_t blocks =
      std::max<int64_t>(1, std::min(launch::ceil_div(n_rows, per_block), launch::full_wave<kThreads>(kernel)));
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch::stream()>>>(
      static_cast<const U*>(src), n_src, row_elems, idx, pos, n_rows, static_cast<U*>(dst), fill, log2g);
  launch::check_launch("gather_rows kernel launch");
}

template <class T>
void metrics_impl(const T* logits, int64_t M, int64_t C, const void* target, int kind, const double* loss,
                  double* sums) {
  const cudaStream_t s = launch::stream();
  const int32_t* labels = static_cast<const int32_t*>(target);
  const T* soft = static_cast<const T*>(target);
  if (kind == kLabels) step_metrics_kernel<T, kLabels><<<1, kThreads, 0, s>>>(logits, M, C, labels, nullptr, loss, sums);
  else if (kind == kSoft) step_metrics_kernel<T, kSoft><<<1, kThreads, 0, s>>>(logits, M, C, nullptr, soft, loss, sums);
  else step_metrics_kernel<T, kNone><<<1, kThreads, 0, s>>>(nullptr, M, C, nullptr, nullptr, loss, sums);
  launch::check_launch("step_metrics kernel launch");
}

}  // namespace

void gather_rows(int elem_bytes, const void* src, int64_t n_src, int64_t row_elems, const int64_t* idx,
                 const uint64_t* pos, int64_t n_rows, void* dst, uint64_t fill_bits) {
  if (n_rows <= 0 || row_elems <= 0) return;
  if (elem_bytes == 4) gather_impl<uint32_t>(src, n_src, row_elems, idx, pos, n_rows, dst, static_cast<uint32_t>(fill_bits));
  else gather_impl<uint64_t>(src, n_src, row_elems, idx, pos, n_rows, dst, fill_bits);
}

void counter_add(uint64_t* counter, uint64_t delta) {
  counter_add_kernel<<<1, 1, 0, launch::stream()>>>(counter, delta);
  launch::check_launch("counter_add kernel launch");
}

void step_metrics(const float* logits, int64_t M, int64_t C, const void* target, int target_kind, const double* loss,
                  double* sums) {
  metrics_impl(logits, M, C, target, target_kind, loss, sums);
}
void step_metrics(const double* logits, int64_t M, int64_t C, const void* target, int target_kind,
                  const double* loss, double* sums) {
  metrics_impl(logits, M, C, target, target_kind, loss, sums);
}

}  // namespace cuda
}  // namespace fastnn
