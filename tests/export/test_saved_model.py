"""The exported SavedModel: portable (standard convolutions, RoiAlign its only custom op, loads
in a process where only RoiAlign is registered) and equal to the Python test-time path
(tfmrcnn-predict's Predictor with MODEL.WINOGRAD=False)."""
import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

import toy_model_dir as toy

# A fresh interpreter with only the RoiAlign op library loaded (no tfmrcnn import, so no
# Winograd op registered) runs both signatures of the SavedModel on every image.
_SERVE_WITH_ROI_ALIGN_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    library, saved, images_dir, out = sys.argv[1:5]
    tf.load_op_library(library)
    registered = {op: op_def_registry.get(op) is not None for op in
                  ("RoiAlign", "WinogradInputTransform", "WinogradOutputTransform")}
    detector = tf.saved_model.load(saved)
    results = {}
    for name in sorted(json.load(open(images_dir + "/names.json"))):
        encoded = tf.io.read_file(images_dir + "/" + name)
        bgr = tf.reverse(tf.io.decode_image(encoded, channels=3), axis=[-1])
        for signature, kwargs in (("serving_default", {"image": bgr}),
                                  ("serve_encoded", {"image_bytes": encoded})):
            got = detector.signatures[signature](**kwargs)
            for key, value in got.items():
                results[f"{name}/{signature}/{key}"] = value.numpy()
    np.savez(out, **results)
    json.dump(registered, open(out + ".json", "w"))
""")


def test_export_refuses_a_winograd_model(tmp_path):
    from tfmrcnn.config import get_cfg
    from tfmrcnn.export.saved_model import export_saved_model

    class WinogradModel:
        winograd = True

    with pytest.raises(ValueError, match="MODEL.WINOGRAD=False"):
        export_saved_model(get_cfg(), WinogradModel(), str(tmp_path / "saved"))
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow  # exports the model, compiles the RoiAlign op alone (~3 min on 2 CPU cores)
def test_saved_model_is_portable_and_matches_python_predictor(tmp_path, repo_root):
    from tfmrcnn.checkpoint.model_dir import load_model
    from tfmrcnn.cli.export import main as export_main
    from tfmrcnn.data.catalog import MetadataCatalog
    from tfmrcnn.export.saved_model import saved_model_op_types
    from tfmrcnn.inference.predictor import Predictor

    model_dir, saved = str(tmp_path / "model"), str(tmp_path / "saved")
    cfg = toy.make_model_dir(model_dir)
    assert cfg.MODEL.WINOGRAD            # the model folder asks for Winograd; the export won't
    images = toy.write_images(str(tmp_path / "images"), corrupt=False)
    with open(tmp_path / "images" / "names.json", "w") as f:
        json.dump(sorted(images), f)
    assert export_main(["--model", model_dir, "--output", saved]) == 0
    with open(os.path.join(saved, "assets.extra", "class_names.txt")) as f:
        assert f.read().splitlines() == list(MetadataCatalog.get("shapes_train").thing_classes)

    # standard convolutions only; RoiAlign the one custom op
    ops = saved_model_op_types(saved)
    assert "RoiAlign" in ops and "Conv2D" in ops
    assert not [op for op in ops if "Winograd" in op]
    with open(os.path.join(saved, "assets.extra", "custom_ops.txt")) as f:
        assert f.read().splitlines() == ["RoiAlign"]

    library = str(tmp_path / "roi_align_ops.so")
    subprocess.run([sys.executable, str(repo_root / "custom_ops" / "build.py"), "--out", library,
                    "--sources", "roi_align_op.cc"], check=True, capture_output=True)
    out = str(tmp_path / "served.npz")
    script = tmp_path / "serve.py"
    script.write_text(_SERVE_WITH_ROI_ALIGN_ONLY)
    subprocess.run([sys.executable, str(script), library, saved, str(tmp_path / "images"), out],
                   check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    with open(out + ".json") as f:
        assert json.load(f) == {"RoiAlign": True, "WinogradInputTransform": False,
                                "WinogradOutputTransform": False}
    served = np.load(out)

    # tfmrcnn-predict's path with the same (standard) convolutions
    cfg, model = load_model(model_dir, ["MODEL.WINOGRAD=False"])
    predictor = Predictor(cfg, model, compile=False)
    for name, image in images.items():
        want = predictor([image])[0]
        assert len(want["boxes"]) > 0
        for signature in ("serving_default", "serve_encoded"):
            got = {key.split("/")[-1]: served[key] for key in served.files
                   if key.startswith(f"{name}/{signature}/")}
            assert int(got["num_detections"]) == len(want["boxes"])
            np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)
            np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
            np.testing.assert_array_equal(got["classes"], want["classes"])
            assert got["masks"].shape == (len(want["boxes"]), *image.shape[:2])
            np.testing.assert_array_equal(got["masks"].astype(bool), want["masks"])

    # a JPEG through serve_encoded equals its decoded pixels (RGB -> BGR) through the default
    _, jpeg = cv2.imencode(".jpg", images["a.png"])
    (tmp_path / "jpeg").mkdir()
    (tmp_path / "jpeg" / "a.jpg").write_bytes(jpeg.tobytes())
    (tmp_path / "jpeg" / "names.json").write_text(json.dumps(["a.jpg"]))
    subprocess.run([sys.executable, str(script), library, saved, str(tmp_path / "jpeg"),
                    str(tmp_path / "jpeg.npz")], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    jpeg_out = np.load(tmp_path / "jpeg.npz")
    for key in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(jpeg_out[f"a.jpg/serve_encoded/{key}"],
                                      jpeg_out[f"a.jpg/serving_default/{key}"])
