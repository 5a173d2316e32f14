"""The in-graph test-time pipeline and the exported SavedModel against the Python path."""
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

import toy_model_dir as toy
from tfmrcnn.data.resize import prepare_eval_images
from tfmrcnn.export.saved_model import postprocess_tf, preprocess_image_tf, resized_shape_tf
from tfmrcnn.inference.postprocess import detector_postprocess


def _d2_resize_shape(h, w, short, max_size):
    """detectron2's ResizeShortestEdge.get_output_shape, in Python floats."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return int(new_h + 0.5), int(new_w + 0.5)


def test_resized_shape_matches_detectron2_rule():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(1, 2000, (300, 2)),
                            [[2, 3], [3, 2], [480, 640], [640, 480], [100, 100], [1, 1999]]])
    for short, max_size in [(800, 1333), (3, 1000), (64, 96), (600, 600)]:
        got_h, got_w = resized_shape_tf(tf.constant(sizes[:, 0]), tf.constant(sizes[:, 1]),
                                        short, max_size)
        want = np.array([_d2_resize_shape(int(h), int(w), short, max_size) for h, w in sizes])
        np.testing.assert_array_equal(np.stack([got_h, got_w], 1), want)
    # MIN_SIZE_TEST 0: no resize
    assert [int(v) for v in resized_shape_tf(37, 55, 0, 1333)] == [37, 55]


@pytest.mark.parametrize("shape,to_rgb", [((70, 100), False), ((90, 60), True), ((64, 80), False)])
def test_preprocess_matches_eval_path(shape, to_rgb):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    images, sizes = preprocess_image_tf(tf.constant(image), 64, 96, 32, to_rgb=to_rgb)
    ref_images, ref_sizes = prepare_eval_images([image[:, :, ::-1] if to_rgb else image], 64, 96, 32)
    np.testing.assert_array_equal(sizes.numpy(), ref_sizes)
    np.testing.assert_array_equal(images.numpy(), ref_images)


def test_postprocess_matches_numpy_path():
    rng = np.random.default_rng(2)
    d, resized, original = 7, (64, 91), (70, 100)
    xy = rng.uniform(-10, 80, (d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (d, 2))], 1).astype(np.float32)
    boxes[2] = [95, 10, 120, 30]   # right of the image: empty after clipping, dropped
    outputs = {"boxes": boxes[None], "scores": rng.uniform(0, 1, (1, d)).astype(np.float32),
               "classes": rng.integers(0, 3, (1, d)).astype(np.int32),
               "masks": rng.uniform(0, 1, (1, d, 28, 28)).astype(np.float32),
               "num_detections": np.array([d - 1], np.int32)}   # the last row is padding
    got = postprocess_tf({k: tf.constant(v) for k, v in outputs.items()},
                         tf.constant(resized), tf.constant(original))
    want = detector_postprocess(outputs, resized, original)
    assert int(got["num_detections"]) == len(want["boxes"]) == d - 2
    np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got["scores"].numpy(), want["scores"])
    np.testing.assert_array_equal(got["classes"].numpy(), want["classes"])
    assert got["masks"].dtype == tf.uint8
    np.testing.assert_array_equal(got["masks"].numpy().astype(bool), want["masks"])
    # a Faster R-CNN (MASK_ON False) has no masks output
    no_masks = {k: tf.constant(v) for k, v in outputs.items() if k != "masks"}
    got = postprocess_tf(no_masks, tf.constant(resized), tf.constant(original))
    assert "masks" not in got and int(got["num_detections"]) == d - 2


@pytest.mark.slow  # traces and saves the whole model twice (~1 min on 2 CPU cores)
def test_saved_model_matches_python_predictor(tmp_path):
    from tfmrcnn.cli.export import main as export_main
    from tfmrcnn.data.catalog import MetadataCatalog
    from tfmrcnn.checkpoint.model_dir import load_model
    from tfmrcnn.inference.predictor import Predictor
    from tfmrcnn.export.saved_model import load_saved_model

    model_dir, saved = str(tmp_path / "model"), str(tmp_path / "saved")
    toy.make_model_dir(model_dir)
    images = toy.write_images(str(tmp_path / "images"), corrupt=False)
    assert export_main(["--model", model_dir, "--output", saved]) == 0
    with open(os.path.join(saved, "assets.extra", "class_names.txt")) as f:
        assert f.read().splitlines() == list(MetadataCatalog.get("shapes_train").thing_classes)

    detector = load_saved_model(saved)
    assert set(detector.signatures) == {"serving_default", "serve_encoded"}
    cfg, model = load_model(model_dir)
    predictor = Predictor(cfg, model, compile=False)
    for name, image in images.items():
        want = predictor([image])[0]
        assert len(want["boxes"]) > 0
        with open(tmp_path / "images" / name, "rb") as f:
            encoded = f.read()
        for got in (detector.signatures["serving_default"](image=tf.constant(image)),
                    detector.signatures["serve_encoded"](image_bytes=tf.constant(encoded))):
            assert int(got["num_detections"]) == len(want["boxes"])
            np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"], atol=1e-3)
            np.testing.assert_allclose(got["scores"].numpy(), want["scores"], atol=1e-5)
            np.testing.assert_array_equal(got["classes"].numpy(), want["classes"])
            assert got["masks"].shape == (len(want["boxes"]), *image.shape[:2])
            np.testing.assert_array_equal(got["masks"].numpy().astype(bool), want["masks"])

    # a JPEG through serve_encoded equals its TF-decoded pixels (RGB -> BGR) through the default
    _, jpeg = cv2.imencode(".jpg", images["a.png"])
    decoded_bgr = tf.reverse(tf.io.decode_jpeg(jpeg.tobytes(), channels=3), axis=[-1])
    from_bytes = detector.signatures["serve_encoded"](image_bytes=tf.constant(jpeg.tobytes()))
    from_pixels = detector.signatures["serving_default"](image=decoded_bgr)
    np.testing.assert_allclose(from_bytes["boxes"].numpy(), from_pixels["boxes"].numpy())
