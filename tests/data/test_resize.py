"""detectron2's ResizeShortestEdge: the output shape (Python and graph forms) and the pixels."""
import numpy as np
import tensorflow as tf

from tfmrcnn.data.resize import (resize_image, resize_shortest_edge_shape,
                                  resize_shortest_edge_shape_tf)


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


def test_resize_image_is_uint8_and_keeps_constant_images():
    img = np.full((30, 47, 3), 77, np.uint8)
    out = np.asarray(resize_image(img, 61, 95))
    assert out.shape == (61, 95, 3) and out.dtype == np.uint8
    assert (out == 77).all()
