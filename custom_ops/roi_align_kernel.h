// ROIAlign math shared by the CPU kernel, the CUDA kernel and the standalone GPU harness.
//
// Convention (detectron2 ROIAlign / torchvision roi_align, which detectron2 calls):
//   * features are NHWC; boxes are xyxy in input-image pixels; box_indices pick the image.
//   * a box coordinate v maps to the feature map as v * spatial_scale - (aligned ? 0.5 : 0);
//     with aligned == false the ROI size is forced >= 1 (legacy ROIAlign).
//   * each output bin averages grid_h x grid_w bilinear samples placed at the centres of a
//     regular sub-grid of the bin; grid = sampling_ratio if > 0, else ceil(roi_size / pooled).
//     The average divides by max(grid_h * grid_w, 1), counting samples that contribute 0.
//   * a sample with y < -1 or y > H (same for x) contributes 0; otherwise it is clamped into
//     [0, H-1] before interpolation (the border rule of detectron2/torchvision).
//
// Bilinear weights are a product of a y-weight and an x-weight, and the validity test is a
// conjunction of a y-test and an x-test, so every bin's sampling is separable. The CPU kernel
// uses that (roi_align_cpu.h); the GPU kernel samples directly (roi_align_gpu_kernels.cu.h).
//
// This header has no TensorFlow dependency on purpose: gpu_harness/ compiles it with plain nvcc.
#ifndef TFMRCNN_CUSTOM_OPS_ROI_ALIGN_KERNEL_H_
#define TFMRCNN_CUSTOM_OPS_ROI_ALIGN_KERNEL_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TFMRCNN_HD __host__ __device__ __forceinline__
#else
#define TFMRCNN_HD inline
#endif

namespace tfmrcnn {
namespace roi_align {

// Attributes of one op call plus the feature-map geometry.
struct Params {
  int batch = 0;     // N
  int height = 0;    // H
  int width = 0;     // W
  int channels = 0;  // C
  int pooled_h = 0;
  int pooled_w = 0;
  float spatial_scale = 1.f;
  int sampling_ratio = 0;  // 0 = adaptive
  bool aligned = true;
};

// Where the bins of one ROI lie along one axis, in feature-map pixels.
struct Axis {
  float start;     // ROI start after scaling (and the half-pixel shift when aligned)
  float bin_size;  // ROI size / pooled
  int grid;        // samples per bin along this axis (<= 0: the bin has no sample)
};

TFMRCNN_HD Axis MakeAxis(float lo, float hi, int pooled, const Params& p) {
  const float offset = p.aligned ? 0.5f : 0.f;
  const float start = lo * p.spatial_scale - offset;
  const float end = hi * p.spatial_scale - offset;
  float size = end - start;
  if (!p.aligned && !(size >= 1.f)) size = 1.f;  // legacy: no ROI smaller than one pixel
  Axis a;
  a.start = start;
  a.bin_size = size / static_cast<float>(pooled);
  if (p.sampling_ratio > 0) {
    a.grid = p.sampling_ratio;
  } else {
    const float g = ceilf(size / static_cast<float>(pooled));
    // Non-finite boxes get no samples instead of undefined float->int conversions.
    a.grid = (g >= 1.f && g < 1e6f) ? static_cast<int>(g) : 0;
  }
  return a;
}

// Position of sample `i` of bin `b`, evaluated in the same order as torchvision.
TFMRCNN_HD float SamplePos(const Axis& a, int b, int i) {
  return a.start + b * a.bin_size +
         static_cast<float>(i + .5f) * a.bin_size / static_cast<float>(a.grid);
}

// 1-D linear interpolation taps of one sample coordinate on an axis of `size` pixels.
struct Tap {
  int lo, hi;         // neighbouring pixel indices (equal at the far border)
  float w_lo, w_hi;   // their weights
  bool valid;         // false: the sample lies beyond [-1, size] and contributes 0
};

TFMRCNN_HD Tap MakeTap(float v, int size) {
  Tap t;
  // Written so that NaN is invalid too.
  if (!(v >= -1.f && v <= static_cast<float>(size))) {
    t.lo = t.hi = 0;
    t.w_lo = t.w_hi = 0.f;
    t.valid = false;
    return t;
  }
  if (v <= 0.f) v = 0.f;
  int lo = static_cast<int>(v);
  int hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    v = static_cast<float>(lo);
  } else {
    hi = lo + 1;
  }
  const float l = v - static_cast<float>(lo);
  t.lo = lo;
  t.hi = hi;
  t.w_lo = 1.f - l;
  t.w_hi = l;
  t.valid = true;
  return t;
}

// The divisor of a bin average: every sample counts, valid or not.
TFMRCNN_HD int SampleCount(const Axis& ay, const Axis& ax) {
  const int n = ay.grid * ax.grid;
  return n > 1 ? n : 1;
}

}  // namespace roi_align
}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_ROI_ALIGN_KERNEL_H_
