// The column-statistics family (preprocessing): one table per ISA (csrc/cpu/stats.cpp compiled
// three times). Kernels are single-threaded over the rows they are given; csrc/bindings/stats.cpp
// splits the rows into fixed groups across the pool and merges the groups in a fixed order, so the
// results are bit-identical for any thread count.
//
// Every array is (rows, d) with its own row stride in elements (ldx, ldy); columns contiguous.
#pragma once

#include <cstdint>

namespace fastnn {

// Rows per block inside col_stats: each block's sums are taken from its own first row (the
// shifted-data algorithm), then the blocks are merged with Chan's formula in double.
constexpr int64_t kStatsBlockRows = 64;

// Per-column count/mean/M2 of x's `rows` rows, in double, the mean as an offset from `origin`
// (d values, e.g. the first row of the whole array): mean_off[j] = sum_i x[i,j] / rows - origin[j],
// m2[j] = sum_i (x[i,j] - mean)^2. Offsets keep the merge's mean differences small numbers with
// full relative precision (a mean of 1e4 held in double would cost ~1e-11 of a 1e-2 std). Within a block of kStatsBlockRows rows the deviations from
// the block's first row are taken and summed in T (exact differences when values are close, so a
// large mean costs no accuracy) and their squares summed in double (float32 squares underflow
// for a spread under ~1e-19 and overflow above ~1e19); the blocks are merged in order with Chan's formula in double.
// A NaN or inf anywhere in a column makes that column's mean or m2 non-finite.
template <class T>
using ColStatsFn = void (*)(const T* x, int64_t rows, int64_t d, int64_t ldx, const T* origin, double* mean_off,
                            double* m2);

// y[i,j] = (x[i,j] - shift[j]) * mul[j]. Returns true when some x was NaN or +-inf (the result
// is then non-finite there). `stream`: non-temporal stores (y contiguous, larger than the LLC).
template <class T>
using CenterScaleFn = bool (*)(const T* x, int64_t ldx, T* y, int64_t ldy, int64_t rows, int64_t d,
                               const T* shift, const T* mul, bool stream);

// y[i,j] = x[i,j] * mul[j] + add[j] (one FMA: the inverse of center_scale).
template <class T>
using ScaleShiftFn = void (*)(const T* x, int64_t ldx, T* y, int64_t ldy, int64_t rows, int64_t d,
                              const T* mul, const T* add, bool stream);

// The first row (in [0, rows)) holding a NaN or +-inf, or -1 when every value is finite.
template <class T>
using FirstNonfiniteRowFn = int64_t (*)(const T* x, int64_t rows, int64_t d, int64_t ldx);

template <class T>
struct StatsKernelsT {
  ColStatsFn<T> col_stats;
  CenterScaleFn<T> center_scale;
  ScaleShiftFn<T> scale_shift;
  FirstNonfiniteRowFn<T> first_nonfinite_row;
};

struct StatsKernels {
  StatsKernelsT<float> f32;
  StatsKernelsT<double> f64;
};

namespace baseline { extern const StatsKernels kStatsKernels; }
namespace avx2 { extern const StatsKernels kStatsKernels; }
namespace avx512 { extern const StatsKernels kStatsKernels; }

}  // namespace fastnn
