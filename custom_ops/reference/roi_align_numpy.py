"""Independent NumPy ROIAlign written from the definition (detectron2 ROIAlign / torchvision
roi_align), used as the reference by the op tests, the pooler tests and custom_ops/gpu_harness.
NumPy only (the GPU harness runs where TensorFlow is not installed); the one copy of this
definition in the repository.

Each ROI is turned into a dense matrix M (out_h * out_w, H * W): row (ph, pw) holds the bilinear
weights of every sample of that bin divided by the bin's sample count. Then
  forward:  out[r] = M @ F[n]            backward: dF[n] += M.T @ G[r]
so the adjoint is exactly the transpose. Sample positions are computed in float32 in the
definition's order (torchvision works in float32); weights and sums are float64.
"""
import math

import numpy as np


def _axis(lo, hi, pooled, spatial_scale, sampling_ratio, aligned):
    """(start, bin_size, grid) of one ROI along one axis, float32 like the definition."""
    f32 = np.float32
    offset = f32(0.5) if aligned else f32(0.0)
    start = f32(lo) * f32(spatial_scale) - offset
    end = f32(hi) * f32(spatial_scale) - offset
    size = f32(end - start)
    if not aligned:
        size = max(size, f32(1.0))
    bin_size = f32(size / f32(pooled))
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        grid = int(math.ceil(float(f32(size / f32(pooled)))))
    return start, bin_size, grid


def _samples(start, bin_size, grid, pooled):
    """(pooled, grid) float32 sample coordinates: start + b*bin + (i+0.5)*bin/grid."""
    f32 = np.float32
    if grid <= 0:
        return np.zeros((pooled, 0), np.float32)
    b = np.arange(pooled, dtype=np.float32)[:, None]
    i = np.arange(grid, dtype=np.float32)[None, :]
    return (f32(start) + b * f32(bin_size)) + (i + f32(0.5)) * f32(bin_size) / f32(grid)


def _taps(v, size):
    """Bilinear taps of coordinates v on an axis of `size` pixels: (lo, hi, w_lo, w_hi, valid)."""
    v = v.astype(np.float64)
    valid = (v >= -1.0) & (v <= size)
    v = np.where(v <= 0, 0.0, v)
    lo = np.floor(v).astype(np.int64)
    at_end = lo >= size - 1
    lo = np.where(at_end, size - 1, lo)
    hi = np.where(at_end, size - 1, lo + 1)
    v = np.where(at_end, lo.astype(np.float64), v)
    frac = v - lo
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, 0, size - 1)
    return lo, hi, 1.0 - frac, frac, valid


def roi_matrix(box, height, width, output_size, spatial_scale, sampling_ratio, aligned):
    """(oh * ow, H * W) float64 matrix mapping one image's map to one ROI's bins."""
    oh, ow = output_size
    sy, by, gy = _axis(box[1], box[3], oh, spatial_scale, sampling_ratio, aligned)
    sx, bx, gx = _axis(box[0], box[2], ow, spatial_scale, sampling_ratio, aligned)
    count = max(gy * gx, 1)
    m = np.zeros((oh, ow, height * width), np.float64)
    if gy <= 0 or gx <= 0:
        return m.reshape(oh * ow, height * width)
    ys = _samples(sy, by, gy, oh)  # (oh, gy)
    xs = _samples(sx, bx, gx, ow)  # (ow, gx)
    ylo, yhi, wylo, wyhi, vy = _taps(ys, height)
    xlo, xhi, wxlo, wxhi, vx = _taps(xs, width)
    # Every (bin row, y sample, y tap) x (bin col, x sample, x tap) combination adds
    # w_y * w_x / count at pixel (row, col); invalid samples have weight 0.
    rows = np.stack([ylo, yhi], -1)  # (oh, gy, 2)
    wy = np.stack([wylo, wyhi], -1) * vy[..., None]
    cols = np.stack([xlo, xhi], -1)  # (ow, gx, 2)
    wx = np.stack([wxlo, wxhi], -1) * vx[..., None]
    shape = (oh, gy, 2, ow, gx, 2)
    bin_y = np.broadcast_to(np.arange(oh)[:, None, None, None, None, None], shape)
    bin_x = np.broadcast_to(np.arange(ow)[None, None, None, :, None, None], shape)
    pixel = rows[:, :, :, None, None, None] * width + cols[None, None, None]
    weight = wy[:, :, :, None, None, None] * wx[None, None, None] / count
    np.add.at(m, (bin_y, bin_x, np.broadcast_to(pixel, shape)), weight)
    return m.reshape(oh * ow, height * width)


def roi_align_np(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio=0,
                 aligned=True):
    """features (N, H, W, C), boxes (R, 4) xyxy image pixels, box_indices (R,) ->
    (R, oh, ow, C) float64."""
    n, h, w, c = features.shape
    oh, ow = output_size
    out = np.zeros((len(boxes), oh, ow, c), np.float64)
    for r, (box, b) in enumerate(zip(boxes, box_indices)):
        m = roi_matrix(box, h, w, output_size, spatial_scale, sampling_ratio, aligned)
        out[r] = (m @ features[b].reshape(h * w, c).astype(np.float64)).reshape(oh, ow, c)
    return out


def roi_align_grad_np(grad, boxes, box_indices, features_shape, output_size, spatial_scale,
                      sampling_ratio=0, aligned=True):
    """Adjoint of roi_align_np: grad (R, oh, ow, C) -> (N, H, W, C) float64."""
    n, h, w, c = features_shape
    oh, ow = output_size
    out = np.zeros((n, h * w, c), np.float64)
    for r, (box, b) in enumerate(zip(boxes, box_indices)):
        m = roi_matrix(box, h, w, output_size, spatial_scale, sampling_ratio, aligned)
        out[b] += m.T @ grad[r].reshape(oh * ow, c).astype(np.float64)
    return out.reshape(n, h, w, c)


def boxes_of_every_kind(rng, img_h, img_w, per_kind=3):
    """(R, 4) xyxy image-pixel boxes: ordinary, tiny, huge, crossing each border, outside."""
    def ordinary(k):
        x0 = rng.uniform(0, img_w * 0.7, k)
        y0 = rng.uniform(0, img_h * 0.7, k)
        return np.stack([x0, y0, x0 + rng.uniform(4, img_w * 0.5, k),
                         y0 + rng.uniform(4, img_h * 0.5, k)], 1)

    kinds = [ordinary(per_kind)]
    tiny = ordinary(per_kind)
    tiny[:, 2:] = tiny[:, :2] + rng.uniform(0.01, 2.0, (per_kind, 2))  # below a feature pixel
    kinds.append(tiny)
    kinds.append(np.array([[-img_w, -img_h, 2 * img_w, 2 * img_h],       # huge: covers all
                           [-10.0, 5.0, 1.5 * img_w, img_h - 5.0]]))
    for side in range(4):  # crossing left, top, right, bottom
        b = ordinary(per_kind)
        size = img_w if side % 2 == 0 else img_h
        if side < 2:
            b[:, side] = -rng.uniform(1, 40, per_kind)
        else:
            b[:, side] = size + rng.uniform(1, 40, per_kind)
        kinds.append(b)
    kinds.append(np.array([[img_w + 20, 0, img_w + 60, 30],               # fully outside
                           [-50.0, -50.0, -20.0, -10.0],
                           [10.0, img_h - 0.5, 30.0, img_h + 0.5]]))      # on the bottom edge
    kinds.append(np.array([[30.0, 30.0, 20.0, 25.0]]))                     # inverted (x1 < x0)
    return np.concatenate(kinds).astype(np.float32)
