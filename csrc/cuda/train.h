// The device ops of a graph-captured training step (SPEC12 ops 1-3), callable from plain C++
// (csrc/bindings/cuda_train.cpp). Every launch goes to the current stream (device.h's
// current_stream), is asynchronous, allocates nothing, copies nothing between host and device and
// waits for nothing, so it can be captured in a CUDA graph; values that change between replays
// (batch position, loss) are read from device memory by the kernel. Each throws
// std::runtime_error if its launch fails; arguments are checked by the bindings.
#pragma once

#include <cstdint>

namespace fastnn {
namespace cuda {

// dst (n_rows, row_elems) = src[idx[*pos + i], :] for i in [0, n_rows); src (n_src, row_elems);
// elements of elem_bytes (4: float32 / int32, 8: float64) moved as bits. idx: device int64
// (the epoch's permutation, at least *pos + n_rows entries); pos: device uint64. A row whose
// index is outside [0, n_src) is not read and is filled with fill_bits (the caller passes NaN's
// or -1's bits). Launches nothing when n_rows * row_elems == 0.
void gather_rows(int elem_bytes, const void* src, int64_t n_src, int64_t row_elems, const int64_t* idx,
                 const uint64_t* pos, int64_t n_rows, void* dst, uint64_t fill_bits);

// *counter += delta (mod 2^64) on a device uint64.
void counter_add(uint64_t* counter, uint64_t delta);

// One step's figures into sums (device float64[4]): sums[0] += loss * M, sums[1] += rows whose
// first argmax of logits (M, C) hits the target, sums[2] += M, sums[3] = 1 when loss is not
// finite (sticky). loss: the device float64 the loss ops write first. target_kind 0: labels (M,)
// int32; 1: soft targets (M, C) of the logits' dtype; 2: none (logits and target are not read).
void step_metrics(const float* logits, int64_t M, int64_t C, const void* target, int target_kind, const double* loss,
                  double* sums);
void step_metrics(const double* logits, int64_t M, int64_t C, const void* target, int target_kind,
                  const double* loss, double* sums);

}  // namespace cuda
}  // namespace fastnn
