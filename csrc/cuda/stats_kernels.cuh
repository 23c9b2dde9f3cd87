// Device code of csrc/cuda/stats.cu: column means and sums of squared deviations of a row-major
// (n, d) float32/float64 matrix, accumulated in float64. Plain C++ so that tests/cuda_emulation
// compiles it for the host and checks it against the CPU's _C.col_stats and a NumPy float64
// reference (tests/test_stats_cuda_emulated.py).
//
// Every value is taken as a deviation from the matrix's first row, v = x[i, j] - x[0, j] (in
// double): sums of v and v^2 are then plain additions across row chunks (one shift for all), and
// a large mean costs no accuracy (m2 = S2 - S1^2 / n loses only ~eps (1 + (mean - x0)^2 / var),
// x0 being a sample). Two kernels, no atomics, so the bits depend only on (n, d):
//   col_partial_kernel  grid (ceil(d / 32), chunks), 256 threads = 32 columns x 8 row lanes; lane
//                       r of a chunk takes rows r, r + 8, ...; the 8 lanes are added in order
//                       through shared memory; writes part[chunk] = (S1 (d,), S2 (d,))
//   col_finish_kernel   one thread per column adds the chunks in order, writes mean and m2
// A NaN or inf in a column makes its mean or m2 non-finite (the caller looks for it).
// Also the per-column affine maps of preprocessing (center_scale_kernel, scale_shift_kernel),
// with the CPU's roundings, and the array utilities of the cuda op table that answer with one
// scalar (first_nonfinite_kernel, argmax_count_kernel) or none (fill_kernel).
#pragma once

#include <cstdint>

#include "core/rounded.h"
#include "cuda/argmax.cuh"

namespace fastnn {
namespace cuda {
namespace stats_detail {

// (explicitly rounded arithmetic: core/rounded.h's, never contracted into FMAs)
using rn::add_rn;
using rn::div_rn;
using rn::fma_rn;
using rn::mul_rn;
using rn::sub_rn;

constexpr int kCols = 32;        // columns per block (one warp's lanes: coalesced row reads)
constexpr int kRowLanes = 8;     // threads per column in a block
constexpr int kThreads = kCols * kRowLanes;
constexpr int64_t kChunkRows = 1024;  // rows per block (grows when n / kChunkRows > 65535)

// x (n, d) with row stride ldx elements; part (chunks, 2, d) doubles; chunk c covers rows
// [c * chunk_rows, min(n, (c + 1) * chunk_rows)).
template <class T>
__global__ void __launch_bounds__(kThreads)
    col_partial_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t ldx, int64_t chunk_rows,
                       double* __restrict__ part) {
  __shared__ double s1s[kRowLanes][kCols];
  __shared__ double s2s[kRowLanes][kCols];
  const int lane = static_cast<int>(threadIdx.x % kCols);
  const int rl = static_cast<int>(threadIdx.x / kCols);
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + lane;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < n ? r0 + chunk_rows : n;
  double s1 = 0.0, s2 = 0.0;
  if (col < d) {
    const double shift = static_cast<double>(x[col]);
    for (int64_t r = r0 + rl; r < r1; r += kRowLanes) {
      const double v = sub_rn(static_cast<double>(x[r * ldx + col]), shift);
      s1 = add_rn(s1, v);
      s2 = fma_rn(v, v, s2);
    }
  }
  s1s[rl][lane] = s1;
  s2s[rl][lane] = s2;
  __syncthreads();
  if (rl == 0 && col < d) {
    double a = s1s[0][lane], b = s2s[0][lane];
    for (int k = 1; k < kRowLanes; ++k) {
      a = add_rn(a, s1s[k][lane]);
      b = add_rn(b, s2s[k][lane]);
    }
    double* p = part + static_cast<int64_t>(blockIdx.y) * 2 * d;
    p[col] = a;
    p[d + col] = b;
  }
}

// out (2, d): mean then m2 (sum of squared deviations, clamped at 0; NaN kept).
template <class T>
__global__ void __launch_bounds__(kThreads)
    col_finish_kernel(const T* __restrict__ x, const double* __restrict__ part, int64_t chunks, int64_t n, int64_t d,
                      double* __restrict__ out) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  double s1 = 0.0, s2 = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    s1 = add_rn(s1, part[c * 2 * d + col]);
    s2 = add_rn(s2, part[c * 2 * d + d + col]);
  }
  const double nn = static_cast<double>(n);
  const double shift = static_cast<double>(x[col]);
  out[col] = add_rn(shift, div_rn(s1, nn));
  const double m2 = sub_rn(s2, div_rn(mul_rn(s1, s1), nn));
  out[d + col] = m2 < 0.0 ? 0.0 : m2;
}

// y (n, d) = (x - shift) * mul per column, two roundings as the CPU's center_scale (bit for bit);
// x rows at stride ldx, y C-contiguous; *bad = 1 when x holds a NaN or inf (x * 0 != 0). One
// thread per element, grid-stride over n * d.
template <class T>
__global__ void __launch_bounds__(kThreads)
    center_scale_kernel(const T* __restrict__ x, int64_t ldx, T* __restrict__ y, int64_t n, int64_t d,
                        const T* __restrict__ shift, const T* __restrict__ mul, int* __restrict__ bad) {
  const int64_t total = n * d;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t r = e / d, j = e - r * d;
    const T v = x[r * ldx + j];
    if (!(mul_rn(v, T(0)) == T(0))) *bad = 1;  // (every writer stores the same value)
    y[e] = mul_rn(sub_rn(v, shift[j]), mul[j]);
  }
}

// y (n, d) = x * mul + add per column, one FMA as the CPU's scale_shift (bit for bit).
template <class T>
__global__ void __launch_bounds__(kThreads)
    scale_shift_kernel(const T* __restrict__ x, int64_t ldx, T* __restrict__ y, int64_t n, int64_t d,
                       const T* __restrict__ mul, const T* __restrict__ add) {
  const int64_t total = n * d;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t r = e / d, j = e - r * d;
    y[e] = fma_rn(x[r * ldx + j], mul[j], add[j]);
  }
}

// *first = max over the non-finite elements x[e] (NaN or +-inf) of n - e, so n - *first is the
// first one's flat index (row-major), and *first == 0 means every element is finite. *first must
// be 0 before the launch. Grid-stride: each thread's first hit is its smallest index, one atomic.
template <class T>
__global__ void __launch_bounds__(kThreads)
    first_nonfinite_kernel(const T* __restrict__ x, int64_t n, unsigned long long* first) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step) {
    if (!(mul_rn(x[e], T(0)) == T(0))) {  // x * 0 is NaN exactly for NaN and +-inf
      atomicMax(first, static_cast<unsigned long long>(n - e));
      return;
    }
  }
}

// *count += the rows r of logits (M, C), C >= 1, whose argmax (first maximum, NaN wins) equals
// the target: labels[r] (L int32_t or int64_t; a label outside [0, C) never matches) or, with
// soft != nullptr, the argmax of soft (M, C) of T. Grid-stride over rows; one atomic per thread
// (integer adds: exact in any order).
template <class T, class L>
__global__ void __launch_bounds__(kThreads)
    argmax_count_kernel(const T* __restrict__ logits, int64_t M, int64_t C, const L* __restrict__ labels,
                        const T* __restrict__ soft, unsigned long long* count) {
  unsigned long long hits = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < M; r += step) {
    const int64_t a = row_argmax(logits + r * C, C);
    const int64_t want = soft != nullptr ? row_argmax(soft + r * C, C) : static_cast<int64_t>(labels[r]);
    hits += a == want;
  }
  if (hits) atomicAdd(count, hits);
}

// p[0, n) = v: U is the element moved as bits (uint8_t .. uint64_t), so any dtype and any NaN
// payload is written as given. Grid-stride.
template <class U>
__global__ void __launch_bounds__(kThreads) fill_kernel(U* __restrict__ p, int64_t n, U v) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step) p[e] = v;
}

// Rows per chunk for n rows: kChunkRows, or more (a multiple of kRowLanes) so that the chunk
// count fits gridDim.y (65535).
inline int64_t chunk_rows_for(int64_t n) {
  int64_t rows = kChunkRows;
  const int64_t max_chunks = 65535;
  if ((n + rows - 1) / rows > max_chunks) {
    rows = (n + max_chunks - 1) / max_chunks;
    rows = (rows + kRowLanes - 1) / kRowLanes * kRowLanes;
  }
  return rows;
}

}  // namespace stats_detail
}  // namespace cuda
}  // namespace fastnn
