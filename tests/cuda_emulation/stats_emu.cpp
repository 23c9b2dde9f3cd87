// csrc/cuda/stats_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// launch shapes of csrc/cuda/stats.cu. Loaded with ctypes by tests/test_stats_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <cstdint>
#include <vector>

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

}  // namespace

extern "C" {
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
