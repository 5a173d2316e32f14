// CPU ROIAlign on NHWC float32, separable form (no TensorFlow dependency; threading is the
// caller's job: the forward works on any range of ROIs, the backward on any range of channels,
// so concurrent calls on disjoint ranges never write the same memory).
//
// A bin's value is sum_y sum_x wy(y) wx(x) F[y, x, :] / count (see roi_align_kernel.h), so per
// ROI we precompute, once, a short dense weight vector over feature rows for every bin row and
// over feature columns for every bin column, and reuse them for all channels:
//   forward:  T[c, :]       = sum_r wy[ph](r) F[r, c, :]        (contiguous NHWC row segments)
//             out[ph, pw, :] = sum_c wx[pw](c) T[c, :]
//   backward: U[c, :]       = sum_pw wx[pw](c) G[ph, pw, :]
//             dF[r, c, :]   += wy[ph](r) U[c, :]
// This is the same sum as the sample-by-sample definition, reordered; it costs about
// pooled_h * rows_per_bin * roi_width + pooled_h * pooled_w * cols_per_bin multiply-adds per
// channel instead of 4 * pooled_h * pooled_w * grid_h * grid_w.
#ifndef TFMRCNN_CUSTOM_OPS_ROI_ALIGN_CPU_H_
#define TFMRCNN_CUSTOM_OPS_ROI_ALIGN_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "roi_align_kernel.h"

namespace tfmrcnn {
namespace roi_align {

// Dense per-bin weights along one axis: bin b covers pixels [first[b], first[b] + len[b])
// with weights w[b * stride + k]. [lo, hi) is the union of all bins' supports.
struct AxisWeights {
  std::vector<int> first, len;
  std::vector<float> w;
  int stride = 0;
  int lo = 0, hi = 0;

  // `scale` multiplies every weight (used to fold 1 / count into the row weights).
  void Build(const Axis& a, int pooled, int size, float scale) {
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
  }
};

// Weights of one ROI along both axes; 1 / count is folded into the row weights.
struct RoiWeights {
  AxisWeights y, x;
  void Build(const float* box, const Params& p) {
    const Axis ay = MakeAxis(box[1], box[3], p.pooled_h, p);
    const Axis ax = MakeAxis(box[0], box[2], p.pooled_w, p);
    const float inv_count = 1.f / static_cast<float>(SampleCount(ay, ax));
    y.Build(ay, p.pooled_h, p.height, inv_count);
    x.Build(ax, p.pooled_w, p.width, 1.f);
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

// Scratch space a worker needs: one (W, C) row of partial sums.
inline size_t ScratchSize(const Params& p) {
  return static_cast<size_t>(p.width) * p.channels;
}

// Forward for ROIs [begin, end). features (N, H, W, C), boxes (R, 4), box_indices (R,) already
// validated; output (R, pooled_h, pooled_w, C).
inline void ForwardRange(const Params& p, const float* features, const float* boxes,
                         const int32_t* box_indices, int64_t begin, int64_t end, float* output,
                         float* scratch) {
  const int C = p.channels;
  const int64_t bin_stride = C;
  const int64_t roi_stride = int64_t{p.pooled_h} * p.pooled_w * C;
  RoiWeights rw;
  for (int64_t r = begin; r < end; ++r) {
    rw.Build(boxes + 4 * r, p);
    const AxisWeights& wy = rw.y;
    const AxisWeights& wx = rw.x;
    const float* fmap = features + static_cast<int64_t>(box_indices[r]) * p.height * p.width * C;
    float* out_roi = output + r * roi_stride;
    const int64_t seg = static_cast<int64_t>(wx.hi - wx.lo) * C;  // floats per row segment
    for (int ph = 0; ph < p.pooled_h; ++ph) {
      float* out_row = out_roi + int64_t{ph} * p.pooled_w * bin_stride;
      if (wy.len[ph] == 0 || seg == 0) {
        std::memset(out_row, 0, sizeof(float) * p.pooled_w * C);
        continue;
      }
      // T = weighted sum of the ROI's row segments in this bin row.
      float* __restrict__ t = scratch;
      const float* wyb = wy.w.data() + static_cast<size_t>(ph) * wy.stride;
      for (int k = 0; k < wy.len[ph]; ++k) {
        const float a = wyb[k];
        const float* __restrict__ src =
            fmap + (static_cast<int64_t>(wy.first[ph] + k) * p.width + wx.lo) * C;
        if (k == 0) {
          for (int64_t i = 0; i < seg; ++i) t[i] = a * src[i];
        } else {
          for (int64_t i = 0; i < seg; ++i) t[i] += a * src[i];
        }
      }
      for (int pw = 0; pw < p.pooled_w; ++pw) {
        float* __restrict__ dst = out_row + int64_t{pw} * bin_stride;
        std::memset(dst, 0, sizeof(float) * C);
        const float* wxb = wx.w.data() + static_cast<size_t>(pw) * wx.stride;
        for (int k = 0; k < wx.len[pw]; ++k) {
          const float b = wxb[k];
          const float* __restrict__ src = t + static_cast<int64_t>(wx.first[pw] + k - wx.lo) * C;
          for (int c = 0; c < C; ++c) dst[c] += b * src[c];
        }
      }
    }
  }
}

// Backward for channels [c0, c1) of every ROI: adds into grad_features (N, H, W, C), which the
// caller zeroed. grad_output (R, pooled_h, pooled_w, C). Scratch: ScratchSize(p) floats.
inline void BackwardChannels(const Params& p, const float* grad_output, const float* boxes,
                             const int32_t* box_indices, int64_t num_rois, int c0, int c1,
                             float* grad_features, float* scratch) {
  const int C = p.channels;
  const int cb = c1 - c0;
  const int64_t roi_stride = int64_t{p.pooled_h} * p.pooled_w * C;
  RoiWeights rw;
  for (int64_t r = 0; r < num_rois; ++r) {
    rw.Build(boxes + 4 * r, p);
    const AxisWeights& wy = rw.y;
    const AxisWeights& wx = rw.x;
    const int ncols = wx.hi - wx.lo;
    if (ncols == 0) continue;
    float* dmap = grad_features + static_cast<int64_t>(box_indices[r]) * p.height * p.width * C;
    const float* g_roi = grad_output + r * roi_stride + c0;
    for (int ph = 0; ph < p.pooled_h; ++ph) {
      if (wy.len[ph] == 0) continue;
      // U[c, :] = sum over bins of this row of wx(c) * G[ph, pw, c0:c1].
      float* __restrict__ u = scratch;
      std::memset(u, 0, sizeof(float) * ncols * cb);
      for (int pw = 0; pw < p.pooled_w; ++pw) {
        const float* __restrict__ g = g_roi + (int64_t{ph} * p.pooled_w + pw) * C;
        const float* wxb = wx.w.data() + static_cast<size_t>(pw) * wx.stride;
        for (int k = 0; k < wx.len[pw]; ++k) {
          const float b = wxb[k];
          float* __restrict__ uc = u + static_cast<int64_t>(wx.first[pw] + k - wx.lo) * cb;
          for (int c = 0; c < cb; ++c) uc[c] += b * g[c];
        }
      }
      const float* wyb = wy.w.data() + static_cast<size_t>(ph) * wy.stride;
      for (int k = 0; k < wy.len[ph]; ++k) {
        const float a = wyb[k];
        float* drow = dmap + (static_cast<int64_t>(wy.first[ph] + k) * p.width + wx.lo) * C + c0;
        if (cb == C) {  // one contiguous segment
          float* __restrict__ d = drow;
          const int64_t seg = static_cast<int64_t>(ncols) * C;
          for (int64_t i = 0; i < seg; ++i) d[i] += a * u[i];
        } else {
          for (int col = 0; col < ncols; ++col) {
            float* __restrict__ d = drow + static_cast<int64_t>(col) * C;
            const float* __restrict__ uc = u + static_cast<int64_t>(col) * cb;
            for (int c = 0; c < cb; ++c) d[c] += a * uc[c];
          }
        }
      }
    }
  }
}

}  // namespace roi_align
}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_ROI_ALIGN_CPU_H_
