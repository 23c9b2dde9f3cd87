// Data-augmentation kernels: crop / pad / flip / bilinear resized crop fused with color jitter
// (one sample per call, the sample's output staying in L1/L2 between the geometry and the jitter
// passes), Gaussian noise from the Philox stream, and the mixup blend. Compiled once per ISA
// with -ffp-contract=off (CMakeLists.txt): every output element is the same sequence of float32
// multiplies, adds and clamps on every path, so the paths agree bit for bit and the NumPy
// references in tests/reference.py reproduce them (exactly where no reduction is involved).
#include "cpu/augment.h"

#include <cstring>

#include "core/box_muller.h"
#include "core/philox.h"
#include "cpu/simd.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

using V = Vec<float>;

// torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), evaluated as (r*wr + g*wg) + b*wb.
constexpr float kWr = 0.2989f, kWg = 0.587f, kWb = 0.114f;

inline int64_t reflect(int64_t s, int64_t n) {  // numpy/torch 'reflect': the edge is not repeated
  if (s < 0) s = -s;
  if (s >= n) s = 2 * (n - 1) - s;
  return s;
}

// ---- geometry ---------------------------------------------------------------------------------

// One output row of a crop: y[k] = row[src(k)], src(k) = left + (flip ? OW-1-k : k), outside
// [0, W) the fill value or the mirrored column.
void crop_row(const float* xr, float* y, int64_t W, int64_t OW, int64_t left, bool flip, bool reflect_pad,
              float fill) {
  // Output columns whose source column lies inside the row: [k0, k1).
  auto src = [&](int64_t k) { return left + (flip ? OW - 1 - k : k); };
  int64_t k0, k1;
  if (!flip) {
    k0 = left < 0 ? -left : 0;
    k1 = W - left < OW ? W - left : OW;
  } else {  // src decreases with k: src(k) < W  <=>  k > left + OW - 1 - W
    const int64_t s0 = left + OW - 1;
    k0 = s0 - (W - 1) > 0 ? s0 - (W - 1) : 0;
    k1 = s0 + 1 < OW ? s0 + 1 : OW;
  }
  if (k0 > OW) k0 = OW;
  if (k1 < k0) k1 = k0;
  for (int64_t k = 0; k < k0; ++k) y[k] = reflect_pad ? xr[reflect(src(k), W)] : fill;
  if (!flip) {
    if (k1 > k0) std::memcpy(y + k0, xr + left + k0, static_cast<size_t>(k1 - k0) * sizeof(float));
  } else {
    const float* s = xr + left + OW - 1;  // s[-k] = source of output column k
    for (int64_t k = k0; k < k1; ++k) y[k] = s[-k];
  }
  for (int64_t k = k1; k < OW; ++k) y[k] = reflect_pad ? xr[reflect(src(k), W)] : fill;
}

void crop(const float* x, float* y, const AugShape& s, const AugSample& p) {
  const bool refl = s.pad_mode == kPadReflect;
  for (int64_t c = 0; c < s.C; ++c) {
    for (int64_t r = 0; r < s.OH; ++r) {
      float* yr = y + (c * s.OH + r) * s.OW;
      int64_t sr = p.top + r;
      if (sr < 0 || sr >= s.H) {
        if (!refl) {
          for (int64_t k = 0; k < s.OW; ++k) yr[k] = s.fill;
          continue;
        }
        sr = reflect(sr, s.H);
      }
      crop_row(x + (c * s.H + sr) * s.W, yr, s.W, s.OW, p.left, p.flip != 0, refl, s.fill);
    }
  }
}

// Source index pair and weight of each output coordinate, as torch's upsample_bilinear2d
// (align_corners=False): src = scale * (dst + 0.5) - 0.5 clamped at 0, scale = in / out in
// float32; i1 = i0 + 1 unless i0 is the last index; value = (1 - l) * v[i0] + l * v[i1].
void bilinear_table(int64_t in, int64_t out, int64_t base, bool flip, int32_t* i0, int32_t* i1, float* l1) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d) {
    const int64_t dd = flip ? out - 1 - d : d;
    float src = scale * (static_cast<float>(dd) + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int64_t a = static_cast<int64_t>(src);
    if (a > in - 1) a = in - 1;
    const float lam = src - static_cast<float>(a);
    i0[d] = static_cast<int32_t>(base + a);
    i1[d] = static_cast<int32_t>(base + (a < in - 1 ? a + 1 : a));
    l1[d] = lam;
  }
}

void resize(const float* x, float* y, const AugShape& s, const AugSample& p, char* scratch) {
  auto up = [](int64_t b) { return (b + 63) / 64 * 64; };
  int32_t* ry0 = reinterpret_cast<int32_t*>(scratch);
  int32_t* ry1 = reinterpret_cast<int32_t*>(scratch + up(4 * s.OH));
  float* ly = reinterpret_cast<float*>(scratch + 2 * up(4 * s.OH));
  char* cx = scratch + 3 * up(4 * s.OH);
  int32_t* cx0 = reinterpret_cast<int32_t*>(cx);
  int32_t* cx1 = reinterpret_cast<int32_t*>(cx + up(4 * s.OW));
  float* lx = reinterpret_cast<float*>(cx + 2 * up(4 * s.OW));
  bilinear_table(p.bh, s.OH, p.top, false, ry0, ry1, ly);
  bilinear_table(p.bw, s.OW, p.left, p.flip != 0, cx0, cx1, lx);
  for (int64_t c = 0; c < s.C; ++c) {
    const float* xc = x + c * s.H * s.W;
    for (int64_t r = 0; r < s.OH; ++r) {
      const float* a = xc + static_cast<int64_t>(ry0[r]) * s.W;
      const float* b = xc + static_cast<int64_t>(ry1[r]) * s.W;
      const float wy1 = ly[r], wy0 = 1.0f - wy1;
      float* yr = y + (c * s.OH + r) * s.OW;
      for (int64_t k = 0; k < s.OW; ++k) {
        const float wx1 = lx[k], wx0 = 1.0f - wx1;
        const float top = wx0 * a[cx0[k]] + wx1 * a[cx1[k]];
        const float bot = wx0 * b[cx0[k]] + wx1 * b[cx1[k]];
        yr[k] = wy0 * top + wy1 * bot;
      }
    }
  }
}

// ---- color jitter (in place on the sample's output) --------------------------------------------

// clamp to [0, 1], NaN kept (vmax/vmin return their second operand when either is NaN).
inline V clamp01(V v) { return vmin(V::set1(1.0f), vmax(V::set1(0.0f), v)); }

template <class F>
inline void for_vectors(int64_t n, F&& f) {  // f(index, lanes): full vectors, then a masked tail
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) f(i, static_cast<int64_t>(V::W));
  if (i < n) f(i, n - i);
}

inline V ld(const float* p, int64_t lanes) { return lanes == V::W ? V::load(p) : V::load_partial(p, lanes); }
inline void st(V v, float* p, int64_t lanes) {
  if (lanes == V::W) v.store(p);
  else v.store_partial(p, lanes);
}

inline V gray3(V r, V g, V b) { return r * V::set1(kWr) + g * V::set1(kWg) + b * V::set1(kWb); }

// Mean of the sample's grayscale (C == 3) or of its single plane: float32 values summed in
// float64 into 8 partial sums (pixel p into sum p % 8; a fixed order, the same on every path:
// no reassociation without -ffast-math), divided, rounded once to float32. One sequential sum
// was latency-bound: half the jitter's time on 32x32 images.
float gray_mean(const float* y, int64_t C, int64_t P, float* buf) {
  double acc8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t at = 0;  // pixels summed so far (chunks are multiples of 8 but the last)
  for (int64_t p0 = 0; p0 < P; p0 += 256) {
    const int64_t len = P - p0 < 256 ? P - p0 : 256;
    const float* src = y + p0;
    if (C == 3) {
      for_vectors(len, [&](int64_t i, int64_t l) {
        st(gray3(ld(y + p0 + i, l), ld(y + P + p0 + i, l), ld(y + 2 * P + p0 + i, l)), buf + i, l);
      });
      src = buf;
    }
    for (int64_t i = 0; i < len; ++i) acc8[(at + i) & 7] += static_cast<double>(src[i]);
    at += len;
  }
  const double acc = ((acc8[0] + acc8[1]) + (acc8[2] + acc8[3])) + ((acc8[4] + acc8[5]) + (acc8[6] + acc8[7]));
  return static_cast<float>(acc / static_cast<double>(P));
}

void jitter(float* y, const AugShape& s, const AugSample& p, float* buf) {
  const int64_t P = s.OH * s.OW, C = s.C;
  const bool B = s.jitter & kJitBrightness, Cn = s.jitter & kJitContrast, S = s.jitter & kJitSaturation;
  const V fb = V::set1(p.brightness);
  if (B && (Cn || !S)) {  // brightness alone, or before the mean the contrast needs
    for_vectors(C * P, [&](int64_t i, int64_t l) { st(clamp01(ld(y + i, l) * fb), y + i, l); });
  }
  const V fc = V::set1(p.contrast);
  V cm = V::set1(0.0f);
  if (Cn) cm = V::set1((1.0f - p.contrast) * gray_mean(y, C, P, buf));
  const V fs = V::set1(p.saturation), os = V::set1(1.0f - p.saturation);
  if (S) {  // C == 3 (checked by the binding); brightness here unless done above
    const bool b_here = B && !Cn;
    float *r = y, *g = y + P, *b = y + 2 * P;
    for_vectors(P, [&](int64_t i, int64_t l) {
      V vr = ld(r + i, l), vg = ld(g + i, l), vb = ld(b + i, l);
      if (b_here) {
        vr = clamp01(vr * fb);
        vg = clamp01(vg * fb);
        vb = clamp01(vb * fb);
      }
      if (Cn) {
        vr = clamp01(vr * fc + cm);
        vg = clamp01(vg * fc + cm);
        vb = clamp01(vb * fc + cm);
      }
      const V gm = os * gray3(vr, vg, vb);
      st(clamp01(vr * fs + gm), r + i, l);
      st(clamp01(vg * fs + gm), g + i, l);
      st(clamp01(vb * fs + gm), b + i, l);
    });
  } else if (Cn) {
    for_vectors(C * P, [&](int64_t i, int64_t l) { st(clamp01(ld(y + i, l) * fc + cm), y + i, l); });
  }
}

void sample(const float* x, float* y, const AugShape& s, const AugSample& p, void* scratch) {
  char* sc = static_cast<char*>(scratch);
  if (s.geom == kAugResize) resize(x, y, s, p, sc);
  else crop(x, y, s, p);
  if (s.jitter) {
    auto up = [](int64_t b) { return (b + 63) / 64 * 64; };
    jitter(y, s, p, reinterpret_cast<float*>(sc + 3 * up(4 * s.OH) + 3 * up(4 * s.OW)));
  }
}

// ---- Gaussian noise -----------------------------------------------------------------------------

// The words of stream positions [q, q + n) (core/philox.h layout), each counter evaluated once.
void stream_words(uint64_t seed, uint64_t q, int64_t n, uint32_t* out) {
  int64_t i = 0;
  while (i < n) {
    const uint64_t pos = q + static_cast<uint64_t>(i);
    const uint64_t blk = pos >> 6;
    const int64_t t0 = static_cast<int64_t>(pos & 63);
    const int64_t len = 64 - t0 < n - i ? 64 - t0 : n - i;
    // The 16 counters of the block as lanes: plain integer loops the compiler vectorizes
    // (vpmuludq) on the AVX2 / AVX-512 copies; the same words as philox::counter_words.
    uint32_t w[64];
    uint32_t* c0 = w;
    uint32_t* c1 = w + 16;
    uint32_t* c2 = w + 32;
    uint32_t* c3 = w + 48;
    const uint64_t cb = blk * 16;
    for (int l = 0; l < 16; ++l) {
      c0[l] = static_cast<uint32_t>(cb + static_cast<uint64_t>(l));
      c1[l] = static_cast<uint32_t>((cb + static_cast<uint64_t>(l)) >> 32);
      c2[l] = 0;
      c3[l] = 0;
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < philox::kRounds; ++r) {
      for (int l = 0; l < 16; ++l) {
        const uint64_t p0 = static_cast<uint64_t>(philox::kM0) * c0[l];
        const uint64_t p1 = static_cast<uint64_t>(philox::kM1) * c2[l];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
        c1[l] = static_cast<uint32_t>(p1);
        c3[l] = static_cast<uint32_t>(p0);
        c0[l] = n0;
        c2[l] = n2;
      }
      k0 += philox::kW0;
      k1 += philox::kW1;
    }
    std::memcpy(out + i, w + t0, static_cast<size_t>(len) * sizeof(uint32_t));
    i += len;
  }
}

// z = sqrt(-2 ln u1) cos(2 pi u2), u1 = (hi24(w0) + 1) / 2^24 in (0, 1], u2 = hi24(w1) / 2^24:
// core/box_muller.h (no libm: the same bits on every ISA, compiler and GPU), |z| <= 5.77.
void gaussian_noise(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, float std) {
  constexpr int64_t kChunk = 512;
  uint32_t w[2 * kChunk];
  for (int64_t e0 = 0; e0 < n; e0 += kChunk) {
    const int64_t len = n - e0 < kChunk ? n - e0 : kChunk;
    stream_words(seed, q0 + 2 * static_cast<uint64_t>(e0), 2 * len, w);
    for (int64_t e = 0; e < len; ++e) {
      y[e0 + e] = x[e0 + e] + std * box_muller::normal(w[2 * e], w[2 * e + 1]);
    }
  }
}

// ---- mixup ------------------------------------------------------------------------------------------

void mix(const float* x, const float* xp, float* y, int64_t n, float lam, float lam1) {
  const V a = V::set1(lam), b = V::set1(lam1);
  for_vectors(n, [&](int64_t i, int64_t l) { st(ld(x + i, l) * a + ld(xp + i, l) * b, y + i, l); });
}

}  // namespace

extern const AugmentKernels kAugmentKernels;
constexpr AugmentKernels kAugmentKernels{&sample, &gaussian_noise, &mix};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
