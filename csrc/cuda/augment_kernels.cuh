// Device code of csrc/cuda/augment.cu: the augmentation kernels and their exact-arithmetic
// helpers (the launchers, which need nvcc's <<<>>>, stay in augment.cu). Plain C++ types and the
// CUDA built-ins only, so that tests/test_augment_cuda_emulated.py can compile this header for
// the host with a fiber-per-CUDA-thread shim (tests/cuda_emulation/) and check every kernel
// against the CPU path where no GPU is at hand. See augment.cu for what each kernel does.
#pragma once

#include <cstdint>

#include "core/box_muller.h"
#include "core/philox.h"
#include "cuda/augment.h"

namespace fastnn {
namespace cuda {
namespace augment_detail {

constexpr int kThreads = 256;    // threads per block of every kernel here
constexpr int kMeanTile = 1024;  // gray values per tile of the ordered mean (a multiple of 8)
static_assert(kMeanTile % 8 == 0, "tile pixels must keep pixel p in partial sum p % 8");
constexpr int kNoiseElems = 2 * kThreads;                     // elements per noise tile
constexpr int kNoiseBlocks = (2 * kNoiseElems) / 64 + 1;       // stream blocks a tile can touch (17)
constexpr int kMaxGridY = 65535;

// Table mode (a captured training step, replayed once per step): the per-step parameters of a
// whole epoch live in a device table and the kernel reads the current step's slice at row
// *ctr (the device step counter, read when the kernel runs, so a replayed graph sees each step's
// own draws). ctr == nullptr: the pointers as given (one call, parameters uploaded by the launcher).
// Step r's samples start at row r * stride of a per-sample table (stride = the full batch).
template <class P>
__device__ __forceinline__ const P* step_rows(const P* table, const uint64_t* ctr, int64_t stride) {
  return ctr ? table + static_cast<int64_t>(*ctr) * stride : table;
}

// torchvision's rgb_to_grayscale weights, as csrc/cpu/augment.cpp.
constexpr float kWr = 0.2989f, kWg = 0.587f, kWb = 0.114f;

// ---- exact float arithmetic: core/rounded.h's (never contracted into FMAs) --------------------------

using rn::add_rn;
using rn::div_rn;
using rn::mul_rn;
using rn::sub_rn;

// The CPU's clamp01 = vmin(1, vmax(0, v)) with x86 maxps/minps semantics (the second operand when
// either is NaN): NaN stays NaN, -0 stays -0.
__device__ __forceinline__ float clamp01(float v) {
  const float t = 0.0f > v ? 0.0f : v;
  return 1.0f < t ? 1.0f : t;
}

// (r * wr + g * wg) + b * wb, each operation rounded, as gray3 on the CPU.
__device__ __forceinline__ float gray3(float r, float g, float b) {
  return add_rn(add_rn(mul_rn(r, kWr), mul_rn(g, kWg)), mul_rn(b, kWb));
}

// ---- geometry ----------------------------------------------------------------------------------------

__device__ __forceinline__ int64_t reflect(int64_t s, int64_t n) {  // no edge repeat (one reflection)
  if (s < 0) s = -s;
  if (s >= n) s = 2 * (n - 1) - s;
  return s;
}

// One entry of the CPU's bilinear_table: output coordinate dd of `out` from a box of `in` input
// pixels starting at `base` (torch's upsample_bilinear2d, align_corners=False).
struct Tap {
  int64_t i0, i1;
  float l1;
};

__device__ __forceinline__ Tap bilinear_tap(int64_t in, int64_t out, int64_t base, int64_t dd) {
  const float scale = div_rn(static_cast<float>(in), static_cast<float>(out));
  float src = sub_rn(mul_rn(scale, add_rn(static_cast<float>(dd), 0.5f)), 0.5f);
  if (src < 0.0f) src = 0.0f;
  int64_t a = static_cast<int64_t>(src);
  if (a > in - 1) a = in - 1;
  Tap t;
  t.l1 = sub_rn(src, static_cast<float>(a));
  t.i0 = base + a;
  t.i1 = base + (a < in - 1 ? a + 1 : a);
  return t;
}

// Where output pixel (r, k) of a sample comes from, the same for every channel: offsets within an
// input channel plane (H, W), either one crop pixel (or the fill value: constant padding) or the
// four bilinear taps with their weights.
struct Source {
  bool resize, fill;
  int64_t a0, a1, b0, b1;  // crop: a0 only; resize: (row i0, col i0), (i0, i1), (i1, i0), (i1, i1)
  float wx0, wx1, wy0, wy1;
};

// Crop: output (r, k) is input (top + r, left + k') with k' = flip ? OW-1-k : k, rows / columns
// outside the image the fill value or mirrored (csrc/cpu/augment.cpp crop / crop_row). Resize:
// the tables of bilinear_table at row r and column k' (the flip is folded into the column).
__device__ __forceinline__ Source pixel_source(const AugShape& s, const AugSample& p, int64_t r, int64_t k) {
  Source q;
  q.resize = s.geom == kAugResize;
  q.fill = false;
  q.a0 = q.a1 = q.b0 = q.b1 = 0;
  q.wx0 = q.wx1 = q.wy0 = q.wy1 = 0.0f;
  const int64_t kk = p.flip ? s.OW - 1 - k : k;
  if (q.resize) {
    const Tap ty = bilinear_tap(p.bh, s.OH, p.top, r);
    const Tap tx = bilinear_tap(p.bw, s.OW, p.left, kk);
    q.a0 = ty.i0 * s.W + tx.i0;
    q.a1 = ty.i0 * s.W + tx.i1;
    q.b0 = ty.i1 * s.W + tx.i0;
    q.b1 = ty.i1 * s.W + tx.i1;
    q.wx1 = tx.l1;
    q.wx0 = sub_rn(1.0f, tx.l1);
    q.wy1 = ty.l1;
    q.wy0 = sub_rn(1.0f, ty.l1);
    return q;
  }
  const bool refl = s.pad_mode == kPadReflect;
  int64_t sr = static_cast<int64_t>(p.top) + r;
  if (sr < 0 || sr >= s.H) {
    if (!refl) {
      q.fill = true;
      return q;
    }
    sr = reflect(sr, s.H);
  }
  int64_t sc = static_cast<int64_t>(p.left) + kk;
  if (sc < 0 || sc >= s.W) {
    if (!refl) {
      q.fill = true;
      return q;
    }
    sc = reflect(sc, s.W);
  }
  q.a0 = sr * s.W + sc;
  return q;
}

// The geometry's value in one input channel plane: a crop pixel, the fill, or
// wy0 * (wx0 * a0 + wx1 * a1) + wy1 * (wx0 * b0 + wx1 * b1) in the CPU's order.
__device__ __forceinline__ float source_value(const float* plane, const Source& q, float fill) {
  if (q.resize) {
    const float top = add_rn(mul_rn(q.wx0, plane[q.a0]), mul_rn(q.wx1, plane[q.a1]));
    const float bot = add_rn(mul_rn(q.wx0, plane[q.b0]), mul_rn(q.wx1, plane[q.b1]));
    return add_rn(mul_rn(q.wy0, top), mul_rn(q.wy1, bot));
  }
  return q.fill ? fill : plane[q.a0];
}

// ---- fused geometry + jitter ---------------------------------------------------------------------------

// cm[i] = (1 - contrast_i) * float32(mean of the grayscale of sample i), the grayscale taken after
// the geometry and (if enabled) brightness: gray3 of the 3 channels, or the single channel for
// C == 1. The mean is the CPU's gray_mean bit for bit (see the header comment). One block per
// sample; grid-stride over samples. Tiles alternate between two shared buffers: while lanes 0..7
// of warp 0 add tile t, the other warps compute tile t + 1; one barrier per tile suffices because
// a buffer is rewritten only after the barrier that follows the additions of its previous tile.
__global__ void __launch_bounds__(kThreads)
    contrast_mean_kernel(const float* x, const AugSample* ps, AugShape s, int64_t N, float* cm,
                         const uint64_t* ctr = nullptr, int64_t stride = 0) {
  __shared__ float tile[2][kMeanTile];
  ps = step_rows(ps, ctr, stride);
  const int tx = static_cast<int>(threadIdx.x);
  const uint32_t OW = static_cast<uint32_t>(s.OW);
  const int64_t P = s.OH * s.OW, plane = s.H * s.W, in_n = s.C * plane;
  const bool bright = (s.jitter & kJitBrightness) != 0;
  const int64_t ntiles = (P + kMeanTile - 1) / kMeanTile;
#pragma unroll 1
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const AugSample p = ps[i];
    const float* xs = x + i * in_n;
    double acc = 0.0;  // lane l < 8 of warp 0: the partial sum of pixels p % 8 == l
#pragma unroll 1
    for (int64_t t = 0; t < ntiles; ++t) {
      float* buf = tile[t & 1];
      const int64_t p0 = t * kMeanTile;
      const int len = static_cast<int>(P - p0 < kMeanTile ? P - p0 : kMeanTile);
      for (int j = tx; j < len; j += kThreads) {
        const uint32_t pix = static_cast<uint32_t>(p0 + j);
        const uint32_t r = pix / OW, k = pix - r * OW;
        const Source q = pixel_source(s, p, r, k);
        float g;
        if (s.C == 3) {
          float v[3];
#pragma unroll
          for (int c = 0; c < 3; ++c) {
            v[c] = source_value(xs + c * plane, q, s.fill);
            if (bright) v[c] = clamp01(mul_rn(v[c], p.brightness));
          }
          g = gray3(v[0], v[1], v[2]);
        } else {  // C == 1 (checked by the binding)
          g = source_value(xs, q, s.fill);
          if (bright) g = clamp01(mul_rn(g, p.brightness));
        }
        buf[j] = g;
      }
      __syncthreads();
      if (tx < 8) {
        // pixel p0 + j is in partial sum j % 8 (p0 is a multiple of 8), in increasing order
        for (int j = tx; j < len; j += 8) acc = add_rn(acc, static_cast<double>(buf[j]));
      }
    }
    if (tx < 32) {  // all of warp 0 (the shuffles need every lane)
      double part[8];
#pragma unroll
      for (int l = 0; l < 8; ++l) part[l] = __shfl_sync(0xFFFFFFFFu, acc, l);
      if (tx == 0) {
        const double sum = add_rn(add_rn(add_rn(part[0], part[1]), add_rn(part[2], part[3])),
                                  add_rn(add_rn(part[4], part[5]), add_rn(part[6], part[7])));
        const float mean = static_cast<float>(div_rn(sum, static_cast<double>(P)));
        cm[i] = mul_rn(sub_rn(1.0f, p.contrast), mean);
      }
    }
    __syncthreads();  // warp 0 has read the last tile before the next sample rewrites the buffers
  }
}

// The whole fused pass (see the header comment). Stages as csrc/cpu/augment.cpp jitter():
// brightness v * fb, contrast v * fc + cm, saturation v * fs + (1 - fs) * gray3, each clamped;
// one thread per pixel (all 3 channels) when saturation is on (C == 3), else per element.
__global__ void __launch_bounds__(kThreads)
    augment_apply_kernel(const float* x, float* y, const AugSample* ps, const float* cm, AugShape s, int64_t N,
                         const uint64_t* ctr = nullptr, int64_t stride = 0) {
  ps = step_rows(ps, ctr, stride);
  const uint32_t P = static_cast<uint32_t>(s.OH * s.OW), OW = static_cast<uint32_t>(s.OW);
  const int64_t plane = s.H * s.W, in_n = s.C * plane, out_n = s.C * static_cast<int64_t>(P);
  const bool B = (s.jitter & kJitBrightness) != 0, Cn = (s.jitter & kJitContrast) != 0,
             S = (s.jitter & kJitSaturation) != 0;
  const int64_t units = S ? static_cast<int64_t>(P) : out_n;
  const int64_t u64 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (u64 >= units) return;  // (no barriers in this kernel)
  const uint32_t u = static_cast<uint32_t>(u64);  // units <= kAugMaxSampleElements
  uint32_t c = 0, pix = u;
  if (!S) {
    c = u / P;
    pix = u - c * P;
  }
  const uint32_t r = pix / OW, k = pix - r * OW;
#pragma unroll 1
  for (int64_t i = blockIdx.y; i < N; i += gridDim.y) {
    const AugSample p = ps[i];
    const float* xs = x + i * in_n;
    float* ys = y + i * out_n;
    const float cmi = Cn ? cm[i] : 0.0f;
    const Source q = pixel_source(s, p, r, k);
    if (S) {
      float v[3];
#pragma unroll
      for (int ch = 0; ch < 3; ++ch) {
        float a = source_value(xs + ch * plane, q, s.fill);
        if (B) a = clamp01(mul_rn(a, p.brightness));
        if (Cn) a = clamp01(add_rn(mul_rn(a, p.contrast), cmi));
        v[ch] = a;
      }
      const float gm = mul_rn(sub_rn(1.0f, p.saturation), gray3(v[0], v[1], v[2]));
#pragma unroll
      for (int ch = 0; ch < 3; ++ch) ys[ch * static_cast<int64_t>(P) + pix] = clamp01(add_rn(mul_rn(v[ch], p.saturation), gm));
    } else {
      float a = source_value(xs + c * plane, q, s.fill);
      if (B) a = clamp01(mul_rn(a, p.brightness));
      if (Cn) a = clamp01(add_rn(mul_rn(a, p.contrast), cmi));
      ys[u] = a;
    }
  }
}

// ---- Gaussian noise --------------------------------------------------------------------------------------

// Tile t = elements [512t, 512t + len) = stream positions [Q, Q + 2 len), Q = q0 + 1024t. Its
// stream blocks B0 = Q / 64 .. B0 + nblk - 1 (nblk <= 17) are evaluated into `words` in position
// order: word j of counter 16b + c is position 64b + 16j + c (csrc/core/philox.h), stored at
// 64 (b - B0) + 16j + c; element e's words are then at (Q % 64) + 2(e - 512t) + {0, 1}.
// z = sqrt(-2 ln u1) cos(2 pi u2), u1 = (hi24(w0) + 1) / 2^24, u2 = hi24(w1) / 2^24: the CPU's
// core/box_muller.h (no libm), so the GPU's noise is the CPU's bit for bit.
// y may be x (each element read and written by one thread). Table mode: (seed, q0) are row *ctr
// of the device uint64 table sq (steps, 2), read when the kernel runs.
__global__ void __launch_bounds__(kThreads)
    noise_kernel(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, float sd, bool noise, bool clip,
                 int64_t ntiles, const uint64_t* sq = nullptr, const uint64_t* ctr = nullptr) {
  __shared__ uint32_t words[kNoiseBlocks * 64];
  const int tx = static_cast<int>(threadIdx.x);
  if (ctr) {
    const uint64_t* row = sq + 2 * static_cast<int64_t>(*ctr);
    seed = row[0];
    q0 = row[1];
  }
#pragma unroll 1
  for (int64_t t = blockIdx.x; t < ntiles; t += gridDim.x) {
    const int64_t e0 = t * kNoiseElems;
    const int len = static_cast<int>(n - e0 < kNoiseElems ? n - e0 : kNoiseElems);
    int sft = 0;
    if (noise) {
      const uint64_t Q = q0 + 2 * static_cast<uint64_t>(e0);
      const uint64_t B0 = Q >> 6;
      sft = static_cast<int>(Q & 63);
      const int nblk = (sft + 2 * len + 63) >> 6;
      for (int cc = tx; cc < nblk * 16; cc += kThreads) {
        const int b = cc >> 4, c = cc & 15;
        const philox::U32x4 w = philox::counter_words((B0 + static_cast<uint64_t>(b)) * 16 + static_cast<uint64_t>(c), seed);
#pragma unroll
        for (int j = 0; j < 4; ++j) words[b * 64 + 16 * j + c] = w.v[j];
      }
      __syncthreads();
    }
    for (int j = tx; j < len; j += kThreads) {
      const int64_t e = e0 + j;
      float v = x[e];
      if (noise) {
        v = add_rn(v, mul_rn(sd, box_muller::normal(words[sft + 2 * j], words[sft + 2 * j + 1])));
      }
      if (clip) v = clamp01(v);  // = NumPy 2's np.clip(v, 0, 1) of the CPU path (NaN and -0 kept)
      y[e] = v;
    }
    if (noise) __syncthreads();  // every thread has read `words` before the next tile rewrites it
  }
}

// ---- mixup -----------------------------------------------------------------------------------------------

// y[i, d] = lam * x[i, d] + lam1 * x[perm[i], d] ((x * lam) + (xp * lam1) as the CPU's mix for
// float32 and NumPy's lam * x + (1 - lam) * x[perm] for float64, each operation rounded).
// blockIdx.x (grid-stride) covers the row, blockIdx.y (grid-stride) the rows. Table mode: perm is
// row *ctr * stride of the epoch's permutation table (int64, steps * stride) and (lam, lam1) row
// *ctr of the T table lams (steps, 2), read when the kernel runs.
template <class T>
__global__ void __launch_bounds__(kThreads)
    mix_kernel(const T* x, const int64_t* perm, T* y, int64_t N, int64_t D, T lam, T lam1,
               const T* lams = nullptr, const uint64_t* ctr = nullptr, int64_t stride = 0) {
  if (ctr) {
    const int64_t r = static_cast<int64_t>(*ctr);
    perm += r * stride;
    lam = lams[2 * r];
    lam1 = lams[2 * r + 1];
  }
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t dstride = static_cast<int64_t>(gridDim.x) * kThreads;
#pragma unroll 1
  for (int64_t i = blockIdx.y; i < N; i += gridDim.y) {
    const T* a = x + i * D;
    const T* b = x + perm[i] * D;
    T* o = y + i * D;
    for (int64_t d = d0; d < D; d += dstride) o[d] = add_rn(mul_rn(a[d], lam), mul_rn(b[d], lam1));
  }
}

}  // namespace augment_detail
}  // namespace cuda
}  // namespace fastnn
