// CUDA ROIAlign kernels and their launchers, without TensorFlow: included by
// roi_align_op_gpu.cu.cc (the TF op) and by gpu_harness/harness_gpu.cu (standalone test).
//
// Forward: one thread per output element (r, ph, pw, c); c is the fastest index, so the threads
// of a warp read consecutive channels of the same pixels (coalesced NHWC loads). Each thread
// walks its bin's samples directly (roi_align_kernel.h) and accumulates in float32.
// Backward: one thread per element of the output gradient, scattering with atomicAdd into a
// float32 buffer (the feature gradient itself when T is float; otherwise a temporary that
// CastKernel converts afterwards).
// T: float, or a 16-bit float type that converts to/from float with static_cast
// (Eigen::half / Eigen::bfloat16 in TensorFlow, __half / __nv_bfloat16 in the harness).
#ifndef TFMRCNN_CUSTOM_OPS_ROI_ALIGN_GPU_KERNELS_CU_H_
#define TFMRCNN_CUSTOM_OPS_ROI_ALIGN_GPU_KERNELS_CU_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "roi_align_kernel.h"

namespace tfmrcnn {
namespace roi_align {

constexpr int kThreadsPerBlock = 256;

// Decomposes a flat (R, pooled_h, pooled_w, C) index.
struct OutIndex {
  int64_t r;
  int ph, pw, c;
};

__device__ __forceinline__ OutIndex Decompose(int64_t i, const Params& p) {
  OutIndex o;
  o.c = static_cast<int>(i % p.channels);
  int64_t t = i / p.channels;
  o.pw = static_cast<int>(t % p.pooled_w);
  t /= p.pooled_w;
  o.ph = static_cast<int>(t % p.pooled_h);
  o.r = t / p.pooled_h;
  return o;
}

template <typename T>
__global__ void RoiAlignForwardKernel(int64_t total, Params p, const T* __restrict__ features,
                                      const float* __restrict__ boxes,
                                      const int32_t* __restrict__ box_indices,
                                      T* __restrict__ output) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const OutIndex o = Decompose(i, p);
    const float* box = boxes + 4 * o.r;
    const int n = box_indices[o.r];
    float acc = 0.f;
    if (n >= 0 && n < p.batch) {  // an invalid index pools zeros (no host-side check on GPU)
      const Axis ay = MakeAxis(box[1], box[3], p.pooled_h, p);
      const Axis ax = MakeAxis(box[0], box[2], p.pooled_w, p);
      const int64_t row = static_cast<int64_t>(p.width) * p.channels;
      const T* f = features + static_cast<int64_t>(n) * p.height * row + o.c;
      for (int iy = 0; iy < ay.grid; ++iy) {
        const Tap ty = MakeTap(SamplePos(ay, o.ph, iy), p.height);
        if (!ty.valid) continue;
        const T* f_lo = f + ty.lo * row;
        const T* f_hi = f + ty.hi * row;
        for (int ix = 0; ix < ax.grid; ++ix) {
          const Tap tx = MakeTap(SamplePos(ax, o.pw, ix), p.width);
          if (!tx.valid) continue;
          const int64_t x_lo = static_cast<int64_t>(tx.lo) * p.channels;
          const int64_t x_hi = static_cast<int64_t>(tx.hi) * p.channels;
          acc += ty.w_lo * tx.w_lo * static_cast<float>(f_lo[x_lo]) +
                 ty.w_lo * tx.w_hi * static_cast<float>(f_lo[x_hi]) +
                 ty.w_hi * tx.w_lo * static_cast<float>(f_hi[x_lo]) +
                 ty.w_hi * tx.w_hi * static_cast<float>(f_hi[x_hi]);
        }
      }
      acc /= static_cast<float>(SampleCount(ay, ax));
    }
    output[i] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void RoiAlignBackwardKernel(int64_t total, Params p, const T* __restrict__ grad,
                                       const float* __restrict__ boxes,
                                       const int32_t* __restrict__ box_indices,
                                       float* __restrict__ grad_features) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const OutIndex o = Decompose(i, p);
    const float* box = boxes + 4 * o.r;
    const int n = box_indices[o.r];
    if (n < 0 || n >= p.batch) continue;
    const Axis ay = MakeAxis(box[1], box[3], p.pooled_h, p);
    const Axis ax = MakeAxis(box[0], box[2], p.pooled_w, p);
    const float g = static_cast<float>(grad[i]) / static_cast<float>(SampleCount(ay, ax));
    const int64_t row = static_cast<int64_t>(p.width) * p.channels;
    float* d = grad_features + static_cast<int64_t>(n) * p.height * row + o.c;
    for (int iy = 0; iy < ay.grid; ++iy) {
      const Tap ty = MakeTap(SamplePos(ay, o.ph, iy), p.height);
      if (!ty.valid) continue;
      float* d_lo = d + ty.lo * row;
      float* d_hi = d + ty.hi * row;
      for (int ix = 0; ix < ax.grid; ++ix) {
        const Tap tx = MakeTap(SamplePos(ax, o.pw, ix), p.width);
        if (!tx.valid) continue;
        const int64_t x_lo = static_cast<int64_t>(tx.lo) * p.channels;
        const int64_t x_hi = static_cast<int64_t>(tx.hi) * p.channels;
        atomicAdd(d_lo + x_lo, g * ty.w_lo * tx.w_lo);
        atomicAdd(d_lo + x_hi, g * ty.w_lo * tx.w_hi);
        atomicAdd(d_hi + x_lo, g * ty.w_hi * tx.w_lo);
        atomicAdd(d_hi + x_hi, g * ty.w_hi * tx.w_hi);
      }
    }
  }
}

template <typename T>
__global__ void CastFromFloatKernel(int64_t n, const float* __restrict__ in,
                                    T* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = static_cast<T>(in[i]);
  }
}

inline unsigned int NumBlocks(int64_t total) {
  const int64_t blocks = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

// output (R, pooled_h, pooled_w, C) = RoiAlign(features (N, H, W, C), boxes, box_indices).
template <typename T>
cudaError_t LaunchForward(cudaStream_t stream, const Params& p, int64_t num_rois,
                          const T* features, const float* boxes, const int32_t* box_indices,
                          T* output) {
  const int64_t total = num_rois * p.pooled_h * p.pooled_w * p.channels;
  if (total == 0) return cudaSuccess;
  RoiAlignForwardKernel<T><<<NumBlocks(total), kThreadsPerBlock, 0, stream>>>(
      total, p, features, boxes, box_indices, output);
  return cudaGetLastError();
}

// Adds the gradient of RoiAlign w.r.t. features into grad_features (N, H, W, C) float32,
// which the caller zeroed.
template <typename T>
cudaError_t LaunchBackward(cudaStream_t stream, const Params& p, int64_t num_rois, const T* grad,
                           const float* boxes, const int32_t* box_indices,
                           float* grad_features) {
  const int64_t total = num_rois * p.pooled_h * p.pooled_w * p.channels;
  if (total == 0) return cudaSuccess;
  RoiAlignBackwardKernel<T><<<NumBlocks(total), kThreadsPerBlock, 0, stream>>>(
      total, p, grad, boxes, box_indices, grad_features);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchCastFromFloat(cudaStream_t stream, int64_t n, const float* in, T* out) {
  if (n == 0) return cudaSuccess;
  CastFromFloatKernel<T><<<NumBlocks(n), kThreadsPerBlock, 0, stream>>>(n, in, out);
  return cudaGetLastError();
}

}  // namespace roi_align
}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_ROI_ALIGN_GPU_KERNELS_CU_H_
