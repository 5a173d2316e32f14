"""Matcher and subsample_labels against detectron2 golden vectors and NumPy references."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.matcher import Matcher, subsample_labels


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


# ---------------------------------------------------------------- sampler
def _random_labels(rng, shape, p):
    return rng.choice([-1, 0, 1], size=shape, p=p).astype(np.int32)


@pytest.mark.parametrize("p", [[0.1, 0.85, 0.05], [0.1, 0.1, 0.8], [0.9, 0.02, 0.08]])
def test_sampler_counts_and_exclusivity(p):
    rng = np.random.RandomState(3)
    labels = _random_labels(rng, (2, 3, 600), p)
    pos, neg = subsample_labels(labels, 256, 0.5, bg_label=0, seed=7)
    pos, neg = pos.numpy(), neg.numpy()
    n_pos, n_neg = (labels == 1).sum(-1), (labels == 0).sum(-1)
    want_pos = np.minimum(n_pos, 128)
    np.testing.assert_array_equal(pos.sum(-1), want_pos)
    np.testing.assert_array_equal(neg.sum(-1), np.minimum(n_neg, 256 - want_pos))
    assert not (pos & neg).any()
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()


def test_sampler_foreground_is_any_non_background_label():
    # roi-head style: classes 0..K-1 are foreground, K = 3 is background
    labels = np.array([[0, 1, 2, 3, 3, 3, -1, 2, 3, 1]], np.int32)
    pos, neg = subsample_labels(labels, 6, 0.5, bg_label=3, seed=0)
    assert pos.numpy().sum() == 3 and neg.numpy().sum() == 3
    assert (labels[pos.numpy()] != 3).all() and (labels[pos.numpy()] >= 0).all()
    assert (labels[neg.numpy()] == 3).all()


def test_sampler_seed_determinism_and_randomness():
    labels = np.zeros((1, 500), np.int32)
    labels[0, :300] = 1
    a = subsample_labels(labels, 64, 0.25, 0, seed=11)[0].numpy()
    b = subsample_labels(labels, 64, 0.25, 0, seed=11)[0].numpy()
    c = subsample_labels(labels, 64, 0.25, 0, seed=12)[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # uniform choice: over 400 draws (one batched call) each positive is picked ~16/300 of
    # the time: mean 21.3, std 4.5
    many = np.tile(labels, (400, 1))
    hits = subsample_labels(many, 64, 0.25, 0, seed=13)[0].numpy()[:, :300].sum(0)
    assert hits.sum() == 400 * 16 and 3 < hits.min() and hits.max() < 45


def test_sampler_fewer_candidates_than_samples():
    labels = np.array([[1, 0, -1, 0]], np.int32)
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    np.testing.assert_array_equal(pos.numpy(), [[True, False, False, False]])
    np.testing.assert_array_equal(neg.numpy(), [[False, True, False, True]])
