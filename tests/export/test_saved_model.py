"""The exported SavedModel against the Python test-time path (tfmrcnn-predict's Predictor)."""
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

import toy_model_dir as toy


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
