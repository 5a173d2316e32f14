"""detectron2's ResizeShortestEdge: the output shape (Python and graph forms) and the pixels,
equal to Pillow bit for bit in every path that resizes an image: the Python functions (predict,
eval, training), the TF port (the SavedModel graph), the test-time preprocessing in both forms and
the training loader.

References: Pillow itself, as detectron2 calls it (``Image.fromarray(img).resize((w, h),
BILINEAR)``), and golden outputs of Pillow 9.5 (tests/fixtures/make_pillow_golden.py).
"""

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from resize_cases import PATTERNS, pattern_image, pattern_mask
from tfmrcnn.data.resize import (resize_image, resize_image_tf, resize_mask,
                                  resize_shortest_edge_shape, resize_shortest_edge_shape_tf)

_GRAPH_RESIZE = tf.function(resize_image_tf, input_signature=[
    tf.TensorSpec([None, None, None], tf.uint8), tf.TensorSpec([], tf.int32),
    tf.TensorSpec([], tf.int32)])


def _pillow(image, new_h, new_w, method=Image.BILINEAR):
    """detectron2's ResizeTransform.apply_image for uint8 (one channel as mode "L")."""
    squeeze = image.ndim == 3 and image.shape[2] == 1
    out = np.asarray(Image.fromarray(image[:, :, 0] if squeeze else image)
                     .resize((new_w, new_h), method))
    return out[:, :, None] if squeeze else out


def _random_cases(seed, num, max_in=300, max_out=400):
    """(image, new_h, new_w): sizes log-uniform from 1 px, shrinking and enlarging, every
    pattern, 1 and 3 channels."""
    rng = np.random.default_rng(seed)

    def side(hi):
        return int(np.exp(rng.uniform(0, np.log(hi + 1))))

    for k in range(num):
        image = pattern_image(side(max_in), side(max_in), 1 if k % 5 == 0 else 3,
                              k % len(PATTERNS), seed * 1000 + k)
        yield image, side(max_out), side(max_out)


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    """[(image, new_h, new_w, Pillow 9.5's output)] and [(mask, new_h, new_w, output)]."""
    d = np.load(fixtures_dir / "pillow_resize_golden.npz")
    assert str(d["pillow_version"]).startswith("9.")
    bilinear, start = [], 0
    for h, w, c, pattern, seed, nh, nw in d["bilinear_cases"].tolist():
        size = nh * nw * c
        out = d["bilinear_pixels"][start:start + size].reshape(nh, nw, c)
        bilinear.append((pattern_image(h, w, c, pattern, seed), nh, nw, out))
        start += size
    nearest, start = [], 0
    for h, w, seed, nh, nw in d["nearest_cases"].tolist():
        out = d["nearest_pixels"][start:start + nh * nw].reshape(nh, nw)
        nearest.append((pattern_mask(h, w, seed), nh, nw, out))
        start += nh * nw
    return bilinear, nearest


def _d2_resize_shape(h, w, short, max_size):
    """detectron2's ResizeShortestEdge.get_output_shape, in Python floats."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return int(new_h + 0.5), int(new_w + 0.5)


def test_shape_equals_detectron2_table(fixtures_dir):
    table = np.load(fixtures_dir / "d2" / "resize_shortest_edge.npz")["table"]
    for in_h, in_w, short, max_size, out_h, out_w in table:
        assert resize_shortest_edge_shape(in_h, in_w, short, max_size) == (out_h, out_w)
        got = resize_shortest_edge_shape_tf(int(in_h), int(in_w), int(short), int(max_size))
        assert tuple(int(v) for v in got) == (out_h, out_w)


def test_graph_shape_equals_python_shape_and_detectron2_rule():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(1, 2000, (300, 2)),
                            [[2, 3], [3, 2], [480, 640], [640, 480], [100, 100], [1, 1999]]])
    for short, max_size in [(800, 1333), (3, 1000), (64, 96), (600, 600)]:
        got_h, got_w = resize_shortest_edge_shape_tf(tf.constant(sizes[:, 0]),
                                                     tf.constant(sizes[:, 1]), short, max_size)
        want = np.array([_d2_resize_shape(int(h), int(w), short, max_size) for h, w in sizes])
        np.testing.assert_array_equal(np.stack([got_h, got_w], 1), want)
        python = [resize_shortest_edge_shape(h, w, short, max_size) for h, w in sizes]
        np.testing.assert_array_equal(python, want)


def test_short_side_zero_keeps_the_size():
    """detectron2's ResizeShortestEdge gives a NoOpTransform for a short side of 0."""
    assert resize_shortest_edge_shape(480, 640, 0, 1333) == (480, 640)
    assert [int(v) for v in resize_shortest_edge_shape_tf(37, 55, 0, 1333)] == [37, 55]


# ------------------------------------------------------------------------------ pixels
def test_python_resize_equals_detectron2_era_pillow(golden):
    """The pinned Pillow gives Pillow 9.5's pixels (160 bilinear, 40 nearest cases)."""
    bilinear, nearest = golden
    for image, new_h, new_w, expected in bilinear:
        out = resize_image(image, new_h, new_w)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected, err_msg=str((image.shape, new_h, new_w)))
    for mask, new_h, new_w, expected in nearest:
        np.testing.assert_array_equal(resize_mask(mask, new_h, new_w), expected)


def test_graph_resize_equals_pillow_golden(golden):
    """The TF port in a traced graph: 160 golden cases of Pillow 9.5."""
    for image, new_h, new_w, expected in golden[0]:
        np.testing.assert_array_equal(_GRAPH_RESIZE(image, new_h, new_w).numpy(), expected,
                                      err_msg=str((image.shape, new_h, new_w)))


def test_graph_resize_equals_pillow_on_random_cases():
    """The TF port against the installed Pillow: 120 random cases in a graph, 10 eagerly."""
    for k, (image, new_h, new_w) in enumerate(_random_cases(1, 130)):
        got = resize_image_tf(image, new_h, new_w) if k < 10 else _GRAPH_RESIZE(image, new_h,
                                                                                new_w)
        np.testing.assert_array_equal(got.numpy(), _pillow(image, new_h, new_w),
                                      err_msg=str((image.shape, new_h, new_w)))


def test_graph_resize_large_factors_and_sizes():
    """Shrinking 4000 -> 7 (573 taps per pixel), 1-pixel sides, and a full test-time size."""
    cases = [((4000, 5, 3), 7, 2), ((3, 2600, 3), 1, 9), ((1, 1, 3), 5, 800),
             ((480, 640, 3), 800, 1067), ((1333, 800, 1), 641, 385)]
    for k, (shape, new_h, new_w) in enumerate(cases):
        image = pattern_image(*shape, k % len(PATTERNS), 7 + k)
        np.testing.assert_array_equal(_GRAPH_RESIZE(image, new_h, new_w).numpy(),
                                      _pillow(image, new_h, new_w), err_msg=str(shape))


def test_masks_resize_with_pillow_nearest():
    rng = np.random.default_rng(3)
    for seed in range(30):
        h, w, new_h, new_w = (int(v) for v in rng.integers(1, 120, 4))
        mask = pattern_mask(h, w, seed)
        np.testing.assert_array_equal(resize_mask(mask, new_h, new_w),
                                      _pillow(mask, new_h, new_w, Image.NEAREST))


# ------------------------------------------------------------------------------ the paths
def test_test_time_preprocessing_equals_pillow_in_both_forms():
    """predict / eval (NumPy batches) and the SavedModel graph: 24 images of random sizes (some
    shrunk, some enlarged, some capped by MAX_SIZE_TEST), BGR and RGB models; pixels equal
    Pillow's, padding 0."""
    from tfmrcnn.inference.preprocess import InputSpec, preprocess_image_tf, preprocess_images

    specs = [InputSpec(240, 400, 32, rgb=False), InputSpec(240, 400, 32, rgb=True)]
    signature = [tf.TensorSpec([None, None, 3], tf.uint8)]
    graphs = [tf.function(lambda im, s=spec: preprocess_image_tf(im, s), input_signature=signature)
              for spec in specs]
    for k, (image, _, _) in enumerate(_random_cases(5, 24, max_in=600)):
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        spec, graph = specs[k % 2], graphs[k % 2]
        new_h, new_w = resize_shortest_edge_shape(*image.shape[:2], spec.min_size, spec.max_size)
        model_order = image[:, :, ::-1] if spec.rgb else image
        expected = _pillow(np.ascontiguousarray(model_order), new_h, new_w)
        images, sizes = preprocess_images([image], spec)
        np.testing.assert_array_equal(sizes, [[new_h, new_w]])
        np.testing.assert_array_equal(images[0, :new_h, :new_w], expected)
        assert not images[0, new_h:].any() and not images[0, :, new_w:].any()
        images_tf, sizes_tf = graph(tf.constant(image))
        np.testing.assert_array_equal(sizes_tf.numpy(), sizes)
        np.testing.assert_array_equal(images_tf.numpy(), images)


def test_training_loader_equals_pillow(tmp_path):
    """tfmrcnn.data's loader: 16 images read from PNG files, resized to a random short side and
    flipped or not: Pillow's resize of the decoded image, then the flip."""
    from tfmrcnn.data.pipeline import ImageLoader

    records, images = [], []
    for k, (image, _, _) in enumerate(_random_cases(6, 16, max_in=260)):
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        h, w = image.shape[:2]
        path = str(tmp_path / f"{k}.png")
        cv2.imwrite(path, image)
        records.append({"file_name": path, "height": h, "width": w, "annotations": [
            {"bbox": [0, 0, w, h], "category_id": 0, "iscrowd": 0}]})
        images.append(image)
    loader = ImageLoader(records, max_size=700, with_masks=False, max_instances=10)
    rng = np.random.default_rng(7)
    for k, image in enumerate(images):
        short, flip = int(rng.integers(1, 500)), bool(k % 2)
        out, new_h, new_w, *_, ok = loader(k, short, flip)
        assert ok and (new_h, new_w) == resize_shortest_edge_shape(*image.shape[:2], short, 700)
        expected = _pillow(image, new_h, new_w)
        np.testing.assert_array_equal(out, expected[:, ::-1] if flip else expected)
