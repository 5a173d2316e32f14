// Winograd F(4x4, 3x3) tile transforms as TensorFlow ops (CPU; float32, and float64 for
// gradient checks). The math is in winograd_cpu.h; tfmrcnn/ops/winograd.py composes them with a
// batched matmul into a 3x3 convolution and registers their gradients.
#include <algorithm>
#include <cstring>

#include "cpu_workers.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "winograd_cpu.h"

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
using winograd::Geometry;

namespace {

constexpr int kTransformed = winograd::kAlpha * winograd::kAlpha;  // 36

// P = N * ceil(H/4) * ceil(W/4), or unknown.
absl::Status TileDim(InferenceContext* c, DimensionHandle n, DimensionHandle h, DimensionHandle w,
                     DimensionHandle* p) {
  if (!c->ValueKnown(n) || !c->ValueKnown(h) || !c->ValueKnown(w)) {
    *p = c->UnknownDim();
    return absl::OkStatus();
  }
  Geometry g;
  g.batch = c->Value(n);
  g.height = c->Value(h);
  g.width = c->Value(w);
  *p = c->MakeDim(g.Tiles());
  return absl::OkStatus();
}

// Output (N, H, W, C) from a (3,) image_shape tensor [N, H, W] and the channel dim.
absl::Status PixelsShape(InferenceContext* c, int image_shape_input, DimensionHandle channels) {
  ShapeHandle nhw;
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(image_shape_input, &nhw));
  TF_RETURN_IF_ERROR(c->WithRank(nhw, 3, &nhw));
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Concatenate(nhw, c->Vector(channels), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status PixelsToTilesShape(InferenceContext* c) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  DimensionHandle p;
  TF_RETURN_IF_ERROR(TileDim(c, c->Dim(x, 0), c->Dim(x, 1), c->Dim(x, 2), &p));
  c->set_output(0, c->MakeShape({kTransformed, p, c->Dim(x, 3)}));
  return absl::OkStatus();
}

absl::Status TilesToPixelsShape(InferenceContext* c) {
  ShapeHandle m;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &m));
  DimensionHandle k;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(m, 0), kTransformed, &k));
  return PixelsShape(c, 1, c->Dim(m, 2));
}

}  // namespace

REGISTER_OP("WinogradInputTransform")
    .Input("x: T")            // (N, H, W, C)
    .Output("v: T")           // (36, P, C)
    .Attr("T: {float, double}")
    .SetShapeFn(PixelsToTilesShape)
    .Doc("Winograd F(4x4,3x3) input transform B^T d B of every 6x6 tile (stride 4, pad 1).");

REGISTER_OP("WinogradInputTransformGrad")
    .Input("grad: T")             // (36, P, C)
    .Input("image_shape: int32")  // (3,) [N, H, W] of the forward input
    .Output("grad_x: T")          // (N, H, W, C)
    .Attr("T: {float, double}")
    .SetShapeFn(TilesToPixelsShape)
    .Doc("Adjoint of WinogradInputTransform: overlapping tiles B g B^T summed into pixels.");

REGISTER_OP("WinogradOutputTransform")
    .Input("m: T")                // (36, P, K)
    .Input("image_shape: int32")  // (3,) [N, H, W] of the output
    .Input("bias: T")             // (K,) added to every pixel, or (0,) for none
    .Output("y: T")               // (N, H, W, K)
    .Attr("T: {float, double}")
    .Attr("relu: bool = false")
    .SetShapeFn(TilesToPixelsShape)
    .Doc("Winograd F(4x4,3x3) output transform A^T m A of every tile, cropped to (H, W), "
         "plus bias, then ReLU if relu.");

REGISTER_OP("WinogradOutputTransformGrad")
    .Input("grad: T")   // (N, H, W, K)
    .Output("grad_m: T")  // (36, P, K)
    .Attr("T: {float, double}")
    .SetShapeFn(PixelsToTilesShape)
    .Doc("Adjoint of WinogradOutputTransform: A g A^T of every 4x4 gradient tile.");

namespace {

// float kernels are compiled for several x86 levels and picked when the library loads (GCC
// function multi-versioning), so that the .so stays portable (no -march) yet uses AVX-512 here.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TFMRCNN_CPU_CLONES \
  __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define TFMRCNN_CPU_CLONES
#endif

TFMRCNN_CPU_CLONES void InputTransformF(const Geometry& g, const float* x, int64_t b, int64_t e,
                                        float* v) {
  winograd::GatherTiles<float, winograd::InputTransform>(g, x, b, e, v);
}
TFMRCNN_CPU_CLONES void OutputTransformGradF(const Geometry& g, const float* dy, int64_t b,
                                             int64_t e, float* dm) {
  winograd::GatherTiles<float, winograd::OutputTransformGrad>(g, dy, b, e, dm);
}
TFMRCNN_CPU_CLONES void OutputTransformF(const Geometry& g, const float* m, int64_t b, int64_t e,
                                         float* y, const float* bias, bool relu) {
  if (relu) {
    winograd::ScatterTiles<float, winograd::OutputTransform, false, true>(g, m, b, e, y, bias);
  } else {
    winograd::ScatterTiles<float, winograd::OutputTransform, false, false>(g, m, b, e, y, bias);
  }
}
TFMRCNN_CPU_CLONES void InputTransformGradF(const Geometry& g, const float* dv, int64_t b,
                                            int64_t e, float* dx) {
  winograd::ScatterTiles<float, winograd::InputTransformGrad, true>(g, dv, b, e, dx);
}

// One entry point per transform and type: float goes through the clones above.
template <typename T>
struct Transforms {
  static void Input(const Geometry& g, const T* x, int64_t b, int64_t e, T* v) {
    winograd::GatherTiles<T, winograd::InputTransform>(g, x, b, e, v);
  }
  static void OutputGrad(const Geometry& g, const T* x, int64_t b, int64_t e, T* v) {
    winograd::GatherTiles<T, winograd::OutputTransformGrad>(g, x, b, e, v);
  }
  static void Output(const Geometry& g, const T* m, int64_t b, int64_t e, T* y, const T* bias,
                     bool relu) {
    if (relu) {
      winograd::ScatterTiles<T, winograd::OutputTransform, false, true>(g, m, b, e, y, bias);
    } else {
      winograd::ScatterTiles<T, winograd::OutputTransform, false, false>(g, m, b, e, y, bias);
    }
  }
  static void InputGrad(const Geometry& g, const T* m, int64_t b, int64_t e, T* y) {
    winograd::ScatterTiles<T, winograd::InputTransformGrad, true>(g, m, b, e, y);
  }
};
template <>
struct Transforms<float> {
  static constexpr auto Input = InputTransformF;
  static constexpr auto OutputGrad = OutputTransformGradF;
  static constexpr auto Output = OutputTransformF;
  static constexpr auto InputGrad = InputTransformGradF;
};

// Work estimate per tile and channel for ParallelFor (about 36 x 12 multiply-adds).
constexpr int64_t kCostPerTileChannel = 500;

absl::Status GeometryOfPixels(const Tensor& x, Geometry* g) {
  if (x.dims() != 4) {
    return absl::InvalidArgumentError("expected NHWC (rank 4), got " + x.shape().DebugString());
  }
  g->batch = x.dim_size(0);
  g->height = x.dim_size(1);
  g->width = x.dim_size(2);
  g->channels = x.dim_size(3);
  return absl::OkStatus();
}

absl::Status GeometryOfTiles(const Tensor& m, const Tensor& image_shape, Geometry* g) {
  if (m.dims() != 3 || m.dim_size(0) != kTransformed) {
    return absl::InvalidArgumentError("expected transformed tiles (36, P, C), got " +
                                      m.shape().DebugString());
  }
  if (image_shape.dims() != 1 || image_shape.NumElements() != 3) {
    return absl::InvalidArgumentError("image_shape must be [N, H, W], got shape " +
                                      image_shape.shape().DebugString());
  }
  const auto nhw = image_shape.flat<int32_t>();
  if (nhw(0) < 0 || nhw(1) < 0 || nhw(2) < 0) {
    return absl::InvalidArgumentError("image_shape must be non-negative");
  }
  g->batch = nhw(0);
  g->height = nhw(1);
  g->width = nhw(2);
  g->channels = m.dim_size(2);
  if (g->Tiles() != m.dim_size(1)) {
    return absl::InvalidArgumentError(
        "transformed tiles have P = " + std::to_string(m.dim_size(1)) + " but image_shape [" +
        std::to_string(g->batch) + ", " + std::to_string(g->height) + ", " +
        std::to_string(g->width) + "] has " + std::to_string(g->Tiles()) + " tiles");
  }
  return absl::OkStatus();
}

// Runs fn(begin, end) over all tiles in parallel.
template <typename Fn>
void ForTiles(OpKernelContext* ctx, const Geometry& g, Fn fn) {
  Workers(ctx)->ParallelFor(g.Tiles(), std::max<int64_t>(g.channels * kCostPerTileChannel, 1),
                            fn);
}

}  // namespace

// WinogradInputTransform (kOutputGrad false) and WinogradOutputTransformGrad (true): pixels
// (N, H, W, C) -> transformed tiles (36, P, C).
template <typename T, bool kOutputGrad>
class WinogradPixelsToTilesOp : public OpKernel {
 public:
  explicit WinogradPixelsToTilesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& pixels = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, GeometryOfPixels(pixels, &g));
    Tensor* tiles = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({kTransformed, g.Tiles(), g.channels}),
                                             &tiles));
    if (tiles->NumElements() == 0) return;
    const T* src = pixels.flat<T>().data();
    T* dst = tiles->flat<T>().data();
    ForTiles(ctx, g, [&](int64_t b, int64_t e) {
      if (kOutputGrad) {
        Transforms<T>::OutputGrad(g, src, b, e, dst);
      } else {
        Transforms<T>::Input(g, src, b, e, dst);
      }
    });
  }
};

template <typename T>
class WinogradOutputTransformOp : public OpKernel {
 public:
  explicit WinogradOutputTransformOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("relu", &relu_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& m = ctx->input(0);
    const Tensor& bias = ctx->input(2);
    Geometry g;
    OP_REQUIRES_OK(ctx, GeometryOfTiles(m, ctx->input(1), &g));
    OP_REQUIRES(ctx, bias.dims() == 1 && (bias.dim_size(0) == 0 || bias.dim_size(0) == g.channels),
                absl::InvalidArgumentError("bias must be (K,) with K = " +
                                           std::to_string(g.channels) + " or empty, got " +
                                           bias.shape().DebugString()));
    const T* b = bias.NumElements() > 0 ? bias.flat<T>().data() : nullptr;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({g.batch, g.height, g.width, g.channels}), &y));
    if (y->NumElements() == 0) return;
    const T* src = m.flat<T>().data();
    T* dst = y->flat<T>().data();
    // 4x4 output tiles are disjoint and cover the image: every pixel is written once.
    ForTiles(ctx, g, [&](int64_t begin, int64_t end) {
      Transforms<T>::Output(g, src, begin, end, dst, b, relu_);
    });
  }

 private:
  bool relu_ = false;
};

template <typename T>
class WinogradInputTransformGradOp : public OpKernel {
 public:
  explicit WinogradInputTransformGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dv = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, GeometryOfTiles(dv, ctx->input(1), &g));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({g.batch, g.height, g.width, g.channels}), &dx));
    if (dx->NumElements() == 0) return;
    const T* src = dv.flat<T>().data();
    T* dst = dx->flat<T>().data();
    std::memset(dst, 0, sizeof(T) * dx->NumElements());
    // A 6x6 window of tile row ty covers pixel rows 4ty-1 .. 4ty+4, so only neighbouring tile
    // rows overlap: all even rows run in parallel, then all odd rows; the tiles of one row are
    // added one after the other by the shard that owns the row.
    const int64_t th = g.TilesH(), tw = g.TilesW();
    for (int64_t parity = 0; parity < 2; ++parity) {
      const int64_t rows_per_image = (th - parity + 1) / 2;
      const int64_t units = g.batch * rows_per_image;
      if (units == 0) continue;
      Workers(ctx)->ParallelFor(
          units, std::max<int64_t>(tw * g.channels * kCostPerTileChannel, 1),
          [&](int64_t b, int64_t e) {
            for (int64_t u = b; u < e; ++u) {
              const int64_t n = u / rows_per_image;
              const int64_t ty = 2 * (u % rows_per_image) + parity;
              const int64_t first = (n * th + ty) * tw;
              Transforms<T>::InputGrad(g, src, first, first + tw, dst);
            }
          });
    }
  }
};

#define TFMRCNN_REGISTER_WINOGRAD(T)                                                      \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("WinogradInputTransform").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
      WinogradPixelsToTilesOp<T, false>);                                                 \
  REGISTER_KERNEL_BUILDER(Name("WinogradInputTransformGrad")                              \
                              .Device(DEVICE_CPU)                                         \
                              .TypeConstraint<T>("T")                                     \
                              .HostMemory("image_shape"),                                 \
                          WinogradInputTransformGradOp<T>);                               \
  REGISTER_KERNEL_BUILDER(Name("WinogradOutputTransform")                                 \
                              .Device(DEVICE_CPU)                                         \
                              .TypeConstraint<T>("T")                                     \
                              .HostMemory("image_shape"),                                 \
                          WinogradOutputTransformOp<T>);                                  \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("WinogradOutputTransformGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      WinogradPixelsToTilesOp<T, true>);

TFMRCNN_REGISTER_WINOGRAD(float)
TFMRCNN_REGISTER_WINOGRAD(double)
#undef TFMRCNN_REGISTER_WINOGRAD

}  // namespace tfmrcnn
