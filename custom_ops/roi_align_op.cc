// RoiAlign / RoiAlignGrad: op definitions and CPU kernels (float32).
// The math is in roi_align_kernel.h (shared with CUDA) and roi_align_cpu.h (separable CPU form);
// GPU kernels are registered by roi_align_op_gpu.cu.cc when the library is built with CUDA.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "roi_align_cpu.h"
#include "roi_align_op.h"
#include "cpu_workers.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfmrcnn {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

absl::Status OutputSizeAttr(InferenceContext* c, int* h, int* w) {
  std::vector<int> size;
  TF_RETURN_IF_ERROR(c->GetAttr("output_size", &size));
  if (size.size() != 2) return absl::InvalidArgumentError("output_size must be (h, w)");
  *h = size[0];
  *w = size[1];
  return absl::OkStatus();
}

// (R, 4) boxes and (R,) indices -> the R dimension.
absl::Status RoiDim(InferenceContext* c, int boxes_idx, DimensionHandle* r) {
  ShapeHandle boxes, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_idx), 2, &boxes));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_idx + 1), 1, &indices));
  DimensionHandle four;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &four));
  return c->Merge(c->Dim(boxes, 0), c->Dim(indices, 0), r);
}

}  // namespace

REGISTER_OP("RoiAlign")
    .Input("features: T")      // (N, H, W, C)
    .Input("boxes: float")     // (R, 4) xyxy in input-image pixels
    .Input("box_indices: int32")  // (R,)
    .Output("output: T")       // (R, out_h, out_w, C)
    .Attr("T: {float, half, bfloat16}")
    .Attr("output_size: list(int)")
    .Attr("spatial_scale: float")
    .Attr("sampling_ratio: int = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
      DimensionHandle r;
      TF_RETURN_IF_ERROR(RoiDim(c, 1, &r));
      int h, w;
      TF_RETURN_IF_ERROR(OutputSizeAttr(c, &h, &w));
      c->set_output(0, c->MakeShape({r, h, w, c->Dim(features, 3)}));
      return absl::OkStatus();
    })
    .Doc("detectron2 ROIAlign (torchvision roi_align) on NHWC features.");

REGISTER_OP("RoiAlignGrad")
    .Input("grad: T")            // (R, out_h, out_w, C)
    .Input("boxes: float")       // (R, 4)
    .Input("box_indices: int32")  // (R,)
    .Input("features_shape: int32")  // (4,) = shape of the forward features
    .Output("grad_features: T")  // (N, H, W, C)
    .Attr("T: {float, half, bfloat16}")
    .Attr("output_size: list(int)")
    .Attr("spatial_scale: float")
    .Attr("sampling_ratio: int = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad, out;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grad));
      DimensionHandle r;
      TF_RETURN_IF_ERROR(RoiDim(c, 1, &r));
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(3, &out));
      TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
      DimensionHandle ch;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(out, 3), c->Dim(grad, 3), &ch));
      TF_RETURN_IF_ERROR(c->ReplaceDim(out, 3, ch, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc("Gradient of RoiAlign with respect to its features.");

namespace {

absl::Status CheckIndices(const Tensor& box_indices, int batch) {
  const auto idx = box_indices.flat<int32_t>();
  for (int64_t i = 0; i < idx.size(); ++i) {
    if (idx(i) < 0 || idx(i) >= batch) {
      return absl::InvalidArgumentError("box_indices[" + std::to_string(i) + "] = " +
                                        std::to_string(idx(i)) + " is outside [0, " +
                                        std::to_string(batch) + ")");
    }
  }
  return absl::OkStatus();
}

// Boundaries (num_bands + 1 values from 0 to N * H) of row bands of about equal backward work:
// each ROI adds its estimated per-row cost to the rows it can touch.
std::vector<int64_t> RowBands(const roi_align::Params& p, const float* boxes,
                              const int32_t* box_indices, int64_t num_rois, int num_bands) {
  const int64_t rows = int64_t{p.batch} * p.height;
  std::vector<double> work(rows + 1, 0.0);  // difference array of the per-row work
  for (int64_t r = 0; r < num_rois; ++r) {
    int lo, hi;
    roi_align::RoiRowBound(boxes + 4 * r, p, &lo, &hi);
    if (lo >= hi) continue;
    const double per_row = static_cast<double>(roi_align::RoiCost(boxes + 4 * r, p)) / (hi - lo);
    const int64_t row0 = int64_t{box_indices[r]} * p.height;
    work[row0 + lo] += per_row;
    work[row0 + hi] -= per_row;
  }
  double total = 0.0, level = 0.0;
  for (int64_t i = 0; i < rows; ++i) {
    level += work[i];
    total += level + 1.0;  // +1: every row also has a fixed cost
    work[i] = total;       // now the cumulative work up to and including row i
  }
  std::vector<int64_t> bounds = {0};
  for (int k = 1; k < num_bands; ++k) {
    const double target = total * k / num_bands;
    const int64_t cut = std::lower_bound(work.begin(), work.begin() + rows, target) -
                        work.begin() + 1;
    if (cut > bounds.back() && cut < rows) bounds.push_back(cut);
  }
  bounds.push_back(rows);
  return bounds;
}

}  // namespace

class RoiAlignCpuOp : public OpKernel {
 public:
  explicit RoiAlignCpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ParseRoiAlignAttrs(ctx, &attrs_);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& box_indices = ctx->input(2);
    roi_align::Params p;
    int64_t num_rois;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, PrepareForward(ctx, attrs_, &p, &num_rois, &output));
    if (output->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, CheckIndices(box_indices, p.batch));
    float* out = output->flat<float>().data();
    if (p.height == 0 || p.width == 0) {  // nothing to sample from
      std::memset(out, 0, sizeof(float) * output->NumElements());
      return;
    }
    const float* f = features.flat<float>().data();
    const float* b = boxes.flat<float>().data();
    const int32_t* bi = box_indices.flat<int32_t>().data();
    int64_t cost = 0;
    for (int64_t r = 0; r < num_rois; ++r) cost += roi_align::RoiCost(b + 4 * r, p);
    // ROIs are independent: shard them; each shard owns its output rows.
    Workers(ctx)->ParallelFor(
        num_rois, std::max<int64_t>(cost / num_rois, 1), [&](int64_t begin, int64_t end) {
          std::unique_ptr<float[]> scratch(new float[roi_align::ForwardScratchSize(p)]);
          roi_align::ForwardRange(p, f, b, bi, begin, end, out, scratch.get());
        });
  }

 private:
  roi_align::Params attrs_;
};

class RoiAlignGradCpuOp : public OpKernel {
 public:
  explicit RoiAlignGradCpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ParseRoiAlignAttrs(ctx, &attrs_);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& box_indices = ctx->input(2);
    roi_align::Params p;
    int64_t num_rois;
    Tensor* dfeat = nullptr;
    OP_REQUIRES_OK(ctx, PrepareBackward(ctx, attrs_, &p, &num_rois, &dfeat));
    if (dfeat->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, CheckIndices(box_indices, p.batch));
    float* d = dfeat->flat<float>().data();
    auto* pool = Workers(ctx);
    const int64_t row = int64_t{p.width} * p.channels;
    const float* g = grad.flat<float>().data();
    const float* b = boxes.flat<float>().data();
    const int32_t* bi = box_indices.flat<int32_t>().data();
    // ROIs overlap, so sharding over ROIs would race on d. Shards take disjoint bands of the
    // stacked N * H feature rows instead, cut so that each band carries about the same work;
    // a band zeroes its rows, then adds every ROI's contribution to them.
    const std::vector<int64_t> bands = RowBands(p, b, bi, num_rois, 4 * pool->NumThreads());
    const int64_t num_bands = static_cast<int64_t>(bands.size()) - 1;
    int64_t cost = int64_t{p.batch} * p.height * row;  // zeroing
    for (int64_t r = 0; r < num_rois; ++r) cost += roi_align::RoiCost(b + 4 * r, p);
    pool->ParallelFor(num_bands, std::max<int64_t>(cost / num_bands, 1),
                      [&](int64_t begin, int64_t end) {
                        std::unique_ptr<float[]> scratch(
                            new float[roi_align::BackwardScratchSize(p)]);
                        for (int64_t k = begin; k < end; ++k) {
                          std::memset(d + bands[k] * row, 0,
                                      sizeof(float) * (bands[k + 1] - bands[k]) * row);
                          roi_align::BackwardRows(p, g, b, bi, num_rois, bands[k], bands[k + 1],
                                                  d, scratch.get());
                        }
                      });
  }

 private:
  roi_align::Params attrs_;
};

REGISTER_KERNEL_BUILDER(
    Name("RoiAlign").Device(DEVICE_CPU).TypeConstraint<float>("T"), RoiAlignCpuOp);
REGISTER_KERNEL_BUILDER(
    Name("RoiAlignGrad").Device(DEVICE_CPU).TypeConstraint<float>("T").HostMemory(
        "features_shape"),
    RoiAlignGradCpuOp);

}  // namespace tfmrcnn
