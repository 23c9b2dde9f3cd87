// Data-augmentation kernel family (csrc/cpu/augment.cpp, compiled once per ISA): one sample per
// call, so the binding threads over samples. Per-sample parameters (flip, crop box, jitter
// factors) are drawn by the caller from the Philox stream; the kernels only apply them, and every
// value they write is the same sequence of IEEE float32 operations on every ISA (augment.cpp is
// compiled with -ffp-contract=off and uses no FMA), so results are bit-identical across paths.
// Gaussian noise draws its own per-element words from csrc/core/philox.h.
#pragma once

#include <cstdint>

namespace fastnn {

// Geometry of one output sample, (C, OH, OW) from an input sample (C, H, W).
enum AugGeom : int32_t {
  // out[c, r, k] = in[c, top + r, left + k'] with k' = flip ? OW-1-k : k; top/left are in the
  // input's coordinates (negative or past the edge inside the padding): rows/columns outside
  // [0, H) x [0, W) are `fill` (pad constant) or mirrored without repeating the edge (pad reflect).
  kAugCrop = 0,
  // Bilinear resize (half-pixel centers, no antialias: torch's interpolate(align_corners=False))
  // of the box rows [top, top + bh), columns [left, left + bw) to (OH, OW), then the flip.
  kAugResize = 1,
};

enum AugPad : int32_t { kPadConstant = 0, kPadReflect = 1 };

// Color-jitter stages applied after the geometry, in this order, each clamped to [0, 1]
// (torchvision's _blend for float images).
enum AugJitter : int32_t { kJitBrightness = 1, kJitContrast = 2, kJitSaturation = 4 };

struct AugSample {
  int32_t flip;
  int32_t top, left;  // crop: the output's first row/column in input coordinates
  int32_t bh, bw;     // resize: the box size
  float brightness, contrast, saturation;  // factors, used per the jitter flags
};

struct AugShape {
  int64_t C, H, W, OH, OW;
  int32_t geom, pad_mode, jitter;
  float fill;
};

struct AugmentKernels {
  // One sample: x (C, H, W) -> y (C, OH, OW); y must not overlap x. `scratch`: at least
  // augment_scratch_bytes(s) bytes, 64-byte aligned, one per thread.
  void (*sample)(const float* x, float* y, const AugShape& s, const AugSample& p, void* scratch);
  // y[e] = x[e] + std * z_e for e in [0, n), z_e a standard normal from the words of stream
  // positions q0 + 2e and q0 + 2e + 1 (Box-Muller, see augment.cpp). y may be x.
  void (*gaussian_noise)(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, float std);
  // y[i] = lam * x[i] + (1 - lam) * xp[i] (lam1 = 1 - lam, rounded by the caller) over n elements.
  void (*mix)(const float* x, const float* xp, float* y, int64_t n, float lam, float lam1);
};

// Per-thread scratch of `sample`: the resize tables (two int32 and one float per output row and
// column) and a row of grayscale values, each rounded up to 64 bytes.
inline int64_t augment_scratch_bytes(const AugShape& s) {
  auto up = [](int64_t b) { return (b + 63) / 64 * 64; };
  return 3 * up(4 * s.OH) + 3 * up(4 * s.OW) + up(4 * 256) + 64;
}

namespace baseline { extern const AugmentKernels kAugmentKernels; }
namespace avx2 { extern const AugmentKernels kAugmentKernels; }
namespace avx512 { extern const AugmentKernels kAugmentKernels; }

}  // namespace fastnn
