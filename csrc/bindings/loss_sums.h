// The training losses' reductions, shared by the loss bindings (_C.softmax_xent, _C.squared_error,
// _C.mlp_head) and the chain's training steps (LinearChain.train_steps): the kernels of
// csrc/cpu/loss.h over fixed row / element blocks on the pool, the partial losses added in block
// order in double, so the loss is bit-identical for any thread count and either caller. Call with
// the GIL released.
#pragma once

#include <algorithm>
#include <cmath>
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

// scikit-learn's MLP output layer (mlp_head), per row in double: the output activation, the row's
// data loss and delta. Plain scalar code (M x C is one batch's logits): compiled once, not per ISA.
template <class T>
inline void mlp_head_rows(const T* z, const double* y, const double* sw, int kind, double sw_sum, T* delta, double* row_loss,
                   int64_t M, int64_t C) {
  constexpr double eps = 2.220446049250313e-16;  // float64's: the probabilities are float64
  auto clip = [](double p) { return p < eps ? eps : p > 1.0 - eps ? 1.0 - eps : p; };
  std::vector<double> p(static_cast<size_t>(C));
  for (int64_t i = 0; i < M; ++i) {
    const T* zr = z + i * C;
    const double* yr = y + i * C;
    if (kind == 2) {
      double mx = -INFINITY;
      for (int64_t j = 0; j < C; ++j) mx = std::max(mx, static_cast<double>(zr[j]));
      double s = 0.0;
      for (int64_t j = 0; j < C; ++j) s += (p[j] = std::exp(static_cast<double>(zr[j]) - mx));
      for (int64_t j = 0; j < C; ++j) p[j] /= s;
    } else if (kind == 1) {
      for (int64_t j = 0; j < C; ++j) p[j] = 0.5 * (1.0 + std::tanh(0.5 * static_cast<double>(zr[j])));
    } else {
      for (int64_t j = 0; j < C; ++j) p[j] = static_cast<double>(zr[j]);
    }
    double loss = 0.0;
    if (kind == 2) {
      double t = 0.0;
      for (int64_t j = 0; j < C; ++j) t += clip(p[j]) * yr[j];
      loss = -std::log(t);
    } else if (kind == 1) {
      for (int64_t j = 0; j < C; ++j) {
        const double q = clip(p[j]);
        loss -= yr[j] * std::log(q) + (1.0 - yr[j]) * std::log(1.0 - q);
      }
    } else {
      for (int64_t j = 0; j < C; ++j) loss += (yr[j] - p[j]) * (yr[j] - p[j]);
      loss = 0.5 * loss / static_cast<double>(C);
    }
    row_loss[i] = loss;
    const double f = sw ? sw[i] : 1.0;
    for (int64_t j = 0; j < C; ++j) {
      double d = p[j] - yr[j];
      if (sw) d *= f;
      delta[i * C + j] = static_cast<T>(d / sw_sum);
    }
  }
}

// The batch's data loss of mlp_head_rows: the rows' mean, weighted by sw (added in row order).
template <class T>
double mlp_head_loss(const T* z, const double* y, const double* sw, int kind, double sw_sum, T* delta, int64_t M,
                     int64_t C) {
  std::vector<double> row(static_cast<size_t>(M));
  mlp_head_rows(z, y, sw, kind, sw_sum, delta, row.data(), M, C);
  double total = 0.0, wsum = 0.0;
  for (int64_t i = 0; i < M; ++i) {
    const double w = sw ? sw[i] : 1.0;
    total += w * row[static_cast<size_t>(i)];
    wsum += w;
  }
  return total / wsum;
}

}  // namespace fastnn
