"""Matcher against detectron2 golden vectors and NumPy references."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.matcher import Matcher


def np_match(q, thresholds, labels, low_quality):
    """Matcher from its definition on one (G, N) matrix."""
    g, n = q.shape
    if g == 0:
        return np.zeros(n, np.int64), np.full(n, labels[0], np.int64)
    matches = q.argmax(axis=0)
    vals = q.max(axis=0)
    bounds = [-np.inf] + list(thresholds) + [np.inf]
    out = np.zeros(n, np.int64)
    for lab, lo, hi in zip(labels, bounds[:-1], bounds[1:]):
        out[(vals >= lo) & (vals < hi)] = lab
    if low_quality:
        for row in q:
            out[row == row.max()] = 1
    return matches, out


# ---------------------------------------------------------------- golden fixture
def test_matches_detectron2(fixtures_dir):
    d = np.load(fixtures_dir / "d2" / "matcher.npz")
    m, l = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(d["iou"])
    np.testing.assert_array_equal(m.numpy(), d["rpn_matches"])
    np.testing.assert_array_equal(l.numpy(), d["rpn_labels"])
    m, l = Matcher([0.5], [0, 1])(d["iou"])
    np.testing.assert_array_equal(m.numpy(), d["roi_matches"])
    np.testing.assert_array_equal(l.numpy(), d["roi_labels"])


# ---------------------------------------------------------------- reference
def _quantised(rng, shape):
    # coarse values make ties (several predictions at a gt's max) common
    return (rng.randint(0, 11, size=shape) / 10.0).astype(np.float32)


@pytest.mark.parametrize("low_quality", [False, True])
def test_against_numpy_with_ties(low_quality):
    rng = np.random.RandomState(0)
    q = _quantised(rng, (5, 40))
    q[2] = np.where(q[2] > 0.2, 0.2, q[2])  # a gt whose best is below every threshold
    m, l = Matcher([0.3, 0.7], [0, -1, 1], low_quality)(q)
    wm, wl = np_match(q, [0.3, 0.7], [0, -1, 1], low_quality)
    np.testing.assert_array_equal(l.numpy(), wl)
    np.testing.assert_array_equal(m.numpy(), wm)
    if low_quality:
        tied = q[2] == q[2].max()
        assert tied.sum() > 1 and (l.numpy()[tied] == 1).all()


def test_padded_gt_rows_never_match_and_batch_dims():
    rng = np.random.RandomState(1)
    q = _quantised(rng, (2, 6, 30))
    valid = np.array([[True] * 4 + [False] * 2, [True, False, True, False, False, False]])
    q[~valid] = 0.0  # padded rows look like zero boxes: IoU 0 with everything
    m, l = Matcher([0.3, 0.7], [0, -1, 1], True)(q, tf.constant(valid))
    assert m.shape == (2, 30)
    for i in range(2):
        rows = np.nonzero(valid[i])[0]
        wm, wl = np_match(q[i][rows], [0.3, 0.7], [0, -1, 1], True)
        np.testing.assert_array_equal(l.numpy()[i], wl)
        np.testing.assert_array_equal(m.numpy()[i], rows[wm])


def test_no_gt_gives_first_label():
    matcher = Matcher([0.3, 0.7], [0, -1, 1], True)
    m, l = matcher(np.zeros((0, 7), np.float32))
    np.testing.assert_array_equal(m.numpy(), np.zeros(7))
    np.testing.assert_array_equal(l.numpy(), np.zeros(7))
    m, l = matcher(np.full((2, 3, 7), 0.9, np.float32), tf.zeros([2, 3], tf.bool))
    np.testing.assert_array_equal(m.numpy(), np.zeros((2, 7)))
    np.testing.assert_array_equal(l.numpy(), np.zeros((2, 7)))
    m, l = Matcher([0.5], [-1, 1])(np.zeros((0, 4), np.float32))
    np.testing.assert_array_equal(l.numpy(), [-1] * 4)


def test_in_tf_function_with_unknown_shapes():
    matcher = Matcher([0.3, 0.7], [0, -1, 1], True)
    f = tf.function(matcher, input_signature=[tf.TensorSpec([None, None, None]),
                                              tf.TensorSpec([None, None], tf.bool)])
    rng = np.random.RandomState(2)
    for g, n in ((3, 10), (0, 4)):
        q = _quantised(rng, (1, g, n))
        m, l = f(q, np.ones((1, g), bool))
        wm, wl = np_match(q[0], [0.3, 0.7], [0, -1, 1], True)
        np.testing.assert_array_equal(l.numpy()[0], wl)
        np.testing.assert_array_equal(m.numpy()[0], wm)
    assert f.experimental_get_tracing_count() == 1

