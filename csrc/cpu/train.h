// The CPU twin of csrc/cuda/train.h's batch gather: a training step's batch rows copied from the
// data set by index (the epoch's permutation). Plain C++, not compiled per ISA: a row copy is
// memcpy's job; what matters is keeping enough rows in flight (the rows are far apart in a data
// set much larger than the caches, so each is a run of cache misses).
#pragma once

#include <cstdint>

namespace fastnn {

// dst row i (row_bytes bytes, rows contiguous) = src row idx[i] (rows contiguous, row_bytes
// apart) for i in [0, m). The indices are already checked (0 <= idx[i] < n). Threaded over rows
// on the pool; the next rows are prefetched while one is copied.
template <typename I>
void gather_rows(const uint8_t* src, int64_t row_bytes, const I* idx, int64_t m, uint8_t* dst);

}  // namespace fastnn
