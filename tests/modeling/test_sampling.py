"""Balanced sampling (detectron2's subsample_labels) and the fixed-slot layout of the ROI heads'
samples, against NumPy references and hand-worked cases."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.sampling import sample_proposals, subsample_labels, training_draws


# ---------------------------------------------------------------- subsample_labels
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


def _step_draw(labels, seed, rank, iteration):
    with training_draws(seed, rank, iteration):
        return subsample_labels(labels, 64, 0.25, 0)[0].numpy()


def _step_draw_in_graph(labels, iteration):
    with training_draws(42, 0, iteration):
        return subsample_labels(labels, 64, 0.25, 0)[0]


def test_training_draws_depend_on_seed_rank_and_iteration_only():
    """Issue 20: a resumed run restarted the sampler's random state, so it was not bit-identical
    to an uninterrupted one; a step's draws now follow from (seed, rank, iteration) alone."""
    labels = _random_labels(np.random.default_rng(5), (2, 500), [0.1, 0.6, 0.3])
    first = _step_draw(labels, 42, 0, 7)
    tf.random.uniform([1000])                                  # other draws in between
    with training_draws(42, 0, 3):
        subsample_labels(labels, 64, 0.25, 0)                  # an earlier step's draws
    np.testing.assert_array_equal(_step_draw(labels, 42, 0, 7), first)
    traced = tf.function(lambda it: _step_draw_in_graph(labels, it))
    np.testing.assert_array_equal(traced(tf.constant(7, tf.int64)).numpy(), first)
    for other in [(43, 0, 7), (42, 1, 7), (42, 0, 8)]:
        assert (_step_draw(labels, *other) != first).any(), other


# ---------------------------------------------------------------- fixed-slot ROI samples
def _proposal_case():
    """Image 0: candidates 1 and 4 foreground (classes 0, 1), 0, 3, 5 background (K = 3),
    2 ignored; image 1: every candidate ignored."""
    k = 3
    boxes = np.stack([np.arange(6 * 4, dtype=np.float32).reshape(6, 4) + 1 + 100 * i
                      for i in range(2)])  # (2, 6, 4), distinct rows
    labels = np.array([[k, 0, -1, k, 1, k], [-1] * 6], np.int32)
    matches = np.array([[0, 1, 0, 0, 0, 1], [0] * 6], np.int32)
    gt_boxes = np.array([[[1, 1, 5, 5], [2, 2, 8, 8], [0, 0, 0, 0]]] * 2, np.float32)
    return k, boxes, labels, matches, gt_boxes


@pytest.mark.parametrize("s", [4, 8])
def test_sample_proposals_puts_foreground_then_background_then_padding(s):
    k, boxes, labels, matches, gt_boxes = _proposal_case()
    out = sample_proposals(tf.constant(boxes), tf.constant(labels), tf.constant(matches),
                           tf.constant(gt_boxes), s, 0.5, k, seed=1)
    assert out.boxes.shape == (2, s, 4) and out.classes.shape == (2, s)
    fg, valid = out.foreground.numpy(), out.valid.numpy()
    # image 0: both foreground fit under int(s * 0.5); background fills up to s, at most 3
    num_bg = min(3, s - 2)
    np.testing.assert_array_equal(fg[0], [True, True] + [False] * (s - 2))
    np.testing.assert_array_equal(valid[0], [True] * (2 + num_bg) + [False] * (s - 2 - num_bg))
    np.testing.assert_array_equal(out.boxes.numpy()[0, :2], boxes[0, [1, 4]])
    np.testing.assert_array_equal(out.classes.numpy()[0], [0, 1] + [k] * (s - 2))
    np.testing.assert_array_equal(out.gt_indices.numpy()[0], [1, 0] + [0] * (s - 2))
    np.testing.assert_array_equal(out.gt_boxes.numpy()[0, :2], gt_boxes[0, [1, 0]])
    bg_rows = [int(np.flatnonzero((boxes[0] == b).all(1))[0])
               for b in out.boxes.numpy()[0, 2:2 + num_bg]]
    assert bg_rows == sorted(bg_rows) and set(bg_rows) <= {0, 3, 5}  # candidate order kept
    assert len(set(bg_rows)) == num_bg
    # image 1: nothing to sample, every slot is padding (its box is never used)
    assert not valid[1].any() and not fg[1].any()
    assert (out.classes.numpy()[1] == k).all() and not out.gt_indices.numpy()[1].any()


def test_sample_proposals_in_graph_mode_with_unknown_dims():
    k, boxes, labels, matches, gt_boxes = _proposal_case()
    spec = [tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None, 4])]
    fn = tf.function(lambda *a: sample_proposals(*a, 8, 0.5, k, seed=1), input_signature=spec)
    graph = fn(boxes, labels, matches, gt_boxes)
    eager = sample_proposals(tf.constant(boxes), tf.constant(labels), tf.constant(matches),
                             tf.constant(gt_boxes), 8, 0.5, k, seed=1)
    for a, b in zip(graph, eager):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
