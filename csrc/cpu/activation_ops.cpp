// The activation family over the pool (see activation_ops.h). Compiled once: it calls the
// dispatched per-ISA kernels.
#include "cpu/activation_ops.h"

#include <algorithm>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "cpu/kernels.h"

namespace fastnn {
namespace cpu {

namespace {

constexpr int64_t kAlign = 64;  // chunk starts: a cache line for both float and double

// Streaming stores pay off once the arrays a call touches no longer fit in the last-level cache.
bool use_stream(int64_t n, size_t elem_bytes, int arrays) {
  return static_cast<long long>(n) * static_cast<long long>(elem_bytes) * arrays > llc_bytes();
}

}  // namespace

template <class T>
void act_forward(int op, const T* x, T* y, int64_t n, ActParams p) {
  p.stream = use_stream(n, sizeof(T), 2);
  auto fn = activation_kernels_for<T>().forward[op];
  parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(x + b, y + b, e - b, p); });
}

template <class T>
void act_backward(int op, const T* g, const T* x, T* gx, int64_t n, ActParams p) {
  p.stream = use_stream(n, sizeof(T), 3);
  auto fn = activation_kernels_for<T>().backward[op];
  parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(g + b, x + b, gx + b, e - b, p); });
}

template <class T>
void parallel_copy(const T* src, T* dst, int64_t n) {
  ActParams p;
  p.stream = use_stream(n, sizeof(T), 2);
  const auto fn = activation_kernels_for<T>().copy;
  parallel_for(n, kGrainElements, kAlign, [&](int64_t b, int64_t e) { fn(src + b, dst + b, e - b, p); });
}

template <class T>
void prelu_forward(const T* x, const std::vector<T>& w, T* y, PreluShape s) {
  if (s.outer == 0 || s.C == 0 || s.inner == 0) return;
  const auto& k = activation_kernels_for<T>();
  const bool stream = use_stream(s.outer * s.C * s.inner, sizeof(T), 2);
  if (s.inner == 1) {  // (rows, C): the weight runs along the contiguous axis
    std::vector<T> wext(static_cast<size_t>(s.C + kPreluWeightPad));
    for (size_t j = 0; j < wext.size(); ++j) wext[j] = w[j % static_cast<size_t>(s.C)];
    parallel_for(s.outer * s.C, kGrainElements, kAlign, [&](int64_t b, int64_t e) {
      k.prelu_last_forward(x + b, wext.data(), y + b, e - b, s.C, b % s.C, stream);
    });
    return;
  }
  // (outer*C rows of `inner` elements): each row is a leaky ReLU with slope w[c].
  const int64_t rows = s.outer * s.C;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / s.inner);
  parallel_for(rows, grain, 1, [&](int64_t b, int64_t e) {
    ActParams p;
    p.stream = stream;
    for (int64_t r = b; r < e; ++r) {
      p.slope = static_cast<double>(w[r % s.C]);
      k.forward[kActLeakyRelu](x + r * s.inner, y + r * s.inner, s.inner, p);
    }
  });
}

// The weight gradient is reduced over fixed blocks whose bounds depend only on the shape, then
// summed in block order: bit-identical for any thread count.
template <class T>
void prelu_backward(const T* g, const T* x, const std::vector<T>& w, T* gx, T* gw, bool shared_w,
                         PreluShape s) {
  if (s.outer == 0 || s.C == 0 || s.inner == 0) {
    for (int64_t c = 0; c < (shared_w ? 1 : s.C); ++c) gw[c] = T(0);
    return;
  }
  const auto& k = activation_kernels_for<T>();
  const bool stream = use_stream(s.outer * s.C * s.inner, sizeof(T), 3);
  std::vector<double> acc(static_cast<size_t>(s.C), 0.0);
  if (s.inner == 1) {
    // At most 64 blocks (bounded scratch), each at least a grain's worth of rows.
    int64_t rows_per_block = std::max<int64_t>(1, kGrainElements / s.C);
    int64_t nblocks = std::min<int64_t>((s.outer + rows_per_block - 1) / rows_per_block, 64);
    if (nblocks > 0) {
      rows_per_block = (s.outer + nblocks - 1) / nblocks;
      nblocks = (s.outer + rows_per_block - 1) / rows_per_block;
    }
    std::vector<double> partial(static_cast<size_t>(nblocks * s.C), 0.0);
    parallel_for(nblocks, 1, 1, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t r0 = blk * rows_per_block, r1 = std::min(s.outer, r0 + rows_per_block);
        k.prelu_last_backward(g + r0 * s.C, x + r0 * s.C, w.data(), gx + r0 * s.C, partial.data() + blk * s.C,
                              r1 - r0, s.C, stream);
      }
    });
    for (int64_t blk = 0; blk < nblocks; ++blk)
      for (int64_t c = 0; c < s.C; ++c) acc[c] += partial[blk * s.C + c];
  } else {
    const int64_t rows = s.outer * s.C;
    std::vector<double> row_sums(static_cast<size_t>(rows), 0.0);
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.inner);
    parallel_for(rows, grain, 1, [&](int64_t b, int64_t e) {
      ActParams p;
      p.stream = stream;
      for (int64_t r = b; r < e; ++r) {
        p.slope = static_cast<double>(w[r % s.C]);
        const int64_t o = r * s.inner;
        k.backward[kActLeakyRelu](g + o, x + o, gx + o, s.inner, p);
        row_sums[r] = k.prelu_row_wsum(g + o, x + o, s.inner);
      }
    });
    for (int64_t r = 0; r < rows; ++r) acc[r % s.C] += row_sums[r];
  }
  if (shared_w) {
    double total = 0.0;
    for (double v : acc) total += v;
    gw[0] = static_cast<T>(total);
  } else {
    for (int64_t c = 0; c < s.C; ++c) gw[c] = static_cast<T>(acc[c]);
  }
}

#define FASTNN_INSTANTIATE(T)                                                                           \
  template void act_forward<T>(int, const T*, T*, int64_t, ActParams);                                \
  template void act_backward<T>(int, const T*, const T*, T*, int64_t, ActParams);                     \
  template void parallel_copy<T>(const T*, T*, int64_t);                                               \
  template void prelu_forward<T>(const T*, const std::vector<T>&, T*, PreluShape);                     \
  template void prelu_backward<T>(const T*, const T*, const std::vector<T>&, T*, T*, bool, PreluShape);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace cpu
}  // namespace fastnn
