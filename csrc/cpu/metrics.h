// Metrics a training loop reads once per step: how many rows' argmax hits the target. Plain C++
// (not compiled per ISA): M*C reads of a (batch, classes) tile are trivial next to the step's GEMMs.
#pragma once

#include <cstdint>

namespace fastnn {

// out is (m, c) with row stride ldo elements; labels is (m,) of class indices. Returns the
// number of rows whose argmax (first maximum; a NaN counts as the maximum, as NumPy's argmax)
// equals the label. A label outside [0, c) never matches.
template <typename T, typename L>
int64_t argmax_count_labels(const T* out, int64_t m, int64_t c, int64_t ldo, const L* labels);

// target is (m, c) soft targets (row stride ldt): a row counts when the argmax of out equals
// the argmax of target (the rule a one-hot or mixup target is scored by).
template <typename T>
int64_t argmax_count_soft(const T* out, int64_t m, int64_t c, int64_t ldo, const T* target, int64_t ldt);

}  // namespace fastnn
