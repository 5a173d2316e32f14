"""detector_postprocess / postprocess_graph / unbatch_outputs: separate x/y rescale, clip,
empty-box drop, paste; the Python and the graph form give the same detections."""
import numpy as np
import tensorflow as tf

from tfmrcnn.inference.paste import paste_masks_in_image, paste_windows
from tfmrcnn.inference.postprocess import detector_postprocess, postprocess_graph, unbatch_outputs


def _outputs(seed=0, batch=2, dets=6):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 60, (batch, dets, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 30, (batch, dets, 2))], -1).astype(np.float32)
    return {"boxes": boxes, "scores": rng.uniform(0, 1, (batch, dets)).astype(np.float32),
            "classes": rng.integers(0, 5, (batch, dets)).astype(np.int32),
            "masks": rng.uniform(0, 1, (batch, dets, 28, 28)).astype(np.float32),
            "num_detections": np.array([4, 0], np.int32)}


def test_unbatch_drops_padding_rows_and_accepts_tensors():
    outputs = _outputs()
    per_image = unbatch_outputs({k: tf.constant(v) for k, v in outputs.items()})
    assert len(per_image) == 2
    assert per_image[0]["boxes"].shape == (4, 4) and per_image[0]["masks"].shape == (4, 28, 28)
    assert per_image[1]["scores"].shape == (0,)
    np.testing.assert_array_equal(per_image[0]["classes"], outputs["classes"][0, :4])


def test_separate_xy_scales_clip_and_drop_empty():
    resized_hw, original_hw = (80, 100), (50, 160)          # y scale 0.625, x scale 1.6
    boxes = np.array([[10, 8, 40, 30],       # plain
                      [-5, 70, 120, 95],     # partly outside: clipped
                      [101, 10, 130, 20],    # right of the image: zero width after clip, dropped
                      [20, 20, 20, 40]],     # zero width: dropped
                     np.float32)
    outputs = {"boxes": boxes, "scores": np.array([0.9, 0.8, 0.7, 0.6], np.float32),
               "classes": np.array([1, 2, 3, 4], np.int32),
               "masks": np.ones((4, 28, 28), np.float32)}
    res = detector_postprocess(outputs, resized_hw, original_hw)
    expected = np.array([[16, 5, 64, 18.75], [0, 43.75, 160, 50]], np.float32)
    np.testing.assert_allclose(res["boxes"], expected, rtol=1e-6)
    np.testing.assert_array_equal(res["classes"], [1, 2])
    np.testing.assert_allclose(res["scores"], [0.9, 0.8])
    assert res["masks"].shape == (2, 50, 160) and res["masks"].dtype == bool
    # an all-ones mask fills exactly the pixels whose centre lies inside the clipped box
    ys, xs = np.mgrid[0:50, 0:160] + 0.5
    for k, (x0, y0, x1, y1) in enumerate(expected):
        inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
        np.testing.assert_array_equal(res["masks"][k], inside)


def test_masks_are_pasted_at_original_resolution_with_rescaled_boxes():
    outputs = _outputs(seed=3)
    res = detector_postprocess({k: v[:1] for k, v in outputs.items()}, (90, 96), (45, 128))
    boxes = outputs["boxes"][0, :4] * np.array([128 / 96, 45 / 90] * 2, np.float32)
    boxes = np.minimum(np.maximum(boxes, 0), [128, 45, 128, 45]).astype(np.float32)
    np.testing.assert_allclose(res["boxes"], boxes, rtol=1e-6)
    np.testing.assert_array_equal(
        res["masks"],
        paste_masks_in_image(outputs["masks"][0, :4], res["boxes"], (45, 128)).numpy())
    # column-major per mask (what the RLE encoder reads) and empty outside the paste windows
    assert res["masks"].transpose(0, 2, 1).flags.c_contiguous
    windows = paste_windows(res["boxes"], (45, 128)).numpy()
    np.testing.assert_array_equal(res["mask_windows"], windows)   # returned for RLE encoding
    for mask, (x0, y0, x1, y1) in zip(res["masks"], windows):
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any() and mask[y0:y1, x0:x1].any()


def test_new_image_sizes_and_detection_counts_do_not_retrace():
    """Eval on images of many sizes: one trace of the post-processing functions serves all."""
    from tfmrcnn.inference import postprocess

    outputs = _outputs(seed=4, batch=1, dets=6)
    detector_postprocess(outputs, (90, 96), (45, 128))
    detector_postprocess({k: v for k, v in outputs.items() if k != "masks"}, (90, 96), (45, 128))
    traces = (postprocess._masks_fn.experimental_get_tracing_count(),
              postprocess._boxes_fn.experimental_get_tracing_count())
    for (resized, original), dets in zip((((64, 96), (200, 300)), ((96, 64), (31, 17))), (2, 5)):
        cut = dict(outputs, num_detections=np.array([dets], np.int32))
        detector_postprocess(cut, resized, original)
        detector_postprocess({k: v for k, v in cut.items() if k != "masks"}, resized, original)
    assert (postprocess._masks_fn.experimental_get_tracing_count(),
            postprocess._boxes_fn.experimental_get_tracing_count()) == traces


def test_no_detections_and_no_masks():
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "classes": np.zeros(0, np.int32), "masks": np.zeros((0, 28, 28), np.float32)}
    res = detector_postprocess(empty, (32, 32), (20, 24))
    assert res["boxes"].shape == (0, 4) and res["masks"].shape == (0, 20, 24)
    box_only = {k: v for k, v in empty.items() if k != "masks"}
    assert "masks" not in detector_postprocess(box_only, (32, 32), (20, 24))


def test_graph_form_gives_the_same_detections():
    rng = np.random.default_rng(2)
    d, resized, original = 7, (64, 91), (70, 100)
    xy = rng.uniform(-10, 80, (d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (d, 2))], 1).astype(np.float32)
    boxes[2] = [95, 10, 120, 30]   # right of the image: empty after clipping, dropped
    outputs = {"boxes": boxes, "scores": rng.uniform(0, 1, d).astype(np.float32),
               "classes": rng.integers(0, 3, d).astype(np.int32),
               "masks": rng.uniform(0, 1, (d, 28, 28)).astype(np.float32)}
    graph = tf.function(postprocess_graph, autograph=False)
    got = graph({k: tf.constant(v) for k, v in outputs.items()},
                tf.constant(resized), tf.constant(original))
    want = detector_postprocess(outputs, resized, original)
    assert int(got["num_detections"]) == len(want["boxes"]) == d - 1
    for key in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(got[key].numpy(), want[key])
    assert got["masks"].dtype == tf.uint8
    np.testing.assert_array_equal(got["masks"].numpy().astype(bool), want["masks"])
    # a Faster R-CNN (MASK_ON False) has no masks output
    no_masks = {k: tf.constant(v) for k, v in outputs.items() if k != "masks"}
    got = graph(no_masks, tf.constant(resized), tf.constant(original))
    assert "masks" not in got and int(got["num_detections"]) == d - 1
