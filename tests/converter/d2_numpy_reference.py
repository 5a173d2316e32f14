"""NumPy references of PyTorch's conv layers, written from their definitions (NCHW layouts)."""
import numpy as np


def torch_conv2d(x, w, b, stride, pad):
    """PyTorch Conv2d: x (N, C, H, W), w (O, C, kh, kw), cross-correlation, symmetric zero pad."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow)) + b[None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]  # (N, C, oh, ow)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def torch_conv_transpose2d(x, w, b, stride):
    """PyTorch ConvTranspose2d, no padding: x (N, Cin, H, W), w (Cin, Cout, kh, kw)."""
    n, _, h, wd = x.shape
    _, o, kh, kw = w.shape
    out = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw)) + b[None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + stride * h:stride, j:j + stride * wd:stride] += np.einsum(
                "nchw,co->nohw", x, w[:, :, i, j])
    return out
