#include "cpu/train.h"

#include <cstring>

#include "core/parallel.h"

namespace fastnn {

namespace {

constexpr int64_t kAhead = 2;           // rows prefetched ahead of the one being copied
constexpr int64_t kGrainBytes = 32768;  // at least this much copying per pool chunk

inline void prefetch_row(const uint8_t* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

}  // namespace

template <typename I>
void gather_rows(const uint8_t* src, int64_t row_bytes, const I* idx, int64_t m, uint8_t* dst) {
  if (m <= 0 || row_bytes <= 0) return;
  const int64_t grain = row_bytes >= kGrainBytes ? 1 : kGrainBytes / row_bytes;
  parallel_for(m, grain, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e && i < b + kAhead; ++i)
      prefetch_row(src + static_cast<int64_t>(idx[i]) * row_bytes, row_bytes);
    for (int64_t i = b; i < e; ++i) {
      if (i + kAhead < e) prefetch_row(src + static_cast<int64_t>(idx[i + kAhead]) * row_bytes, row_bytes);
      std::memcpy(dst + i * row_bytes, src + static_cast<int64_t>(idx[i]) * row_bytes,
                  static_cast<size_t>(row_bytes));
    }
  });
}

template void gather_rows<int64_t>(const uint8_t*, int64_t, const int64_t*, int64_t, uint8_t*);
template void gather_rows<int32_t>(const uint8_t*, int64_t, const int32_t*, int64_t, uint8_t*);

}  // namespace fastnn
