// C entry points over roi_align_gpu_kernels.cu.h for run_harness.py (no TensorFlow).
// dtype: 0 = float32, 1 = float16 (__half), 2 = bfloat16 (__nv_bfloat16). Pointers are device
// pointers; every call synchronizes and returns a cudaError_t (0 = success).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../roi_align_gpu_kernels.cu.h"

using tfmrcnn::roi_align::Params;

namespace {

Params MakeParams(int n, int h, int w, int c, int ph, int pw, float scale, int sampling,
                  int aligned) {
  Params p;
  p.batch = n;
  p.height = h;
  p.width = w;
  p.channels = c;
  p.pooled_h = ph;
  p.pooled_w = pw;
  p.spatial_scale = scale;
  p.sampling_ratio = sampling;
  p.aligned = aligned != 0;
  return p;
}

int Sync(cudaError_t launch) {
  if (launch != cudaSuccess) return static_cast<int>(launch);
  return static_cast<int>(cudaDeviceSynchronize());
}

}  // namespace

extern "C" {

int ra_forward(int dtype, const void* features, const float* boxes, const int* box_indices,
               void* output, long long num_rois, int n, int h, int w, int c, int ph, int pw,
               float scale, int sampling, int aligned) {
  const Params p = MakeParams(n, h, w, c, ph, pw, scale, sampling, aligned);
  using namespace tfmrcnn::roi_align;
  switch (dtype) {
    case 0:
      return Sync(LaunchForward<float>(0, p, num_rois, static_cast<const float*>(features),
                                       boxes, box_indices, static_cast<float*>(output)));
    case 1:
      return Sync(LaunchForward<__half>(0, p, num_rois, static_cast<const __half*>(features),
                                        boxes, box_indices, static_cast<__half*>(output)));
    case 2:
      return Sync(LaunchForward<__nv_bfloat16>(
          0, p, num_rois, static_cast<const __nv_bfloat16*>(features), boxes, box_indices,
          static_cast<__nv_bfloat16*>(output)));
  }
  return -1;
}

// Adds into grad_features (float32, zeroed by the caller).
int ra_backward(int dtype, const void* grad, const float* boxes, const int* box_indices,
                float* grad_features, long long num_rois, int n, int h, int w, int c, int ph,
                int pw, float scale, int sampling, int aligned) {
  const Params p = MakeParams(n, h, w, c, ph, pw, scale, sampling, aligned);
  using namespace tfmrcnn::roi_align;
  switch (dtype) {
    case 0:
      return Sync(LaunchBackward<float>(0, p, num_rois, static_cast<const float*>(grad), boxes,
                                        box_indices, grad_features));
    case 1:
      return Sync(LaunchBackward<__half>(0, p, num_rois, static_cast<const __half*>(grad),
                                         boxes, box_indices, grad_features));
    case 2:
      return Sync(LaunchBackward<__nv_bfloat16>(0, p, num_rois,
                                                static_cast<const __nv_bfloat16*>(grad), boxes,
                                                box_indices, grad_features));
  }
  return -1;
}

int ra_cast(int dtype, long long count, const float* in, void* out) {
  using namespace tfmrcnn::roi_align;
  switch (dtype) {
    case 1:
      return Sync(LaunchCastFromFloat<__half>(0, count, in, static_cast<__half*>(out)));
    case 2:
      return Sync(LaunchCastFromFloat<__nv_bfloat16>(0, count, in,
                                                     static_cast<__nv_bfloat16*>(out)));
  }
  return -1;
}

const char* ra_error(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
