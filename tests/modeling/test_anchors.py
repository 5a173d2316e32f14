"""DefaultAnchorGenerator against detectron2 golden anchors and a NumPy reference."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.anchors import DefaultAnchorGenerator

SIZES = [[32], [64], [128], [256], [512]]
RATIOS = [[0.5, 1.0, 2.0]]
STRIDES = [4, 8, 16, 32, 64]


def np_anchors(height, width, stride, sizes, ratios, offset):
    """Anchors in (y, x, anchor) order from the definition, float64."""
    cell = []
    for s in sizes:
        for r in ratios:
            w = math.sqrt(s * s / r)
            h = r * w
            cell.append((-w / 2, -h / 2, w / 2, h / 2))
    out = []
    for y in range(height):
        for x in range(width):
            cx, cy = (x + offset) * stride, (y + offset) * stride
            for c in cell:
                out.append((cx + c[0], cy + c[1], cx + c[2], cy + c[3]))
    return np.asarray(out)


@pytest.mark.parametrize("name", ["anchors_320x448.npz", "anchors_800x1216.npz"])
def test_matches_detectron2(fixtures_dir, name):
    d = np.load(fixtures_dir / "d2" / name)
    gen = DefaultAnchorGenerator(SIZES, RATIOS, STRIDES)
    shapes = [tuple(int(v) for v in d[f"p{l}_shape"]) for l in range(2, 7)]
    for level, anchors in zip(range(2, 7), gen(shapes)):
        np.testing.assert_array_equal(anchors.numpy(), d[f"p{level}"])


def test_cell_anchors_and_counts():
    gen = DefaultAnchorGenerator(SIZES, RATIOS, STRIDES)
    assert gen.num_anchors == [3] * 5
    c = gen.cell_anchors[1]  # size 64
    widths, heights = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    np.testing.assert_allclose(heights / widths, [0.5, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(widths * heights, [64.0 ** 2] * 3, rtol=1e-5)
    np.testing.assert_allclose(c[:, :2] + c[:, 2:], 0.0, atol=1e-5)  # centred at the origin


def test_against_numpy_with_offset_and_several_sizes():
    sizes, ratios = [16, 40], [0.25, 1.0, 3.0]  # a flat list applies to every level
    gen = DefaultAnchorGenerator(sizes, ratios, [8, 16], offset=0.5)
    out = gen([(3, 5), (2, 2)])
    np.testing.assert_allclose(out[0].numpy(), np_anchors(3, 5, 8, sizes, ratios, 0.5),
                               rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(out[1].numpy(), np_anchors(2, 2, 16, sizes, ratios, 0.5),
                               rtol=1e-6, atol=1e-4)
    assert out[0].shape == (3 * 5 * 6, 4)


def test_per_level_params_must_match_levels():
    with pytest.raises(ValueError):
        DefaultAnchorGenerator([[32], [64]], RATIOS, STRIDES)


def test_dynamic_shapes_in_tf_function():
    gen = DefaultAnchorGenerator(SIZES[:2], RATIOS, STRIDES[:2])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4]),
                                  tf.TensorSpec([None, None, None, 4])])
    def f(a, b):
        return gen([(tf.shape(a)[1], tf.shape(a)[2]), (tf.shape(b)[1], tf.shape(b)[2])])

    for h, w in ((4, 6), (5, 3)):
        out = f(tf.zeros([1, h, w, 4]), tf.zeros([1, h // 2, w // 2, 4]))
        np.testing.assert_allclose(out[0].numpy(), np_anchors(h, w, 4, [32], RATIOS[0], 0.0),
                                   rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(out[1].numpy(),
                                   np_anchors(h // 2, w // 2, 8, [64], RATIOS[0], 0.0),
                                   rtol=1e-6, atol=1e-4)
    assert f.experimental_get_tracing_count() == 1
