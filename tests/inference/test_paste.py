"""The mask paste (packed windows + NumPy unpacking, and whole masks in a graph) against
detectron2's output and a per-pixel reference."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.inference.paste import (paste_masks_in_image, paste_masks_packed, paste_windows,
                                     unpack_masks)


def _paste_python(masks, boxes, image_hw, threshold=0.5):
    """What the Python test-time path does: packed windows, unpacked in NumPy."""
    windows, packed = paste_masks_packed(masks, boxes, image_hw, threshold)
    return unpack_masks(windows.numpy(), packed.numpy(), image_hw)


_GRAPH_PASTE = tf.function(paste_masks_in_image, input_signature=[
    tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None, 4], tf.float32),
    tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32)])


def _paste_graph(masks, boxes, image_hw, threshold=0.5):
    """What the SavedModel does: whole masks from a traced graph."""
    return _GRAPH_PASTE(np.asarray(masks, np.float32), np.asarray(boxes, np.float32).reshape(-1, 4),
                        np.array(image_hw, np.int32), np.float32(threshold)).numpy()


def _reference_probs(mask, box, height, width):
    """Per-pixel loop written from the definition: grid_sample(bilinear, zeros,
    align_corners=False) of the mask at each pixel centre, in box-relative coordinates."""
    m = mask.shape[0]
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            # position of the pixel centre in mask cells (cell k is centred at k + 0.5)
            u = (j + 0.5 - x0) / (x1 - x0) * m - 0.5
            v = (i + 0.5 - y0) / (y1 - y0) * m - 0.5
            cu, cv = int(np.floor(u)), int(np.floor(v))
            value = 0.0
            for dv in (0, 1):
                for du in (0, 1):
                    r, c = cv + dv, cu + du
                    if 0 <= r < m and 0 <= c < m:
                        wu = (u - cu) if du else (1 - (u - cu))
                        wv = (v - cv) if dv else (1 - (v - cv))
                        value += wu * wv * mask[r, c]
            out[i, j] = value
    return out


def _random_case(seed, n=10, height=29, width=35, mask_size=28):
    rng = np.random.default_rng(seed)
    masks = rng.uniform(0, 1, (n, mask_size, mask_size)).astype(np.float32)
    # boxes of all sizes, many partly outside the image, a few smaller than a pixel
    xy = rng.uniform([-15, -15], [width + 5, height + 5], (n, 2))
    wh = np.concatenate([rng.uniform(0.3, 1.0, (2, 2)), rng.uniform(2, 50, (n - 2, 2))])
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return masks, boxes, (height, width)


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    d = np.load(fixtures_dir / "d2" / "paste_masks.npz")
    size = tuple(int(v) for v in d["image_size"])
    return d["masks"], d["boxes"], size, float(d["threshold"]), d["pasted"]


def test_python_paste_equals_detectron2(golden):
    masks, boxes, size, threshold, expected = golden
    out = _paste_python(masks, boxes, size, threshold)
    assert out.dtype == bool and out.shape == expected.shape
    assert out.transpose(0, 2, 1).flags.c_contiguous      # column-major per mask, for RLE
    np.testing.assert_array_equal(out, expected)


def test_graph_paste_equals_detectron2(golden):
    masks, boxes, size, threshold, expected = golden
    np.testing.assert_array_equal(_paste_graph(masks, boxes, size, threshold), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paste_matches_per_pixel_reference(seed):
    masks, boxes, (h, w) = _random_case(seed)
    ours = _paste_python(masks, boxes, (h, w))
    np.testing.assert_array_equal(_paste_graph(masks, boxes, (h, w)), ours)
    for r in range(len(masks)):
        ref = _reference_probs(masks[r].astype(np.float64), boxes[r], h, w)
        # float32 vs float64: only values within rounding of the threshold may disagree
        decided = np.abs(ref - 0.5) > 1e-5
        np.testing.assert_array_equal(ours[r][decided], (ref >= 0.5)[decided])
        assert decided.mean() > 0.999


def test_paste_windows_follow_detectron2():
    boxes = np.array([[2.5, 3.0, 10.2, 7.0],      # floor - 1, ceil + 1
                      [-4.0, -1.5, 3.0, 2.2],     # clipped at 0
                      [30.0, 2.0, 45.0, 9.0],     # clipped at the image's right edge
                      [50.0, 60.0, 80.0, 90.0]],  # outside: empty window
                     np.float32)
    np.testing.assert_array_equal(paste_windows(boxes, (20, 40)).numpy(),
                                  [[1, 2, 12, 8], [0, 0, 4, 4], [29, 1, 40, 10], [40, 20, 40, 20]])


def test_outside_the_window_is_background_whatever_the_threshold():
    masks, boxes, (h, w) = _random_case(4)
    windows = paste_windows(boxes, (h, w)).numpy()
    for paste in (_paste_python, _paste_graph):
        pasted = paste(masks, boxes, (h, w), 0.0)
        for mask, (x0, y0, x1, y1) in zip(pasted, windows):
            assert mask[y0:y1, x0:x1].all()          # threshold 0: every sampled pixel
            assert mask.sum() == (x1 - x0) * (y1 - y0)


def test_paste_threshold_is_inclusive():
    masks = np.full((1, 4, 4), 0.5, np.float32)
    # a 4-pixel wide box on a 4-cell mask: pixel centres fall exactly on cell centres, so pixels
    # inside sample exactly 0.5 (kept by >=) and pixels outside sample only zero padding
    box = np.array([[2, 1, 6, 5]], np.float32)
    expected = np.zeros((8, 9), bool)
    expected[1:5, 2:6] = True
    for paste in (_paste_python, _paste_graph):
        np.testing.assert_array_equal(paste(masks, box, (8, 9))[0], expected)
        assert not paste(masks, box, (8, 9), threshold=0.51).any()


def test_boxes_outside_the_image_and_empty_input():
    masks = np.ones((2, 28, 28), np.float32)
    boxes = np.array([[-30, -20, -5, -2], [50, 60, 80, 90]], np.float32)   # fully outside
    for paste in (_paste_python, _paste_graph):
        assert not paste(masks, boxes, (40, 45)).any()
        empty = paste(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), (10, 11))
        assert empty.shape == (0, 10, 11) and empty.dtype == bool


def test_full_mask_fills_its_box():
    masks = np.ones((1, 28, 28), np.float32)
    expected = np.zeros((12, 16), bool)
    expected[4:9, 3:13] = True      # pixel centres inside the box see the all-ones interior
    for paste in (_paste_python, _paste_graph):
        np.testing.assert_array_equal(paste(masks, [[3, 4, 13, 9]], (12, 16))[0], expected)
