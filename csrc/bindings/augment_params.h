// The checks and parameter unpacking of the fused augmentation pass, shared by the CPU binding
// (csrc/bindings/augment.cpp: augment_batch) and the GPU one (csrc/bindings/cuda_augment.cpp:
// cuda_augment_batch): every index a kernel will touch is validated here, so _C stays safe to
// call directly on either device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "cpu/augment.h"

namespace fastnn {
namespace augment_args {

inline void require_shape(const py::array& a, const char* name, std::vector<int64_t> want) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = a.shape(static_cast<py::ssize_t>(i)) == want[i];
  if (!ok) {
    std::string w = "(", g = "(";
    for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
    for (py::ssize_t i = 0; i < a.ndim(); ++i) g += (i ? ", " : "") + std::to_string(a.shape(i));
    throw py::value_error(std::string(name) + ": expected shape " + w + "), got " + g + ")");
  }
}

inline void require_f32(const py::array& a, const char* name) {
  if (!a.dtype().equal(py::dtype::of<float>()))
    throw py::type_error(std::string(name) + ": expected float32, got " + dtype_str(a));
}

// The modes of a batch of N samples (C, H, W) -> (C, OH, OW).
inline AugShape checked_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int geom,
                              int pad_mode, double fill, int jitter) {
  if (N < 0 || C < 0 || H < 0 || W < 0 || OH < 0 || OW < 0)
    throw py::value_error("shape: dimensions must be >= 0");
  AugShape s{C, H, W, OH, OW, geom, pad_mode, jitter, static_cast<float>(fill)};
  if (geom != kAugCrop && geom != kAugResize) throw py::value_error("geom: expected 0 (crop) or 1 (resize)");
  if (pad_mode != kPadConstant && pad_mode != kPadReflect)
    throw py::value_error("pad_mode: expected 0 (constant) or 1 (reflect)");
  if (jitter < 0 || jitter > 7) throw py::value_error("jitter: expected flags in [0, 7]");
  if ((jitter & kJitSaturation) && s.C != 3)
    throw py::value_error("x: saturation needs 3 channels (RGB), got " + std::to_string(s.C));
  if ((jitter & kJitContrast) && s.C != 1 && s.C != 3)
    throw py::value_error("x: contrast needs 1 or 3 channels, got " + std::to_string(s.C));
  if (N > 0 && s.C * s.H * s.W > 0 && s.OH * s.OW > 0 && (s.H < 1 || s.W < 1))
    throw py::value_error("x: empty images");
  return s;
}

inline std::string sample_str(int64_t i) { return "sample " + std::to_string(i) + ": "; }

// The N samples' parameters from ints (N, 5) int32 rows (flip, top, left, box_h, box_w) and
// factors (N, 3) float32 rows (brightness, contrast, saturation; required with jitter flags),
// each checked against the shape: a resize box inside the image, a reflected index at most one
// reflection away (constant padding: any window).
inline std::vector<AugSample> checked_samples(const AugShape& s, int64_t N, const py::array& ints,
                                              const py::object& factors) {
  if (!ints.dtype().equal(py::dtype::of<int32_t>()))
    throw py::type_error("ints: expected int32, got " + dtype_str(ints));
  require_c_contiguous(ints, "ints");
  require_shape(ints, "ints", {N, 5});
  const float* fp = nullptr;
  py::array fac;
  if (s.jitter) {
    if (factors.is_none()) throw py::value_error("factors: required with jitter flags");
    fac = factors.cast<py::array>();
    require_f32(fac, "factors");
    require_c_contiguous(fac, "factors");
    require_shape(fac, "factors", {N, 3});
    fp = cptr<float>(fac);
  }
  const int32_t* ip = static_cast<const int32_t*>(ints.data());
  std::vector<AugSample> ps(static_cast<size_t>(N));
  const int64_t H = s.H, W = s.W;
  for (int64_t i = 0; i < N; ++i) {
    AugSample& p = ps[static_cast<size_t>(i)];
    p.flip = ip[5 * i];
    p.top = ip[5 * i + 1];
    p.left = ip[5 * i + 2];
    p.bh = ip[5 * i + 3];
    p.bw = ip[5 * i + 4];
    p.brightness = fp ? fp[3 * i] : 1.0f;
    p.contrast = fp ? fp[3 * i + 1] : 1.0f;
    p.saturation = fp ? fp[3 * i + 2] : 1.0f;
    if (s.OH * s.OW == 0 || s.C == 0) continue;
    if (s.geom == kAugResize) {
      if (p.bh < 1 || p.bw < 1 || p.top < 0 || p.left < 0 || p.top + int64_t{p.bh} > H || p.left + int64_t{p.bw} > W)
        throw py::value_error(sample_str(i) + "resize box outside the image");
    } else if (s.pad_mode == kPadReflect) {
      // One reflection must land inside: -(n-1) <= index <= 2(n-1).
      if (p.top < -(H - 1) || p.top + s.OH - 1 > 2 * (H - 1) || p.left < -(W - 1) || p.left + s.OW - 1 > 2 * (W - 1))
        throw py::value_error(sample_str(i) + "reflect padding must be smaller than the image");
    }
  }
  return ps;
}

}  // namespace augment_args
}  // namespace fastnn
