// The training losses' reductions, shared by the loss bindings (_C.softmax_xent, _C.squared_error)
// and the chain's training steps (LinearChain.train_steps): the kernels of csrc/cpu/loss.h over
// fixed row / element blocks on the pool, the partial losses added in block order in double, so
// the loss is bit-identical for any thread count and either caller. Call with the GIL released.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/parallel.h"
#include "cpu/kernels.h"

namespace fastnn {

// Mean softmax cross-entropy of M rows of C logits x; grad (may be null) = (softmax - target) / M.
// target: int64 or int32 labels (kind 0 / 1, already checked to lie in [0, C)) or soft targets of
// x's type, (M, C) (kind 2).
template <class T>
double softmax_xent_mean(int kind, const T* x, const void* target, T* grad, int64_t M, int64_t C) {
  const auto& k = loss_kernels_for<T>();
  std::vector<double> row_loss(static_cast<size_t>(M));
  const double scale = 1.0 / static_cast<double>(M);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / C);
  parallel_for(M, grain, 1, [&](int64_t b, int64_t e) {
    T* g = grad ? grad + b * C : nullptr;
    double* l = row_loss.data() + b;
    if (kind == 0) k.xent_i64(x + b * C, static_cast<const int64_t*>(target) + b, g, l, e - b, C, scale);
    else if (kind == 1) k.xent_i32(x + b * C, static_cast<const int32_t*>(target) + b, g, l, e - b, C, scale);
    else k.xent_soft(x + b * C, static_cast<const T*>(target) + b * C, g, l, e - b, C, scale);
  });
  double total = 0.0;
  for (double v : row_loss) total += v;
  return total * scale;
}

// sum((p - t)^2) over n elements in double; grad (may be null) = scale * (p - t).
template <class T>
double squared_error_sum(const T* p, const T* t, T* grad, int64_t n, double scale) {
  const auto fn = loss_kernels_for<T>().squared_error;
  const int64_t nblocks = (n + kGrainElements - 1) / kGrainElements;
  std::vector<double> partial(static_cast<size_t>(nblocks), 0.0);
  parallel_for(nblocks, 1, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t o = blk * kGrainElements, len = std::min(kGrainElements, n - o);
      partial[blk] = fn(p + o, t + o, grad ? grad + o : nullptr, len, scale);
    }
  });
  double total = 0.0;
  for (double v : partial) total += v;
  return total;
}

}  // namespace fastnn
