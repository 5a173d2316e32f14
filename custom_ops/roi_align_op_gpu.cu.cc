// GPU kernels of RoiAlign / RoiAlignGrad (float32, float16, bfloat16; accumulation in float32).
// Compiled by custom_ops/build.py with nvcc only when CUDA is wanted; the kernels themselves are
// in roi_align_gpu_kernels.cu.h so that gpu_harness/ can test the same source without TF.
// Box indices are not range-checked on the GPU (that needs a device->host copy): an invalid
// index pools zeros and receives no gradient.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "roi_align_gpu_kernels.cu.h"
#include "roi_align_op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tfmrcnn {

using ::tensorflow::DEVICE_GPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using GPUDevice = Eigen::GpuDevice;

namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

template <typename T>
class RoiAlignGpuOp : public OpKernel {
 public:
  explicit RoiAlignGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    const cudaStream_t stream = ctx->eigen_device<GPUDevice>().stream();
    if (p.height == 0 || p.width == 0) {
      OP_REQUIRES_OK(ctx, CudaStatus(cudaMemsetAsync(output->data(), 0,
                                                     output->TotalBytes(), stream),
                                     "RoiAlign memset"));
      return;
    }
    OP_REQUIRES_OK(ctx, CudaStatus(roi_align::LaunchForward<T>(
                                       stream, p, num_rois, features.flat<T>().data(),
                                       boxes.flat<float>().data(),
                                       box_indices.flat<int32_t>().data(),
                                       output->flat<T>().data()),
                                   "RoiAlign forward kernel"));
  }

 private:
  roi_align::Params attrs_;
};

template <typename T>
class RoiAlignGradGpuOp : public OpKernel {
 public:
  explicit RoiAlignGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    const TensorShape& fshape = dfeat->shape();
    if (dfeat->NumElements() == 0) return;
    const cudaStream_t stream = ctx->eigen_device<GPUDevice>().stream();
    // float32 accumulator: the output itself for float, a temporary for 16-bit types.
    Tensor acc_t;
    float* acc;
    if (std::is_same<T, float>::value) {
      acc = reinterpret_cast<float*>(dfeat->data());
    } else {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, fshape, &acc_t));
      acc = acc_t.flat<float>().data();
    }
    OP_REQUIRES_OK(ctx, CudaStatus(cudaMemsetAsync(acc, 0, sizeof(float) * dfeat->NumElements(),
                                                   stream),
                                   "RoiAlignGrad memset"));
    OP_REQUIRES_OK(ctx, CudaStatus(roi_align::LaunchBackward<T>(
                                       stream, p, num_rois, grad.flat<T>().data(),
                                       boxes.flat<float>().data(),
                                       box_indices.flat<int32_t>().data(), acc),
                                   "RoiAlignGrad kernel"));
    if (!std::is_same<T, float>::value) {
      OP_REQUIRES_OK(ctx, CudaStatus(roi_align::LaunchCastFromFloat<T>(
                                         stream, dfeat->NumElements(), acc,
                                         dfeat->flat<T>().data()),
                                     "RoiAlignGrad cast"));
    }
  }

 private:
  roi_align::Params attrs_;
};

#define TFMRCNN_REGISTER_GPU(T)                                                          \
  REGISTER_KERNEL_BUILDER(Name("RoiAlign").Device(DEVICE_GPU).TypeConstraint<T>("T"),    \
                          RoiAlignGpuOp<T>);                                             \
  REGISTER_KERNEL_BUILDER(Name("RoiAlignGrad")                                           \
                              .Device(DEVICE_GPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .HostMemory("features_shape"),                             \
                          RoiAlignGradGpuOp<T>);
TFMRCNN_REGISTER_GPU(float)
TFMRCNN_REGISTER_GPU(Eigen::half)
TFMRCNN_REGISTER_GPU(Eigen::bfloat16)
#undef TFMRCNN_REGISTER_GPU

}  // namespace tfmrcnn

#endif  // GOOGLE_CUDA
