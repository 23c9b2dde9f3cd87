// csrc/cuda/stats_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// launch shapes of csrc/cuda/stats.cu. Loaded with ctypes by tests/test_stats_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <atomic>
#include <cstdint>
#include <vector>

// The two 64-bit atomics of the array-utility kernels (CUDA's semantics: the old value returned).
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> r(*p);
  unsigned long long cur = r.load();
  while (cur < v && !r.compare_exchange_weak(cur, v)) {
  }
  return cur;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

#include "cuda/stats_kernels.cuh"

using namespace fastnn::cuda::stats_detail;

namespace {

// out (2, d): mean then m2, as fastnn::cuda::col_stats; chunk_rows 0: the launcher's choice.
template <class T>
void col_stats(const T* x, int64_t n, int64_t d, int64_t ldx, int64_t chunk_rows, double* out) {
  if (n <= 0 || d <= 0) return;
  const int64_t rows = chunk_rows > 0 ? chunk_rows : chunk_rows_for(n);
  const int64_t chunks = (n + rows - 1) / rows;
  std::vector<double> part(static_cast<size_t>(chunks * 2 * d));
  emu_launch(static_cast<unsigned>((d + kCols - 1) / kCols), static_cast<unsigned>(chunks), kThreads,
             [&] { col_partial_kernel<T>(x, n, d, ldx, rows, part.data()); });
  emu_launch(static_cast<unsigned>((d + kThreads - 1) / kThreads), 1, kThreads,
             [&] { col_finish_kernel<T>(x, part.data(), chunks, n, d, out); });
}

template <class T>
int center_scale(const T* x, int64_t ldx, T* y, int64_t n, int64_t d, const T* shift, const T* mul, unsigned grid) {
  int bad = 0;
  emu_launch(grid, 1, kThreads, [&] { center_scale_kernel<T>(x, ldx, y, n, d, shift, mul, &bad); });
  return bad;
}

template <class T>
void scale_shift(const T* x, int64_t ldx, T* y, int64_t n, int64_t d, const T* mul, const T* add, unsigned grid) {
  emu_launch(grid, 1, kThreads, [&] { scale_shift_kernel<T>(x, ldx, y, n, d, mul, add); });
}

// The launchers of csrc/cuda/stats.cu (zero the result, then one grid-stride launch of `grid` blocks).
template <class T>
uint64_t first_nonfinite(const T* x, int64_t n, unsigned grid) {
  unsigned long long first = 0;
  if (n > 0) emu_launch(grid, 1, kThreads, [&] { first_nonfinite_kernel<T>(x, n, &first); });
  return first;
}

template <class T>
uint64_t argmax_count(const T* logits, int64_t M, int64_t C, const void* labels, int label_bytes, const T* soft,
                      unsigned grid) {
  unsigned long long count = 0;
  if (M <= 0 || C <= 0) return 0;
  if (soft != nullptr || label_bytes == 8)
    emu_launch(grid, 1, kThreads, [&] {
      argmax_count_kernel<T, int64_t>(logits, M, C, static_cast<const int64_t*>(labels), soft, &count);
    });
  else
    emu_launch(grid, 1, kThreads, [&] {
      argmax_count_kernel<T, int32_t>(logits, M, C, static_cast<const int32_t*>(labels), nullptr, &count);
    });
  return count;
}

template <class U>
void fill(void* p, int64_t n, uint64_t bits, unsigned grid) {
  if (n > 0) emu_launch(grid, 1, kThreads, [&] { fill_kernel<U>(static_cast<U*>(p), n, static_cast<U>(bits)); });
}

}  // namespace

extern "C" {
uint64_t emu_first_nonfinite32(const float* x, int64_t n, unsigned grid) { return first_nonfinite<float>(x, n, grid); }
uint64_t emu_first_nonfinite64(const double* x, int64_t n, unsigned grid) {
  return first_nonfinite<double>(x, n, grid);
}
uint64_t emu_argmax_count32(const float* logits, int64_t M, int64_t C, const void* labels, int label_bytes,
                            const float* soft, unsigned grid) {
  return argmax_count<float>(logits, M, C, labels, label_bytes, soft, grid);
}
uint64_t emu_argmax_count64(const double* logits, int64_t M, int64_t C, const void* labels, int label_bytes,
                            const double* soft, unsigned grid) {
  return argmax_count<double>(logits, M, C, labels, label_bytes, soft, grid);
}
void emu_fill(void* p, int64_t n, int elem_bytes, uint64_t bits, unsigned grid) {
  switch (elem_bytes) {
    case 1: fill<uint8_t>(p, n, bits, grid); break;
    case 2: fill<uint16_t>(p, n, bits, grid); break;
    case 4: fill<uint32_t>(p, n, bits, grid); break;
    default: fill<uint64_t>(p, n, bits, grid); break;
  }
}
int emu_center_scale32(const float* x, int64_t ldx, float* y, int64_t n, int64_t d, const float* s, const float* m,
                       unsigned grid) {
  return center_scale<float>(x, ldx, y, n, d, s, m, grid);
}
int emu_center_scale64(const double* x, int64_t ldx, double* y, int64_t n, int64_t d, const double* s,
                       const double* m, unsigned grid) {
  return center_scale<double>(x, ldx, y, n, d, s, m, grid);
}
void emu_scale_shift32(const float* x, int64_t ldx, float* y, int64_t n, int64_t d, const float* m, const float* a,
                       unsigned grid) {
  scale_shift<float>(x, ldx, y, n, d, m, a, grid);
}
void emu_scale_shift64(const double* x, int64_t ldx, double* y, int64_t n, int64_t d, const double* m,
                       const double* a, unsigned grid) {
  scale_shift<double>(x, ldx, y, n, d, m, a, grid);
}
void emu_col_stats32(const float* x, int64_t n, int64_t d, int64_t ldx, int64_t chunk_rows, double* out) {
  col_stats<float>(x, n, d, ldx, chunk_rows, out);
}
void emu_col_stats64(const double* x, int64_t n, int64_t d, int64_t ldx, int64_t chunk_rows, double* out) {
  col_stats<double>(x, n, d, ldx, chunk_rows, out);
}
int64_t emu_chunk_rows_for(int64_t n) { return chunk_rows_for(n); }
}
