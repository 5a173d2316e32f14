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


def test_counts_of_many_windows_at_once_equal_pycocotools_mask_by_mask():
    """One NumPy pass over all windows: empty windows between others, masks ending with a one,
    runs joined across full-height columns, any pattern inside a window."""
    rng = np.random.default_rng(3)
    h, w = 23, 17
    windows = np.array([[0, 0, w, h],          # full image, ends with a one
                        [5, 5, 5, 9],          # empty window (no columns)
                        [2, 3, 9, 3],          # empty window (no rows)
                        [0, 0, w, h],          # full image, all ones
                        [3, 0, 11, h],         # full-height columns: runs join
                        [4, 6, 12, 20],
                        [16, 22, 17, 23],      # the last pixel only
                        [0, 0, 0, 0]])
    masks = np.zeros((len(windows), h, w), bool)
    for k, (x0, y0, x1, y1) in enumerate(windows):
        masks[k, y0:y1, x0:x1] = rng.uniform(size=(y1 - y0, x1 - x0)) < 0.5
    masks[0, -1, -1] = True
    masks[3] = True
    masks[4, :, 5:8] = True
    masks[6, -1, -1] = True
    counts = rle_module.windowed_rle_counts(masks, windows)
    encoded = rle_module.encode_windowed(masks, windows)
    for k in range(len(masks)):
        np.testing.assert_array_equal(_decode_counts(counts[k]), masks[k].T.reshape(-1))
        assert counts[k] == window_rle_counts(masks[k], windows[k]), k
        reference = mask_util.encode(np.asfortranarray(masks[k].astype(np.uint8)))
        assert encoded[k] == reference, k
    assert rle_module.encode_windowed(np.zeros((0, h, w), bool), np.zeros((0, 4), int)) == []
