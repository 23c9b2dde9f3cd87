// csrc/cuda/train_kernels.cuh (gather, counter, step metrics) and csrc/cuda/optim_kernels.cuh (the
// optimizer kernel, scalar and table mode) compiled for the host under tests/cuda_emulation/emu.h,
// with the launch shapes of csrc/cuda/train.cu and optim.cu. `blocks` stands for the device's full
// wave (a small value makes the grid-stride loops go round). Loaded with ctypes by
// tests/test_train_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <cstdint>

#include "cpu/optim.h"
#include "cuda/optim_kernels.cuh"
#include "cuda/train_kernels.cuh"

using namespace fastnn;
using namespace fastnn::cuda;

namespace {

template <class U>
void gather(const void* src, int64_t n_src, int64_t row_elems, const int64_t* idx, const uint64_t* pos,
            int64_t n_rows, void* dst, uint64_t fill, unsigned max_blocks) {
  using namespace train_detail;
  if (n_rows <= 0 || row_elems <= 0) return;
  const int log2g = gather_log2g(row_elems);
  const int64_t per_block = int64_t{kThreads} >> log2g;
  const int64_t need = (n_rows + per_block - 1) / per_block;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(need, max_blocks)));
  emu_launch(blocks, 1, kThreads, [&] {
    gather_rows_kernel<U>(static_cast<const U*>(src), n_src, row_elems, idx, pos, n_rows, static_cast<U*>(dst),
                          static_cast<U>(fill), log2g);
  });
}

template <class T>
void metrics(const T* logits, int64_t M, int64_t C, const void* target, int kind, const double* loss, double* sums) {
  using namespace train_detail;
  auto labels = static_cast<const int32_t*>(target);
  auto soft = static_cast<const T*>(target);
  if (kind == kLabels) emu_launch(1, 1, kThreads, [&] { step_metrics_kernel<T, kLabels>(logits, M, C, labels, nullptr, loss, sums); });
  else if (kind == kSoft) emu_launch(1, 1, kThreads, [&] { step_metrics_kernel<T, kSoft>(logits, M, C, nullptr, soft, loss, sums); });
  else emu_launch(1, 1, kThreads, [&] { step_metrics_kernel<T, kNone>(nullptr, M, C, nullptr, nullptr, loss, sums); });
}

// optim.cu's launch_update: the packet split of the used pointers, grid = min(work, blocks).
template <int NS, class T, class Op, class Rows>
void update(T* w, const T* g, T* s1, T* s2, int64_t n, const Op& op, const Rows& rows, unsigned max_blocks) {
  using optim_kernels::kThreads;
  if (n <= 0) return;
  const packed::Split s = packed::split_for<T>(n, {w, g, NS >= 1 ? s1 : nullptr, NS >= 2 ? s2 : nullptr});
  const int64_t work = s.nvec > 0 ? s.nvec : n;
  const unsigned blocks =
      static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, max_blocks)));
  emu_launch(blocks, 1, kThreads,
             [&] { optim_kernels::update_kernel<T, NS, Op, Rows>(w, g, s1, s2, n, s.head, s.nvec, op, rows); });
}

// table == nullptr: scalar mode with (lr, first) / (lr, step_size, bc2_sqrt) as given.
template <class T>
void sgd(T* w, const T* g, T* buf, int64_t n, double lr, double momentum, double dampening, double l2, double l1,
         int nesterov, int first, const double* table, const uint64_t* counter, unsigned max_blocks) {
  SgdArgs a;
  a.lr = lr, a.momentum = momentum, a.dampening = dampening, a.l2 = l2, a.l1 = l1;
  a.nesterov = nesterov != 0, a.first = first != 0;
  const auto op = optim_ops::make_sgd<T>(a);
  auto run = [&](const auto& rows) {
    if (op.mode == 0) update<0>(w, g, static_cast<T*>(nullptr), static_cast<T*>(nullptr), n, op, rows, max_blocks);
    else update<1>(w, g, buf, static_cast<T*>(nullptr), n, op, rows, max_blocks);
  };
  if (table) run(optim_ops::SgdTable{table, counter});
  else run(optim_ops::NoTable{});
}

template <class T>
void adam(T* w, const T* g, T* m, T* v, int64_t n, double lr, double beta1, double beta2, double eps, double l2,
          double l1, double decoupled, double step_size, double bc2_sqrt, const double* table,
          const uint64_t* counter, unsigned max_blocks) {
  AdamArgs a;
  a.lr = lr, a.beta1 = beta1, a.beta2 = beta2, a.eps = eps, a.l2 = l2, a.l1 = l1, a.decoupled = decoupled;
  a.step_size = step_size, a.bc2_sqrt = bc2_sqrt;
  const auto op = optim_ops::make_adam<T>(a);
  if (table) update<2>(w, g, m, v, n, op, optim_ops::AdamTable{table, counter, decoupled}, max_blocks);
  else update<2>(w, g, m, v, n, op, optim_ops::NoTable{}, max_blocks);
}

}  // namespace

extern "C" {
void emu_gather(int bytes, const void* src, int64_t n_src, int64_t row_elems, const int64_t* idx, const uint64_t* pos,
                int64_t n_rows, void* dst, uint64_t fill, unsigned max_blocks) {
  if (bytes == 4) gather<uint32_t>(src, n_src, row_elems, idx, pos, n_rows, dst, fill, max_blocks);
  else gather<uint64_t>(src, n_src, row_elems, idx, pos, n_rows, dst, fill, max_blocks);
}
void emu_counter_add(uint64_t* p, uint64_t delta) {
  emu_launch(1, 1, 1, [&] { train_detail::counter_add_kernel(p, delta); });
}
void emu_metrics32(const float* x, int64_t M, int64_t C, const void* t, int kind, const double* loss, double* sums) {
  metrics<float>(x, M, C, t, kind, loss, sums);
}
void emu_metrics64(const double* x, int64_t M, int64_t C, const void* t, int kind, const double* loss, double* sums) {
  metrics<double>(x, M, C, t, kind, loss, sums);
}
void emu_sgd32(float* w, const float* g, float* buf, int64_t n, double lr, double mom, double damp, double l2,
               double l1, int nesterov, int first, const double* table, const uint64_t* counter, unsigned blocks) {
  sgd<float>(w, g, buf, n, lr, mom, damp, l2, l1, nesterov, first, table, counter, blocks);
}
void emu_sgd64(double* w, const double* g, double* buf, int64_t n, double lr, double mom, double damp, double l2,
               double l1, int nesterov, int first, const double* table, const uint64_t* counter, unsigned blocks) {
  sgd<double>(w, g, buf, n, lr, mom, damp, l2, l1, nesterov, first, table, counter, blocks);
}
void emu_adam32(float* w, const float* g, float* m, float* v, int64_t n, double lr, double b1, double b2, double eps,
                double l2, double l1, double dec, double step_size, double bc2_sqrt, const double* table,
                const uint64_t* counter, unsigned blocks) {
  adam<float>(w, g, m, v, n, lr, b1, b2, eps, l2, l1, dec, step_size, bc2_sqrt, table, counter, blocks);
}
void emu_adam64(double* w, const double* g, double* m, double* v, int64_t n, double lr, double b1, double b2,
                double eps, double l2, double l1, double dec, double step_size, double bc2_sqrt, const double* table,
                const uint64_t* counter, unsigned blocks) {
  adam<double>(w, g, m, v, n, lr, b1, b2, eps, l2, l1, dec, step_size, bc2_sqrt, table, counter, blocks);
}
}
