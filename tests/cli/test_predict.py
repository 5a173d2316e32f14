"""tfmrcnn-predict on a folder with a random-weight model: pictures, COCO results, bad files."""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

import toy_model_dir as toy
from tfmrcnn.cli.predict import list_images, main, picture_names


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Run the CLI once: (model dir, input images {name: BGR}, output dir, return code).

    Batches of 2: [a.png, b.png] then [c.png] (corrupt, so an empty batch)."""
    root = tmp_path_factory.mktemp("predict")
    model_dir, out = str(root / "model"), str(root / "out")
    toy.make_model_dir(model_dir)
    images = toy.write_images(str(root / "images"))
    rc = main(["--model", model_dir, "--input", str(root / "images"), "--output", out,
               "--score-threshold", "0", "--eager", "--batch-size", "2"])
    return model_dir, images, out, rc


def test_pictures_for_the_good_images_only(predicted):
    _, images, out, rc = predicted
    assert rc == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "predictions.json"]
    for name, image in images.items():
        picture = cv2.imread(os.path.join(out, name))
        assert picture.shape == image.shape
        assert np.any(picture != image)  # detections were drawn on it


def test_corrupt_file_reported(tmp_path, predicted, capfd):
    model_dir = predicted[0]
    toy.write_images(str(tmp_path / "in"))
    rc = main(["--model", model_dir, "--input", str(tmp_path / "in" / "c.png"),
               "--output", str(tmp_path / "out"), "--eager"])
    err = capfd.readouterr().err
    assert rc == 1  # no image worked
    assert "error" in err and "c.png" in err
    with open(tmp_path / "out" / "predictions.json") as f:
        assert json.load(f) == []


def test_predictions_json_matches_the_model(predicted):
    from tfmrcnn.data.catalog import MetadataCatalog
    from tfmrcnn.checkpoint.model_dir import load_model
    from tfmrcnn.inference.predictor import Predictor

    model_dir, images, out, _ = predicted
    with open(os.path.join(out, "predictions.json")) as f:
        results = json.load(f)
    cfg, model = load_model(model_dir, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0"])
    predictor = Predictor(cfg, model, compile=False)
    to_dataset = MetadataCatalog.get("shapes_train").thing_contiguous_id_to_dataset_id
    names = sorted(images)
    # the same batch as the CLI's first one: both images padded together
    for image_id, expected in enumerate(predictor([images[n] for n in names])):
        name, image = names[image_id], images[names[image_id]]
        rows = [r for r in results if r["file_name"] == name]
        assert len(rows) == len(expected["boxes"]) > 0
        assert all(r["image_id"] == image_id for r in rows)
        assert [r["category_id"] for r in rows] == [to_dataset[int(c)] for c in expected["classes"]]
        np.testing.assert_allclose([r["score"] for r in rows], expected["scores"], rtol=1e-5)
        x0, y0, x1, y1 = expected["boxes"].T
        np.testing.assert_allclose([r["bbox"] for r in rows],
                                   np.stack([x0, y0, x1 - x0, y1 - y0], 1), atol=1e-3)
        for r, mask in zip(rows, expected["masks"]):
            assert isinstance(r["segmentation"]["counts"], str)
            decoded = mask_util.decode({"size": r["segmentation"]["size"],
                                        "counts": r["segmentation"]["counts"].encode()})
            assert decoded.shape == image.shape[:2]
            np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_missing_model_files(tmp_path, capfd):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.yaml").write_text("")
    rc = main(["--model", str(tmp_path / "model"), "--input", str(tmp_path),
               "--output", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert rc == 1
    assert "model_final.npz" in err and "tfmrcnn-convert" in err


def test_list_images_and_picture_names(tmp_path):
    for name in ["b.JPG", "a.png", "a.jpeg", "notes.txt", "c.gif"]:
        (tmp_path / name).write_bytes(b"")
    paths = list_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["a.jpeg", "a.png", "b.JPG"]
    assert picture_names(paths) == ["a.jpeg.png", "a.png.png", "b.png"]
    assert list_images(str(tmp_path / "a.png")) == [str(tmp_path / "a.png")]
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "missing.png"))
