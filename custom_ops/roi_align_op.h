// TensorFlow-side pieces shared by the CPU op kernels (roi_align_op.cc) and the GPU ones
// (roi_align_op_gpu.cu.cc): attribute parsing, input validation, output allocation.
#ifndef TFMRCNN_CUSTOM_OPS_ROI_ALIGN_OP_H_
#define TFMRCNN_CUSTOM_OPS_ROI_ALIGN_OP_H_

#include <vector>

#include "roi_align_kernel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tfmrcnn {

// Reads output_size / spatial_scale / sampling_ratio / aligned into `p` (geometry left unset).
inline void ParseRoiAlignAttrs(tensorflow::OpKernelConstruction* ctx, roi_align::Params* p) {
  std::vector<int> size;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("output_size", &size));
  OP_REQUIRES(ctx, size.size() == 2 && size[0] > 0 && size[1] > 0,
              absl::InvalidArgumentError("output_size must be two positive ints (h, w)"));
  p->pooled_h = size[0];
  p->pooled_w = size[1];
  OP_REQUIRES_OK(ctx, ctx->GetAttr("spatial_scale", &p->spatial_scale));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("sampling_ratio", &p->sampling_ratio));
  OP_REQUIRES(ctx, p->sampling_ratio >= 0,
              absl::InvalidArgumentError("sampling_ratio must be >= 0 (0 = adaptive)"));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("aligned", &p->aligned));
}

// Checks boxes (R, 4) and box_indices (R,); returns R through `num_rois`.
inline absl::Status CheckBoxes(const tensorflow::Tensor& boxes,
                               const tensorflow::Tensor& box_indices, int64_t* num_rois) {
  if (boxes.dims() != 2 || boxes.dim_size(1) != 4) {
    return absl::InvalidArgumentError("boxes must be (R, 4), got " +
                                      boxes.shape().DebugString());
  }
  if (box_indices.dims() != 1 || box_indices.dim_size(0) != boxes.dim_size(0)) {
    return absl::InvalidArgumentError("box_indices must be (R,) with R = boxes rows, got " +
                                      box_indices.shape().DebugString());
  }
  *num_rois = boxes.dim_size(0);
  return absl::OkStatus();
}

// Fills the geometry of `p` from an NHWC shape.
inline absl::Status SetGeometry(const tensorflow::TensorShape& nhwc, roi_align::Params* p) {
  if (nhwc.dims() != 4) {
    return absl::InvalidArgumentError("features must be NHWC (rank 4), got " +
                                      nhwc.DebugString());
  }
  const int64_t limit = int64_t{1} << 31;
  for (int i = 0; i < 4; ++i) {
    if (nhwc.dim_size(i) >= limit) return absl::InvalidArgumentError("feature dim too large");
  }
  p->batch = static_cast<int>(nhwc.dim_size(0));
  p->height = static_cast<int>(nhwc.dim_size(1));
  p->width = static_cast<int>(nhwc.dim_size(2));
  p->channels = static_cast<int>(nhwc.dim_size(3));
  return absl::OkStatus();
}

// Forward kernels' common start: validates features (N, H, W, C), boxes (R, 4) and
// box_indices (R,), fills the geometry of `p` and allocates the (R, out_h, out_w, C) output.
inline absl::Status PrepareForward(tensorflow::OpKernelContext* ctx,
                                   const roi_align::Params& attrs, roi_align::Params* p,
                                   int64_t* num_rois, tensorflow::Tensor** output) {
  *p = attrs;
  TF_RETURN_IF_ERROR(SetGeometry(ctx->input(0).shape(), p));
  TF_RETURN_IF_ERROR(CheckBoxes(ctx->input(1), ctx->input(2), num_rois));
  return ctx->allocate_output(
      0, tensorflow::TensorShape({*num_rois, p->pooled_h, p->pooled_w, p->channels}), output);
}

// Backward kernels' common start: inputs (grad, boxes, box_indices, features_shape); checks
// that grad is (R, out_h, out_w, C), fills `p` and allocates the feature gradient (N, H, W, C).
inline absl::Status PrepareBackward(tensorflow::OpKernelContext* ctx,
                                    const roi_align::Params& attrs, roi_align::Params* p,
                                    int64_t* num_rois, tensorflow::Tensor** grad_features) {
  const tensorflow::Tensor& grad = ctx->input(0);
  const tensorflow::Tensor& shape_t = ctx->input(3);
  if (shape_t.dims() != 1 || shape_t.NumElements() != 4) {
    return absl::InvalidArgumentError("features_shape must be a (4,) int32 vector");
  }
  tensorflow::TensorShape fshape;
  const auto dims = shape_t.vec<int32_t>();
  TF_RETURN_IF_ERROR(tensorflow::TensorShapeUtils::MakeShape(dims.data(), 4, &fshape));
  *p = attrs;
  TF_RETURN_IF_ERROR(SetGeometry(fshape, p));
  TF_RETURN_IF_ERROR(CheckBoxes(ctx->input(1), ctx->input(2), num_rois));
  if (grad.dims() != 4 || grad.dim_size(0) != *num_rois || grad.dim_size(1) != p->pooled_h ||
      grad.dim_size(2) != p->pooled_w || grad.dim_size(3) != p->channels) {
    return absl::InvalidArgumentError("grad must be (R, out_h, out_w, C), got " +
                                      grad.shape().DebugString());
  }
  return ctx->allocate_output(0, fshape, grad_features);
}

}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_ROI_ALIGN_OP_H_
