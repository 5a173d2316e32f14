// CPU ROIAlign on NHWC float32, separable form (no TensorFlow dependency; threading is the
// caller's job: the forward works on any range of ROIs, the backward on any band of feature
// rows, so concurrent calls on disjoint ranges never write the same memory).
//
// A bin's value is sum_y sum_x wy(y) wx(x) F[y, x, :] / count (see roi_align_kernel.h), so per
// ROI we precompute, once, a short dense weight vector over feature rows for every bin row and
// over feature columns for every bin column, and reuse them for all channels:
//   forward:  T[c, :]        = sum_r wy[ph](r) F[r, c, :]    (contiguous NHWC row segments)
//             out[ph, pw, :] = sum_c wx[pw](c) T[c, :]
//   backward: U[ph][c, :]    = sum_pw wx[pw](c) G[ph, pw, :]
//             dF[r, c, :]   += sum_ph wy[ph](r) U[ph][c, :]
// This is the same sum as the sample-by-sample definition, reordered; it costs about
// pooled_h * rows_per_bin * roi_width + pooled_h * pooled_w * cols_per_bin multiply-adds per
// channel instead of 4 * pooled_h * pooled_w * grid_h * grid_w. Each destination vector is
// loaded/stored once per sum, from register accumulators (WeightedSum).
//
// The two entry points are compiled for several x86-64 levels and picked at load time
// (GCC function multi-versioning), so the library stays portable while using AVX2/AVX-512
// where the machine running it has them.
#ifndef TFMRCNN_CUSTOM_OPS_ROI_ALIGN_CPU_H_
#define TFMRCNN_CUSTOM_OPS_ROI_ALIGN_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "roi_align_kernel.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(TFMRCNN_NO_MULTIVERSION)
#define TFMRCNN_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TFMRCNN_MULTIVERSION
#endif
#if defined(__GNUC__)
#define TFMRCNN_INLINE inline __attribute__((always_inline))
#else
#define TFMRCNN_INLINE inline
#endif

namespace tfmrcnn {
namespace roi_align {

// A small list of (source vector, weight) terms; sources are pointers to `n`-float vectors.
struct Terms {
  static constexpr int kMax = 64;
  const float* src[kMax];
  float w[kMax];
  int size = 0;
};

#if defined(__GNUC__)
// 16 floats as one GCC vector (lowered to 4 SSE, 2 AVX or 1 AVX-512 register by each clone);
// aligned(4) + may_alias make loads from any float* legal.
typedef float Vec16 __attribute__((vector_size(64), aligned(4), may_alias));
#define TFMRCNN_VEC16 1
#endif

// dst[i] (+)= sum_k w[k] * src[k][i] for i < n. Accumulates 32 floats at a time in registers so
// each dst element is loaded/stored once; the sources are read as contiguous streams.
template <bool kAccumulate>
TFMRCNN_INLINE void WeightedSum(const Terms& t, int64_t n, float* __restrict__ dst) {
  int64_t i = 0;
#ifdef TFMRCNN_VEC16
  for (; i + 32 <= n; i += 32) {
    Vec16 a0 = {}, a1 = {};
    if (kAccumulate) {
      a0 = *reinterpret_cast<const Vec16*>(dst + i);
      a1 = *reinterpret_cast<const Vec16*>(dst + i + 16);
    }
    for (int k = 0; k < t.size; ++k) {
      const float w = t.w[k];
      const float* s = t.src[k] + i;
      a0 += w * *reinterpret_cast<const Vec16*>(s);
      a1 += w * *reinterpret_cast<const Vec16*>(s + 16);
    }
    *reinterpret_cast<Vec16*>(dst + i) = a0;
    *reinterpret_cast<Vec16*>(dst + i + 16) = a1;
  }
  for (; i + 16 <= n; i += 16) {
    Vec16 a0 = {};
    if (kAccumulate) a0 = *reinterpret_cast<const Vec16*>(dst + i);
    for (int k = 0; k < t.size; ++k) a0 += t.w[k] * *reinterpret_cast<const Vec16*>(t.src[k] + i);
    *reinterpret_cast<Vec16*>(dst + i) = a0;
  }
#endif
  for (; i < n; ++i) {
    float acc = kAccumulate ? dst[i] : 0.f;
    for (int k = 0; k < t.size; ++k) acc += t.w[k] * t.src[k][i];
    dst[i] = acc;
  }
}

// Per-bin weights along one axis, stored both ways:
//   by bin:   bin b covers pixels [first[b], first[b] + len[b]) with weights w[b * stride + k];
//   by pixel: pixel p in [lo, hi) is used by the bins pbin[pbeg[p-lo] .. pbeg[p-lo+1]) with
//             weights pw[...] (for the backward, which gathers per pixel).
struct AxisWeights {
  std::vector<int> first, len;
  std::vector<float> w;
  int stride = 0;
  int lo = 0, hi = 0;
  std::vector<int> pbeg, pbin;
  std::vector<float> pw;

  // `scale` multiplies every weight (used to fold 1 / count into the row weights).
  void Build(const Axis& a, int pooled, int size, float scale, bool by_pixel) {
    first.assign(pooled, 0);
    len.assign(pooled, 0);
    stride = 0;
    lo = size;
    hi = 0;
    for (int b = 0; b < pooled; ++b) {  // pass 1: supports
      int mn = size, mx = -1;
      for (int i = 0; i < a.grid; ++i) {
        const Tap t = MakeTap(SamplePos(a, b, i), size);
        if (!t.valid) continue;
        mn = std::min(mn, t.lo);
        mx = std::max(mx, t.hi);
      }
      if (mx >= mn) {
        first[b] = mn;
        len[b] = mx - mn + 1;
        stride = std::max(stride, len[b]);
        lo = std::min(lo, mn);
        hi = std::max(hi, mx + 1);
      }
    }
    if (hi < lo) hi = lo;
    w.assign(static_cast<size_t>(pooled) * stride, 0.f);
    for (int b = 0; b < pooled; ++b) {  // pass 2: accumulate the taps of every sample
      if (len[b] == 0) continue;
      float* wb = w.data() + static_cast<size_t>(b) * stride;
      for (int i = 0; i < a.grid; ++i) {
        const Tap t = MakeTap(SamplePos(a, b, i), size);
        if (!t.valid) continue;
        wb[t.lo - first[b]] += t.w_lo * scale;
        wb[t.hi - first[b]] += t.w_hi * scale;
      }
    }
    if (by_pixel) BuildByPixel(pooled);
  }

  void BuildByPixel(int pooled) {
    const int n = hi - lo;
    pbeg.assign(n + 1, 0);
    for (int b = 0; b < pooled; ++b) {
      for (int k = 0; k < len[b]; ++k) ++pbeg[first[b] + k - lo + 1];
    }
    for (int p = 0; p < n; ++p) pbeg[p + 1] += pbeg[p];
    pbin.resize(pbeg[n]);
    pw.resize(pbeg[n]);
    std::vector<int> fill(pbeg.begin(), pbeg.end() - 1);
    for (int b = 0; b < pooled; ++b) {
      for (int k = 0; k < len[b]; ++k) {
        const int slot = fill[first[b] + k - lo]++;
        pbin[slot] = b;
        pw[slot] = w[static_cast<size_t>(b) * stride + k];
      }
    }
  }
};

// Weights of one ROI along both axes; 1 / count is folded into the row weights.
struct RoiWeights {
  AxisWeights y, x;
  void Build(const float* box, const Params& p, bool by_pixel) {
    const Axis ay = MakeAxis(box[1], box[3], p.pooled_h, p);
    const Axis ax = MakeAxis(box[0], box[2], p.pooled_w, p);
    const float inv_count = 1.f / static_cast<float>(SampleCount(ay, ax));
    y.Build(ay, p.pooled_h, p.height, inv_count, by_pixel);
    x.Build(ax, p.pooled_w, p.width, 1.f, by_pixel);
  }
};

// Rough multiply-add count of one ROI (for the thread pool's cost model).
inline int64_t RoiCost(const float* box, const Params& p) {
  const Axis ay = MakeAxis(box[1], box[3], p.pooled_h, p);
  const Axis ax = MakeAxis(box[0], box[2], p.pooled_w, p);
  const int64_t rows = std::min<int64_t>(static_cast<int64_t>(ay.grid) + 2, p.height + 1);
  const int64_t cols_bin = std::min<int64_t>(static_cast<int64_t>(ax.grid) + 2, p.width + 1);
  const int64_t cols = std::min<int64_t>(cols_bin * p.pooled_w, p.width + 1);
  return (p.pooled_h * rows * cols + int64_t{p.pooled_h} * p.pooled_w * cols_bin) * p.channels +
         64 * (ay.grid * p.pooled_h + ax.grid * p.pooled_w);
}

// Floats of scratch a forward worker needs: one (W, C) row of partial sums.
inline size_t ForwardScratchSize(const Params& p) {
  return static_cast<size_t>(p.width) * p.channels;
}

// Floats of scratch a backward worker needs: (pooled_h, W, C) partial sums.
inline size_t BackwardScratchSize(const Params& p) {
  return static_cast<size_t>(p.pooled_h) * p.width * p.channels;
}

// Forward for ROIs [begin, end). features (N, H, W, C), boxes (R, 4), box_indices (R,) already
// validated; output (R, pooled_h, pooled_w, C). Scratch: ForwardScratchSize(p) floats.
TFMRCNN_MULTIVERSION
inline void ForwardRange(const Params& p, const float* features, const float* boxes,
                         const int32_t* box_indices, int64_t begin, int64_t end, float* output,
                         float* scratch) {
  const int64_t C = p.channels;
  const int64_t roi_stride = int64_t{p.pooled_h} * p.pooled_w * C;
  RoiWeights rw;
  Terms t;
  for (int64_t r = begin; r < end; ++r) {
    rw.Build(boxes + 4 * r, p, /*by_pixel=*/false);
    const AxisWeights& wy = rw.y;
    const AxisWeights& wx = rw.x;
    const float* fmap = features + static_cast<int64_t>(box_indices[r]) * p.height * p.width * C;
    float* out_roi = output + r * roi_stride;
    const int64_t seg = static_cast<int64_t>(wx.hi - wx.lo) * C;  // floats per row segment
    for (int ph = 0; ph < p.pooled_h; ++ph) {
      float* out_row = out_roi + int64_t{ph} * p.pooled_w * C;
      if (wy.len[ph] == 0 || seg == 0) {
        std::memset(out_row, 0, sizeof(float) * p.pooled_w * C);
        continue;
      }
      // scratch = weighted sum of this bin row's feature rows over the ROI's columns. A bin
      // taller than Terms::kMax rows is summed in several passes.
      const float* wyb = wy.w.data() + static_cast<size_t>(ph) * wy.stride;
      const float* seg0 = fmap + static_cast<int64_t>(wx.lo) * C;
      for (int k0 = 0; k0 < wy.len[ph]; k0 += Terms::kMax) {
        t.size = 0;
        for (int k = k0; k < std::min(wy.len[ph], k0 + Terms::kMax); ++k) {
          t.src[t.size] = seg0 + static_cast<int64_t>(wy.first[ph] + k) * p.width * C;
          t.w[t.size++] = wyb[k];
        }
        if (k0 == 0) {
          WeightedSum<false>(t, seg, scratch);
        } else {
          WeightedSum<true>(t, seg, scratch);
        }
      }
      const float* t_base = scratch - static_cast<int64_t>(wx.lo) * C;
      for (int pw = 0; pw < p.pooled_w; ++pw) {
        float* dst = out_row + int64_t{pw} * C;
        const float* wxb = wx.w.data() + static_cast<size_t>(pw) * wx.stride;
        for (int k0 = 0; k0 < std::max(wx.len[pw], 1); k0 += Terms::kMax) {
          t.size = 0;
          for (int k = k0; k < std::min(wx.len[pw], k0 + Terms::kMax); ++k) {
            t.src[t.size] = t_base + static_cast<int64_t>(wx.first[pw] + k) * C;
            t.w[t.size++] = wxb[k];
          }
          if (k0 == 0) {
            WeightedSum<false>(t, C, dst);
          } else {
            WeightedSum<true>(t, C, dst);
          }
        }
      }
    }
  }
}

// Feature rows [lo, hi) that a ROI's samples can touch (cheap bound from the geometry alone,
// used to skip ROIs and to balance the backward's row bands).
inline void RoiRowBound(const float* box, const Params& p, int* lo, int* hi) {
  const Axis a = MakeAxis(box[1], box[3], p.pooled_h, p);
  if (a.grid <= 0) {
    *lo = *hi = 0;
    return;
  }
  const float first = SamplePos(a, 0, 0);
  const float last = SamplePos(a, p.pooled_h - 1, a.grid - 1);
  const float mn = std::min(first, last), mx = std::max(first, last);
  if (!(mx >= -1.f && mn <= static_cast<float>(p.height))) {  // also false for NaN
    *lo = *hi = 0;
    return;
  }
  *lo = std::max(0, static_cast<int>(std::max(mn, 0.f)) - 1);
  *hi = std::min(p.height, static_cast<int>(std::min(mx, static_cast<float>(p.height))) + 2);
}

// Backward for the feature rows [row_begin, row_end) of the stacked (N * H) rows: adds into
// grad_features (N, H, W, C), which the caller zeroed, the part of every ROI's gradient that
// falls on those rows. grad_output (R, pooled_h, pooled_w, C). Workers given disjoint row
// ranges write disjoint memory. Scratch: BackwardScratchSize(p) floats.
TFMRCNN_MULTIVERSION
inline void BackwardRows(const Params& p, const float* grad_output, const float* boxes,
                         const int32_t* box_indices, int64_t num_rois, int64_t row_begin,
                         int64_t row_end, float* grad_features, float* scratch) {
  const int64_t C = p.channels;
  const int64_t roi_stride = int64_t{p.pooled_h} * p.pooled_w * C;
  RoiWeights rw;
  Terms t;
  std::vector<char> have_u(p.pooled_h);
  for (int64_t r = 0; r < num_rois; ++r) {
    const int64_t row0 = static_cast<int64_t>(box_indices[r]) * p.height;
    int lo, hi;
    RoiRowBound(boxes + 4 * r, p, &lo, &hi);
    const int64_t band_lo = std::max<int64_t>(row0 + lo, row_begin) - row0;
    const int64_t band_hi = std::min<int64_t>(row0 + hi, row_end) - row0;
    if (band_lo >= band_hi) continue;
    rw.Build(boxes + 4 * r, p, /*by_pixel=*/true);
    const AxisWeights& wy = rw.y;
    const AxisWeights& wx = rw.x;
    const int64_t ncols = wx.hi - wx.lo;
    const int y_lo = std::max<int>(wy.lo, static_cast<int>(band_lo));
    const int y_hi = std::min<int>(wy.hi, static_cast<int>(band_hi));
    if (ncols == 0 || y_lo >= y_hi) continue;
    const float* g_roi = grad_output + r * roi_stride;
    float* dmap = grad_features + row0 * p.width * C;
    const int64_t u_stride = ncols * C;
    std::fill(have_u.begin(), have_u.end(), 0);
    for (int row = y_lo; row < y_hi; ++row) {
      const int pr = row - wy.lo;
      t.size = 0;
      for (int k = wy.pbeg[pr]; k < wy.pbeg[pr + 1]; ++k) {
        const int ph = wy.pbin[k];
        float* u = scratch + ph * u_stride;
        if (!have_u[ph]) {
          // U[ph][col, :] = sum over the bins pw using column col of wx * G[ph, pw, :].
          const float* g_row = g_roi + int64_t{ph} * p.pooled_w * C;
          Terms tu;
          for (int64_t col = 0; col < ncols; ++col) {
            int k0 = wx.pbeg[col];
            do {
              tu.size = 0;
              for (int j = k0; j < std::min(wx.pbeg[col + 1], k0 + Terms::kMax); ++j) {
                tu.src[tu.size] = g_row + int64_t{wx.pbin[j]} * C;
                tu.w[tu.size++] = wx.pw[j];
              }
              if (k0 == wx.pbeg[col]) {
                WeightedSum<false>(tu, C, u + col * C);
              } else {
                WeightedSum<true>(tu, C, u + col * C);
              }
              k0 += Terms::kMax;
            } while (k0 < wx.pbeg[col + 1]);
          }
          have_u[ph] = 1;
        }
        // dF[row, cols, :] += sum over the bin rows ph using this row of wy * U[ph].
        if (t.size == Terms::kMax) {
          WeightedSum<true>(t, u_stride, dmap + (int64_t{row} * p.width + wx.lo) * C);
          t.size = 0;
        }
        t.src[t.size] = u;
        t.w[t.size++] = wy.pw[k];
      }
      if (t.size > 0) WeightedSum<true>(t, u_stride, dmap + (int64_t{row} * p.width + wx.lo) * C);
    }
  }
}

}  // namespace roi_align
}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_ROI_ALIGN_CPU_H_
