"""Windowed RLE encoding equals pycocotools' encode of the full mask, byte for byte."""
import numpy as np
import pycocotools.mask as mask_util

from tfmrcnn.evaluation import rle as rle_module
from tfmrcnn.evaluation.rle import encode_masks, encode_pasted_masks, window_rle_counts
from tfmrcnn.inference.paste import paste_masks_in_image, paste_windows


def _reference(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _decode_counts(counts):
    """Expand uncompressed counts (written from the definition: alternating 0 / 1 runs)."""
    return np.concatenate([np.full(c, k % 2, np.uint8) for k, c in enumerate(counts)])


def test_windowed_encoding_of_pasted_masks(monkeypatch):
    rng = np.random.default_rng(0)
    h, w = 37, 29
    xy = rng.uniform(-10, [w, h], (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (40, 2))], 1).astype(np.float32)
    boxes[0] = [-3, -5, 40, 50]                  # covers the image: full-height columns join
    masks = rng.uniform(0, 1, (40, 28, 28)).astype(np.float32)
    masks[0] = 1.0
    masks[1] = 0.0                               # empty mask
    pasted = paste_masks_in_image(masks, boxes, (h, w)).numpy()
    windows = paste_windows(boxes, (h, w)).numpy()
    full = encode_masks(pasted)
    monkeypatch.setattr(rle_module, "_WINDOWED_MAX_FRACTION", 1.0)   # always take the window path
    ours = encode_masks(pasted, windows)
    assert encode_pasted_masks(pasted, boxes) == ours                 # the windows of the boxes
    for k in range(len(pasted)):
        assert ours[k] == _reference(pasted[k]) == full[k], k
        counts = window_rle_counts(pasted[k], windows[k])
        np.testing.assert_array_equal(_decode_counts(counts), pasted[k].T.reshape(-1))


def test_window_counts_edge_cases():
    mask = np.zeros((4, 3), bool)
    assert window_rle_counts(mask, (0, 0, 3, 4)) == [12]
    assert window_rle_counts(mask, (2, 2, 2, 4)) == [12]          # empty window
    mask[:] = True
    assert window_rle_counts(mask, (0, 0, 3, 4)) == [0, 12]       # starts and ends with ones
    mask[:, 0] = False
    mask[3, 2] = False
    assert window_rle_counts(mask, (0, 0, 3, 4)) == [4, 7, 1]
    assert encode_masks(np.zeros((0, 4, 3), bool)) == []
