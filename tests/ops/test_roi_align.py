"""RoiAlign / RoiAlignGrad custom op against the NumPy definition and detectron2's golden vectors."""
import importlib
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from custom_ops.reference.roi_align_numpy import (boxes_of_every_kind, roi_align_grad_np,
                                                  roi_align_np)
from tfmrcnn.ops import roi_align, roi_align_grad


FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "d2"
TOL = 1e-4


MAPS = [  # (N, H, W, C, spatial_scale)
    (1, 13, 17, 3, 1 / 8),
    (3, 10, 12, 5, 1 / 4),
    (2, 9, 8, 53, 1 / 4),  # C = 32 + 16 + 5: every vector path of the CPU kernel
]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 4])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (5, 3)])
def test_forward_and_backward_match_numpy(aligned, sampling_ratio, output_size):
    rng = np.random.default_rng(hash((aligned, sampling_ratio, output_size)) % 2**32)
    for n, h, w, c, scale in MAPS:
        features = rng.standard_normal((n, h, w, c)).astype(np.float32)
        boxes = boxes_of_every_kind(rng, h / scale, w / scale)
        indices = rng.integers(0, n, len(boxes)).astype(np.int32)
        args = (output_size, scale, sampling_ratio, aligned)
        out = roi_align(features, boxes, indices, *args).numpy()
        ref = roi_align_np(features, boxes, indices, *args)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
        upstream = rng.standard_normal(out.shape).astype(np.float32)
        grad = roi_align_grad(upstream, boxes, indices, features.shape, *args).numpy()
        ref_grad = roi_align_grad_np(upstream, boxes, indices, features.shape, *args)
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=TOL)


def test_batch_index_selects_the_image():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((3, 8, 9, 2)).astype(np.float32)
    boxes = np.array([[2.0, 3.0, 20.0, 25.0]] * 3, np.float32)
    out = roi_align(features, boxes, [0, 1, 2], 4, 0.25).numpy()
    for b in range(3):
        np.testing.assert_allclose(out[b], roi_align_np(features[b:b + 1], boxes[:1], [0],
                                                        (4, 4), 0.25)[0], atol=TOL)
    assert np.abs(out[0] - out[1]).max() > 0.1


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("roi_align_*.npz")))
def test_detectron2_golden(fixture):
    d = np.load(FIXTURES / fixture)
    args = (tuple(int(s) for s in d["output_size"]), float(d["spatial_scale"]),
            int(d["sampling_ratio"]), bool(d["aligned"]))
    features = tf.constant(d["features"])
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = roi_align(features, d["boxes"], d["box_indices"], *args)
        loss = tf.reduce_sum(out * d["upstream_grad"])
    np.testing.assert_allclose(out.numpy(), d["output"], rtol=0, atol=TOL)
    np.testing.assert_allclose(tape.gradient(loss, features).numpy(), d["features_grad"],
                               rtol=0, atol=TOL)


def test_empty_rois():
    features = tf.random.normal((2, 6, 7, 3))
    boxes, indices = tf.zeros((0, 4)), tf.zeros((0,), tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = roi_align(features, boxes, indices, (7, 7), 0.25)
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 7, 7, 3)
    grad = tape.gradient(loss, features)
    assert grad.shape == features.shape
    assert not np.any(grad.numpy())


def test_gradient_against_finite_differences():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 6, 7, 2)).astype(np.float32)
    boxes = np.array([[1.0, 2.0, 20.0, 17.0], [-4.0, 10.0, 9.0, 30.0], [5.0, 5.0, 6.0, 6.5]],
                     np.float32)
    indices = np.array([1, 0, 1], np.int32)

    def f(x):
        return roi_align(x, boxes, indices, (3, 2), 0.25, sampling_ratio=0, aligned=True)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(features)])
    assert theoretical[0].shape == (3 * 3 * 2 * 2, features.size)
    assert np.abs(theoretical[0]).max() > 0.1
    # ROIAlign is linear in the features, so finite differences are exact up to rounding.
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=2e-3)


def test_boxes_get_no_gradient():
    features = tf.random.normal((1, 5, 5, 1))
    boxes = tf.constant([[0.0, 0.0, 10.0, 10.0]])
    with tf.GradientTape() as tape:
        tape.watch(boxes)
        loss = tf.reduce_sum(roi_align(features, boxes, [0], 2, 0.5))
    assert tape.gradient(loss, boxes) is None


def test_tf_function_with_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4]),
                                  tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)])
    def pooled_and_grad(features, boxes, indices):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = roi_align(features, boxes, indices, (14, 14), 1 / 16)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, features)

    out_spec = pooled_and_grad.get_concrete_function().structured_outputs[0]
    assert out_spec.shape.as_list() == [None, 14, 14, 4]
    rng = np.random.default_rng(4)
    features = rng.standard_normal((2, 9, 11, 4)).astype(np.float32)
    for r in (0, 1, 5):
        boxes = rng.uniform(0, 150, (r, 4)).astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        indices = rng.integers(0, 2, r).astype(np.int32)
        out, grad = pooled_and_grad(features, boxes, indices)
        ref = roi_align_np(features, boxes, indices, (14, 14), 1 / 16)
        np.testing.assert_allclose(out.numpy(), ref, atol=TOL)
        ref_grad = roi_align_grad_np(2 * ref, boxes, indices, features.shape, (14, 14), 1 / 16)
        np.testing.assert_allclose(grad.numpy(), ref_grad, atol=TOL)


def test_bad_box_index_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices"):
        roi_align(tf.zeros((2, 4, 4, 1)), [[0.0, 0.0, 4.0, 4.0]], [2], 2, 1.0)


def test_missing_library_says_how_to_build(monkeypatch, tmp_path):
    library = importlib.import_module("tfmrcnn.ops.library")
    monkeypatch.setattr(library, "_lib", None)
    monkeypatch.setattr(library, "_LIB_PATH", str(tmp_path / "_tfmrcnn_ops.so"))
    with pytest.raises(ImportError, match="custom_ops/build.py"):
        library.load_library()


@pytest.mark.parametrize("shape,box,output_size", [
    ((1, 500, 12, 4), [0.0, 0.0, 12.0, 500.0], (7, 7)),    # ~73 feature rows per bin
    ((1, 30, 12, 4), [3.2, 10.1, 4.0, 10.9], (80, 80)),    # one pixel used by ~80 bins
])
def test_bins_with_many_terms(shape, box, output_size):
    """More taps per bin / bins per pixel than the CPU kernel sums in one pass (64)."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal(shape).astype(np.float32)
    boxes = np.array([box], np.float32)
    out = roi_align(features, boxes, [0], output_size, 1.0).numpy()
    np.testing.assert_allclose(out, roi_align_np(features, boxes, [0], output_size, 1.0),
                               atol=TOL)
    upstream = rng.standard_normal(out.shape).astype(np.float32)
    grad = roi_align_grad(upstream, boxes, [0], shape, output_size, 1.0).numpy()
    np.testing.assert_allclose(
        grad, roi_align_grad_np(upstream, boxes, [0], shape, output_size, 1.0), atol=TOL)
