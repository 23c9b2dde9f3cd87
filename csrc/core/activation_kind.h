// The one activation numbering of fastnn: the CPU activation kernels, the CPU GEMM epilogue, the
// CUDA elementwise kernels and the cuBLASLt linear epilogue all take these ids, and the Python side
// mirrors them (fastnn.checks.ACTIVATION_IDS, checked against _C.ACTIVATION_IDS by a test).
// SELU is kElu with the SELU alpha and scale; "none" (no activation) is kIdentity.
#pragma once

namespace fastnn {

enum ActKind : int {
  kActIdentity = 0,
  kActSigmoid = 1,
  kActTanh = 2,
  kActRelu = 3,
  kActLeakyRelu = 4,
  kActElu = 5,
  kActPrelu = 6,
  kActCount = 7,
};

}  // namespace fastnn
