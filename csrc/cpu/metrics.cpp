#include "cpu/metrics.h"

#include <cmath>

namespace fastnn {

namespace {

template <typename T>
inline int64_t row_argmax(const T* r, int64_t c) {
  int64_t best = 0;
  T v = r[0];
  if (std::isnan(v)) return 0;
  for (int64_t j = 1; j < c; ++j) {
    const T x = r[j];
    if (std::isnan(x)) return j;
    if (x > v) {
      v = x;
      best = j;
    }
  }
  return best;
}

}  // namespace

template <typename T, typename L>
int64_t argmax_count_labels(const T* out, int64_t m, int64_t c, int64_t ldo, const L* labels) {
  if (c <= 0) return 0;
  int64_t hits = 0;
  for (int64_t i = 0; i < m; ++i) hits += row_argmax(out + i * ldo, c) == static_cast<int64_t>(labels[i]);
  return hits;
}

template <typename T>
int64_t argmax_count_soft(const T* out, int64_t m, int64_t c, int64_t ldo, const T* target, int64_t ldt) {
  if (c <= 0) return 0;
  int64_t hits = 0;
  for (int64_t i = 0; i < m; ++i) hits += row_argmax(out + i * ldo, c) == row_argmax(target + i * ldt, c);
  return hits;
}

template int64_t argmax_count_labels<float, int64_t>(const float*, int64_t, int64_t, int64_t, const int64_t*);
template int64_t argmax_count_labels<float, int32_t>(const float*, int64_t, int64_t, int64_t, const int32_t*);
template int64_t argmax_count_labels<double, int64_t>(const double*, int64_t, int64_t, int64_t, const int64_t*);
template int64_t argmax_count_labels<double, int32_t>(const double*, int64_t, int64_t, int64_t, const int32_t*);
template int64_t argmax_count_soft<float>(const float*, int64_t, int64_t, int64_t, const float*, int64_t);
template int64_t argmax_count_soft<double>(const double*, int64_t, int64_t, int64_t, const double*, int64_t);

}  // namespace fastnn
