// Winograd F(4x4, 3x3) tile transforms on NHWC tensors (CPU, no TensorFlow dependency).
//
// A 3x3 stride-1 convolution with padding 1 becomes, per 4x4 output tile (Lavin & Gray 2015,
// interpolation points 0, 1, -1, 2, -2, infinity):
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
// where d is the 6x6 input tile starting one pixel above-left of the output tile (the padding),
// g the 3x3 kernel, and (.) the element-wise product, which summed over input channels is 36
// independent matrix products. The products are done by TensorFlow's batched matmul; this file
// owns the four memory-bound tile transforms:
//   GatherTiles<InputTransform>       x (N, H, W, C) -> v (36, P, C)  v = B^T d B
//   ScatterTiles<OutputTransform>     m (36, P, K) -> y (N, H, W, K)  y = A^T m A (cropped),
//                                     optionally + bias and ReLU (the conv layer's epilogue)
//   GatherTiles<OutputTransformGrad>  dy (N, H, W, K) -> dm (36, P, K)  dm = A dy A^T
//   ScatterTiles<InputTransformGrad>  dv (36, P, C) -> dx (N, H, W, C)  dx += B dv B^T
// P = N * ceil(H/4) * ceil(W/4) tiles, ordered (n, tile row, tile column). Row k of the 36 is
// the transformed-tile element (k / 6, k % 6). Pixels outside the image read as 0 and are not
// written. Input tiles overlap by 2 pixels, so the input gradient accumulates.
#ifndef TFMRCNN_CUSTOM_OPS_WINOGRAD_CPU_H_
#define TFMRCNN_CUSTOM_OPS_WINOGRAD_CPU_H_

#include <algorithm>
#include <cstdint>

namespace tfmrcnn {
namespace winograd {

constexpr int kOutTile = 4;  // output pixels per tile side (m)
constexpr int kAlpha = 6;    // transformed tile side (m + r - 1)
constexpr int kBlock = 64;   // channels transformed at once (fits the tile scratch in L1)

// B^T: rows are the transformed-tile index, columns the input-tile pixel.
constexpr float kBT[kAlpha][kAlpha] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                       {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                       {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
// A^T: rows are the output-tile pixel, columns the transformed-tile index.
constexpr float kAT[kOutTile][kAlpha] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

// Each transform is a matrix L (kOut x kIn) applied on both sides of a tile: out = L t L^T.
// kOffset: how far the pixel tile starts above/left of 4 * tile index.
struct InputTransform {  // pixels (6x6, overlapping) -> transformed (6x6): L = B^T
  static constexpr int kIn = kAlpha, kOut = kAlpha, kOffset = 1;
  static constexpr float L(int o, int i) { return kBT[o][i]; }
};
struct OutputTransformGrad {  // pixel gradient (4x4) -> transformed (6x6): L = A
  static constexpr int kIn = kOutTile, kOut = kAlpha, kOffset = 0;
  static constexpr float L(int o, int i) { return kAT[i][o]; }
};
struct OutputTransform {  // transformed (6x6) -> pixels (4x4, disjoint): L = A^T
  static constexpr int kIn = kAlpha, kOut = kOutTile, kOffset = 0;
  static constexpr float L(int o, int i) { return kAT[o][i]; }
};
struct InputTransformGrad {  // transformed gradient (6x6) -> pixels (6x6, overlapping): L = B
  static constexpr int kIn = kAlpha, kOut = kAlpha, kOffset = 1;
  static constexpr float L(int o, int i) { return kBT[i][o]; }
};

struct Geometry {
  int64_t batch = 0, height = 0, width = 0, channels = 0;
  int64_t TilesH() const { return (height + kOutTile - 1) / kOutTile; }
  int64_t TilesW() const { return (width + kOutTile - 1) / kOutTile; }
  int64_t Tiles() const { return batch * TilesH() * TilesW(); }
};

// Top-left pixel (row, column) of tile `tile`'s pixel window and its image index.
template <typename Tr>
inline void TileOrigin(const Geometry& g, int64_t tile, int64_t* n, int64_t* y0, int64_t* x0) {
  const int64_t per_image = g.TilesH() * g.TilesW();
  *n = tile / per_image;
  const int64_t r = tile % per_image;
  *y0 = (r / g.TilesW()) * kOutTile - Tr::kOffset;
  *x0 = (r % g.TilesW()) * kOutTile - Tr::kOffset;
}

// First pass of a two-sided transform: t[o][j] = sum_i L(o, i) in[i][j] for cb channels.
template <typename T, typename Tr>
inline void TransformRows(const T (&in)[Tr::kIn][Tr::kIn][kBlock], int cb,
                          T (&t)[Tr::kOut][Tr::kIn][kBlock]) {
#pragma GCC unroll 6
  for (int o = 0; o < Tr::kOut; ++o) {
    for (int j = 0; j < Tr::kIn; ++j) {
      for (int c = 0; c < cb; ++c) {
        T s = 0;
#pragma GCC unroll 6
        for (int i = 0; i < Tr::kIn; ++i) {
          if (Tr::L(o, i) != 0) s += T(Tr::L(o, i)) * in[i][j][c];
        }
        t[o][j][c] = s;
      }
    }
  }
}

// Pixels -> transformed tiles for tiles [begin, end): out[k][tile][c] = (L t L^T)[k / 6][k % 6].
template <typename T, typename Tr>
inline void GatherTiles(const Geometry& g, const T* pixels, int64_t begin, int64_t end, T* out) {
  constexpr int kIn = Tr::kIn, kOut = Tr::kOut;
  const int64_t C = g.channels, plane = g.Tiles() * C;
  T d[kIn][kIn][kBlock];
  T t[kOut][kIn][kBlock];
  for (int64_t tile = begin; tile < end; ++tile) {
    int64_t n, y0, x0;
    TileOrigin<Tr>(g, tile, &n, &y0, &x0);
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int cb = static_cast<int>(std::min<int64_t>(kBlock, C - c0));
      for (int i = 0; i < kIn; ++i) {
        const int64_t y = y0 + i;
        for (int j = 0; j < kIn; ++j) {
          const int64_t x = x0 + j;
          if (y < 0 || y >= g.height || x < 0 || x >= g.width) {
            std::fill(d[i][j], d[i][j] + cb, T(0));
          } else {
            std::copy_n(pixels + ((n * g.height + y) * g.width + x) * C + c0, cb, d[i][j]);
          }
        }
      }
      TransformRows<T, Tr>(d, cb, t);
      for (int o = 0; o < kOut; ++o) {
#pragma GCC unroll 6
        for (int p = 0; p < kOut; ++p) {
          T* dst = out + (o * kOut + p) * plane + tile * C + c0;
          for (int c = 0; c < cb; ++c) {
            T s = 0;
#pragma GCC unroll 6
            for (int j = 0; j < kIn; ++j) {
              if (Tr::L(p, j) != 0) s += T(Tr::L(p, j)) * t[o][j][c];
            }
            dst[c] = s;
          }
        }
      }
    }
  }
}

// Transformed tiles -> pixels for tiles [begin, end): the (L s L^T) tile is written (or added,
// kAccumulate) at its pixel window, cropped to the image. When writing, `bias` (C values, or
// null) is added and kRelu clamps at 0, so that a conv layer needs no extra pass over its output.
template <typename T, typename Tr, bool kAccumulate, bool kRelu = false>
inline void ScatterTiles(const Geometry& g, const T* in, int64_t begin, int64_t end, T* pixels,
                         const T* bias = nullptr) {
  static_assert(!(kAccumulate && kRelu), "ReLU applies to the final value only");
  constexpr int kIn = Tr::kIn, kOut = Tr::kOut;
  const int64_t C = g.channels, plane = g.Tiles() * C;
  T s[kIn][kIn][kBlock];
  T t[kOut][kIn][kBlock];
  for (int64_t tile = begin; tile < end; ++tile) {
    int64_t n, y0, x0;
    TileOrigin<Tr>(g, tile, &n, &y0, &x0);
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int cb = static_cast<int>(std::min<int64_t>(kBlock, C - c0));
      for (int a = 0; a < kIn; ++a) {
        for (int b = 0; b < kIn; ++b) {
          std::copy_n(in + (a * kIn + b) * plane + tile * C + c0, cb, s[a][b]);
        }
      }
      TransformRows<T, Tr>(s, cb, t);
      for (int o = 0; o < kOut; ++o) {
        const int64_t y = y0 + o;
        if (y < 0 || y >= g.height) continue;
#pragma GCC unroll 6
        for (int p = 0; p < kOut; ++p) {
          const int64_t x = x0 + p;
          if (x < 0 || x >= g.width) continue;
          T* dst = pixels + ((n * g.height + y) * g.width + x) * C + c0;
          for (int c = 0; c < cb; ++c) {
            T acc = 0;
#pragma GCC unroll 6
            for (int b = 0; b < kIn; ++b) {
              if (Tr::L(p, b) != 0) acc += T(Tr::L(p, b)) * t[o][b][c];
            }
            if (kAccumulate) {
              dst[c] += acc;
            } else {
              if (bias != nullptr) acc += bias[c0 + c];
              dst[c] = kRelu ? std::max(acc, T(0)) : acc;
            }
          }
        }
      }
    }
  }
}

}  // namespace winograd
}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_WINOGRAD_CPU_H_
