// pybind11 glue for data augmentation: checks (every index a kernel will touch is validated here,
// so _C stays safe to call directly), GIL release, threading over samples. The per-sample
// parameters come from python/fastnn/augment.py, which draws them from philox_words.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "bindings/augment_params.h"
#include "bindings/common.h"
#include "cpu/kernels.h"
#include "core/parallel.h"
#include "core/philox.h"

namespace fastnn {

namespace {

using augment_args::require_f32;
using augment_args::require_shape;

// Positions offset .. offset + n - 1 must all exist (the last one is 2^64 - 1).
void check_positions(uint64_t offset, uint64_t n) {
  if (n > 0 && offset > UINT64_MAX - (n - 1))
    throw py::value_error("offset: offset + number of stream positions must be at most 2**64");
}

}  // namespace

void register_augment(py::module_& m) {
  m.def(
      "philox_words",
      [](uint64_t seed, uint64_t offset, py::array out) {
        if (!out.dtype().equal(py::dtype::of<uint32_t>())) throw py::type_error("out: expected uint32, got " + dtype_str(out));
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        const int64_t n = out.size();
        check_positions(offset, static_cast<uint64_t>(n));
        uint32_t* o = static_cast<uint32_t*>(out.mutable_data());
        py::gil_scoped_release nogil;
        for (int64_t i = 0; i < n; ++i) o[i] = philox::bits_at(seed, offset + static_cast<uint64_t>(i));
      },
      py::arg("seed"), py::arg("offset"), py::arg("out"),
      "out[i] = the 32 random bits of stream position offset + i (for per-sample parameters).");

  m.def(
      "augment_batch",
      [](py::array x, py::array out, int geom, int pad_mode, double fill, int jitter, py::array ints,
         py::object factors) {
        require_f32(x, "x");
        require_f32(out, "out");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        if (x.ndim() != 4) throw py::value_error("x: expected (N, C, H, W), got " + std::to_string(x.ndim()) + " dims");
        if (out.ndim() != 4) throw py::value_error("out: expected (N, C, OH, OW)");
        const int64_t N = x.shape(0);
        require_shape(out, "out", {N, x.shape(1), out.shape(2), out.shape(3)});
        const AugShape s = augment_args::checked_shape(N, x.shape(1), x.shape(2), x.shape(3), out.shape(2),
                                                       out.shape(3), geom, pad_mode, fill, jitter);
        const std::vector<AugSample> ps = augment_args::checked_samples(s, N, ints, factors);
        const int64_t H = s.H, W = s.W;
        if (N == 0 || s.C * s.OH * s.OW == 0) return;
        const auto kernel = augment_kernels().sample;
        const float* xp = cptr<float>(x);
        float* yp = mptr<float>(out);
        const int64_t in_n = s.C * H * W, out_n = s.C * s.OH * s.OW;
        const int64_t grain = kGrainElements / out_n > 1 ? kGrainElements / out_n : 1;
        const int64_t scratch_bytes = augment_scratch_bytes(s);
        py::gil_scoped_release nogil;
        parallel_for(N, grain, 1, [&](int64_t b, int64_t e) {
          std::vector<char> buf(static_cast<size_t>(scratch_bytes + 64));
          void* sc = buf.data() + ((64 - (reinterpret_cast<uintptr_t>(buf.data()) & 63)) & 63);
          for (int64_t i = b; i < e; ++i) kernel(xp + i * in_n, yp + i * out_n, s, ps[static_cast<size_t>(i)], sc);
        });
      },
      py::arg("x"), py::arg("out"), py::arg("geom"), py::arg("pad_mode"), py::arg("fill"), py::arg("jitter"),
      py::arg("ints"), py::arg("factors"),
      "Fused crop/pad/flip or resized crop, then color jitter, per sample: x (N, C, H, W) float32 -> out "
      "(N, C, OH, OW); ints (N, 5) int32 rows (flip, top, left, box_h, box_w); factors (N, 3) float32 rows "
      "(brightness, contrast, saturation) used per the jitter flags (1, 2, 4). out must not overlap x.");

  m.def(
      "gaussian_noise",
      [](py::array x, py::array out, uint64_t seed, uint64_t offset, double std) {
        require_f32(x, "x");
        require_same(x, "x", out, "out");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        const int64_t n = x.size();
        if (n > 0 && static_cast<uint64_t>(n) > UINT64_MAX / 2) throw py::value_error("x: too many elements");
        check_positions(offset, 2 * static_cast<uint64_t>(n));
        const auto kernel = augment_kernels().gaussian_noise;
        const float* xp = cptr<float>(x);
        float* yp = mptr<float>(out);
        const float sd = static_cast<float>(std);
        py::gil_scoped_release nogil;
        parallel_for(n, kGrainElements / 8, 64, [&](int64_t b, int64_t e) {
          kernel(xp + b, yp + b, e - b, seed, offset + 2 * static_cast<uint64_t>(b), sd);
        });
      },
      py::arg("x"), py::arg("out"), py::arg("seed"), py::arg("offset"), py::arg("std"),
      "out = x + std * z, z standard normal from stream positions offset + 2e, offset + 2e + 1 (out may be x).");

  m.def(
      "mixup_apply",
      [](py::array x, py::array perm, py::array out, double lam, double lam1) {
        require_f32(x, "x");
        require_same(x, "x", out, "out");
        require_c_contiguous(x, "x");
        require_c_contiguous(out, "out");
        require_writeable(out, "out");
        if (x.ndim() < 1) throw py::value_error("x: expected at least 1 dimension");
        const int64_t N = x.shape(0);
        if (!perm.dtype().equal(py::dtype::of<int64_t>())) throw py::type_error("perm: expected int64, got " + dtype_str(perm));
        require_c_contiguous(perm, "perm");
        require_shape(perm, "perm", {N});
        const int64_t* pp = static_cast<const int64_t*>(perm.data());
        for (int64_t i = 0; i < N; ++i)
          if (pp[i] < 0 || pp[i] >= N) throw py::value_error("perm: entries must be in [0, N)");
        if (N == 0 || x.size() == 0) return;
        const int64_t D = x.size() / N;
        const auto kernel = augment_kernels().mix;
        const float* xp = cptr<float>(x);
        float* yp = mptr<float>(out);
        if (xp == yp) throw py::value_error("out: must not be x (rows are read after being written)");
        const float a = static_cast<float>(lam), b = static_cast<float>(lam1);
        const int64_t grain = kGrainElements / D > 1 ? kGrainElements / D : 1;
        py::gil_scoped_release nogil;
        parallel_for(N, grain, 1, [&](int64_t b0, int64_t e) {
          for (int64_t i = b0; i < e; ++i) kernel(xp + i * D, xp + pp[i] * D, yp + i * D, D, a, b);
        });
      },
      py::arg("x"), py::arg("perm"), py::arg("out"), py::arg("lam"), py::arg("lam1"),
      "out[i] = lam * x[i] + lam1 * x[perm[i]] (float32; out must not overlap x).");
  m.attr("AUG_SAMPLE_BYTES") = py::int_(sizeof(AugSample));
  m.def(
      "augment_pack_samples",
      [](int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int geom, int pad_mode, double fill,
         int jitter, py::array ints, py::object factors) {
        const AugShape s = augment_args::checked_shape(N, C, H, W, OH, OW, geom, pad_mode, fill, jitter);
        const std::vector<AugSample> ps = augment_args::checked_samples(s, N, ints, factors);
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(sizeof(AugSample))});
        if (N > 0) std::memcpy(out.mutable_data(), ps.data(), ps.size() * sizeof(AugSample));
        return out;
      },
      py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("OH"), py::arg("OW"), py::arg("geom"),
      py::arg("pad_mode"), py::arg("fill"), py::arg("jitter"), py::arg("ints"), py::arg("factors"),
      "The N samples' parameters of augment_batch (ints (N, 5) int32, factors (N, 3) float32 or None), checked "
      "against the shape exactly as augment_batch checks them, packed as the kernels' AugSample structs: a uint8 "
      "(N, AUG_SAMPLE_BYTES) array (the rows of a device table for cuda_augment_batch_table).");
}

}  // namespace fastnn
