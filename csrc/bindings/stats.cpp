// pybind11 glue for the column-statistics family (csrc/cpu/stats.h): checks, GIL release, and the
// threading: rows are cut into fixed groups of kGroupRows whose statistics are merged in group
// order, so every result is bit-identical for any thread count.
#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "core/cpu_features.h"
#include "cpu/kernels.h"
#include "core/parallel.h"

namespace fastnn {

namespace {

constexpr int64_t kGroupRows = 16 * kStatsBlockRows;  // 1024 rows: the unit of work and of merging

// A 2-D array whose rows are contiguous (any row stride that is a whole number of elements).
int64_t row_stride(const py::array& a, const char* name) {
  if (a.ndim() != 2) throw py::value_error(std::string(name) + ": expected a 2-D array, got shape " + shape_str(a));
  const auto item = static_cast<int64_t>(a.itemsize());
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || a.strides(0) % item ||
      (a.shape(1) > 1 && a.strides(1) != item))
    throw py::value_error(std::string(name) + ": expected contiguous rows (column stride 1 element), aligned data");
  return a.shape(0) > 1 ? a.strides(0) / item : a.shape(1);
}

void require_vector(const py::array& v, const char* name, const py::array& like, int64_t d) {
  if (!like.dtype().equal(v.dtype()))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_str(like) + " like x, got " + dtype_str(v));
  if (v.ndim() != 1 || v.shape(0) != d)
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(d) + ",), got " + shape_str(v));
  require_c_contiguous(v, name);
}

bool use_stream(int64_t n, size_t elem_bytes) {
  return static_cast<long long>(n) * static_cast<long long>(elem_bytes) * 2 > llc_bytes();
}

int64_t row_grain(int64_t d) { return d > 0 && kGrainElements / d > 1 ? kGrainElements / d : 1; }

// x and out of the per-column elementwise passes: 2-D, contiguous rows, same dtype and shape,
// out writeable (it may be x); their row strides in elements.
DType check_x_out(const py::array& x, const py::array& out, int64_t* ldx, int64_t* ldy) {
  const DType dt = float_dtype(x, "x");
  *ldx = row_stride(x, "x");
  if (!x.dtype().equal(out.dtype()))
    throw py::type_error("out: expected dtype " + dtype_str(x) + " like x, got " + dtype_str(out));
  *ldy = row_stride(out, "out");
  if (out.shape(0) != x.shape(0) || out.shape(1) != x.shape(1))
    throw py::value_error("out: expected shape " + shape_str(x) + ", got " + shape_str(out));
  require_writeable(out, "out");
  return dt;
}

}  // namespace

void register_stats(py::module_& m) {
  m.def(
      "col_stats",
      [](py::array x) {
        DType dt = float_dtype(x, "x");
        const int64_t ldx = row_stride(x, "x");
        const int64_t n = x.shape(0), d = x.shape(1);
        py::array_t<double> mean(d), m2(d);
        if (n == 0) throw py::value_error("x: expected at least 1 row, got 0");
        const int64_t groups = (n + kGroupRows - 1) / kGroupRows;
        std::vector<double> gmean(static_cast<size_t>(groups * d)), gm2(static_cast<size_t>(groups * d));
        double* mo = mean.mutable_data();
        double* m2o = m2.mutable_data();
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            const auto fn = stats_kernels_for<T>().col_stats;
            const T* xp = cptr<T>(x);
            const int64_t grain = kGroupRows * d >= kGrainElements ? 1 : kGrainElements / (kGroupRows * d > 0 ? kGroupRows * d : 1);
            parallel_for(groups, grain, 1, [&](int64_t b, int64_t e) {
              for (int64_t g = b; g < e; ++g) {
                const int64_t r0 = g * kGroupRows, rows = n - r0 < kGroupRows ? n - r0 : kGroupRows;
                fn(xp + r0 * ldx, rows, d, ldx, xp, gmean.data() + g * d, gm2.data() + g * d);
              }
            });
          });
          // Chan's merge of the groups, in group order (every group but the last is full).
          for (int64_t j = 0; j < d; ++j) {
            mo[j] = gmean[j];
            m2o[j] = gm2[j];
          }
          for (int64_t g = 1; g < groups; ++g) {
            const double na = static_cast<double>(g * kGroupRows);
            const double nb = static_cast<double>(n - g * kGroupRows < kGroupRows ? n - g * kGroupRows : kGroupRows);
            const double nt = na + nb;
            const double* bm = gmean.data() + g * d;
            const double* b2 = gm2.data() + g * d;
            for (int64_t j = 0; j < d; ++j) {
              const double delta = bm[j] - mo[j];
              mo[j] += delta * (nb / nt);
              m2o[j] += b2[j] + delta * delta * (na * nb / nt);
            }
          }
          // offsets from row 0 back to means
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            const T* xp = cptr<T>(x);
            for (int64_t j = 0; j < d; ++j) mo[j] += static_cast<double>(xp[j]);
          });
        }
        return py::make_tuple(mean, m2);
      },
      py::arg("x"),
      "(mean, m2) of the columns of a 2-D float32/float64 x (n >= 1 rows, contiguous rows), both float64 "
      "(d,): m2[j] = sum_i (x[i,j] - mean[j])^2. One pass; shifted sums per 64-row block merged with "
      "Chan's formula in double, in a fixed order (bit-identical for any thread count). A NaN or inf in "
      "a column makes its mean or m2 non-finite.");

  m.def(
      "center_scale",
      [](py::array x, py::array out, py::array shift, py::array mul) {
        int64_t ldx, ldy;
        const DType dt = check_x_out(x, out, &ldx, &ldy);
        const int64_t n = x.shape(0), d = x.shape(1);
        require_vector(shift, "shift", x, d);
        require_vector(mul, "mul", x, d);
        std::atomic<bool> bad{false};
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const auto fn = stats_kernels_for<T>().center_scale;
          const T* xp = cptr<T>(x);
          T* yp = mptr<T>(out);
          const T *sp = cptr<T>(shift), *mp = cptr<T>(mul);
          const bool stream = ldy == d && use_stream(n * d, sizeof(T));
          parallel_for(n, row_grain(d), 1, [&](int64_t b, int64_t e) {
            if (fn(xp + b * ldx, ldx, yp + b * ldy, ldy, e - b, d, sp, mp, stream)) bad.store(true);
          });
        });
        return bad.load();
      },
      py::arg("x"), py::arg("out"), py::arg("shift"), py::arg("mul"),
      "out = (x - shift) * mul per column (x, out 2-D with contiguous rows; shift, mul (d,) of x's dtype); "
      "out may be x. Returns True when x held a NaN or inf. Threads over rows; GIL released.");

  m.def(
      "scale_shift",
      [](py::array x, py::array out, py::array mul, py::array add) {
        int64_t ldx, ldy;
        const DType dt = check_x_out(x, out, &ldx, &ldy);
        const int64_t n = x.shape(0), d = x.shape(1);
        require_vector(mul, "mul", x, d);
        require_vector(add, "add", x, d);
        py::gil_scoped_release nogil;
        dispatch_float(dt, [&](auto zero) {
          using T = decltype(zero);
          const auto fn = stats_kernels_for<T>().scale_shift;
          const T* xp = cptr<T>(x);
          T* yp = mptr<T>(out);
          const T *mp = cptr<T>(mul), *ap = cptr<T>(add);
          const bool stream = ldy == d && use_stream(n * d, sizeof(T));
          parallel_for(n, row_grain(d), 1, [&](int64_t b, int64_t e) {
            fn(xp + b * ldx, ldx, yp + b * ldy, ldy, e - b, d, mp, ap, stream);
          });
        });
      },
      py::arg("x"), py::arg("out"), py::arg("mul"), py::arg("add"),
      "out = x * mul + add per column (one FMA; the inverse of center_scale); out may be x.");

  m.def(
      "first_nonfinite",
      [](py::array x) -> py::object {
        DType dt = float_dtype(x, "x");
        const int64_t ldx = row_stride(x, "x");
        const int64_t n = x.shape(0), d = x.shape(1);
        std::atomic<int64_t> first{n};
        int64_t col = -1;
        {
          py::gil_scoped_release nogil;
          dispatch_float(dt, [&](auto zero) {
            using T = decltype(zero);
            const auto fn = stats_kernels_for<T>().first_nonfinite_row;
            const T* xp = cptr<T>(x);
            parallel_for(n, row_grain(d), 1, [&](int64_t b, int64_t e) {
              const int64_t r = fn(xp + b * ldx, e - b, d, ldx);
              if (r < 0) return;
              int64_t cur = first.load();
              while (b + r < cur && !first.compare_exchange_weak(cur, b + r)) {
              }
            });
            const int64_t r = first.load();
            if (r < n)
              for (int64_t j = 0; j < d; ++j)
                if (!std::isfinite(static_cast<double>(xp[r * ldx + j]))) {
                  col = j;
                  break;
                }
          });
        }
        if (col < 0) return py::none();
        return py::make_tuple(first.load(), col);
      },
      py::arg("x"),
      "(row, column) of the first NaN or inf of a 2-D float array in row-major order, or None.");
}

}  // namespace fastnn
