// C entry points over roi_align_cpu.h (single-threaded) for run_harness.py, so that the GPU
// kernel is compared with the CPU kernel built from the same headers as the TF op.
#include <vector>

#include "../roi_align_cpu.h"

using tfmrcnn::roi_align::Params;

extern "C" {

void ra_cpu_forward(const float* features, const float* boxes, const int* box_indices,
                    float* output, long long num_rois, int n, int h, int w, int c, int ph,
                    int pw, float scale, int sampling, int aligned) {
  Params p;
  p.batch = n; p.height = h; p.width = w; p.channels = c;
  p.pooled_h = ph; p.pooled_w = pw;
  p.spatial_scale = scale; p.sampling_ratio = sampling; p.aligned = aligned != 0;
  std::vector<float> scratch(tfmrcnn::roi_align::ForwardScratchSize(p));
  tfmrcnn::roi_align::ForwardRange(p, features, boxes, box_indices, 0, num_rois, output,
                                   scratch.data());
}

// Adds into grad_features (zeroed by the caller).
void ra_cpu_backward(const float* grad, const float* boxes, const int* box_indices,
                     float* grad_features, long long num_rois, int n, int h, int w, int c,
                     int ph, int pw, float scale, int sampling, int aligned) {
  Params p;
  p.batch = n; p.height = h; p.width = w; p.channels = c;
  p.pooled_h = ph; p.pooled_w = pw;
  p.spatial_scale = scale; p.sampling_ratio = sampling; p.aligned = aligned != 0;
  std::vector<float> scratch(tfmrcnn::roi_align::BackwardScratchSize(p));
  tfmrcnn::roi_align::BackwardRows(p, grad, boxes, box_indices, num_rois, 0,
                                   static_cast<long long>(n) * h, grad_features, scratch.data());
}

}  // extern "C"
