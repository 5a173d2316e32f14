"""Broken weights (issue 20): a truncated, corrupted or NaN model_final.npz is a one-line error
naming the file in tfmrcnn-predict and tfmrcnn-eval (it was a BadZipFile traceback, or, for NaN
weights, exit 0 with '0 detections')."""
import os
import shutil

import numpy as np
import pytest

import toy_model_dir as toy
from tfmrcnn.checkpoint.model_dir import WEIGHTS_FILENAME
from tfmrcnn.checkpoint.weights_io import read_weights


@pytest.fixture(scope="module")
def good_model_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("good"))
    toy.make_model_dir(folder)
    return folder


def _broken(good, tmp_path, how):
    folder = str(tmp_path / how)
    shutil.copytree(good, folder)
    weights = os.path.join(folder, WEIGHTS_FILENAME)
    data = open(weights, "rb").read()
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "corrupted":
        data = data[:len(data) // 3] + bytes(64) + data[len(data) // 3 + 64:]
    if how == "nan":
        arrays, _ = read_weights(weights)
        key = sorted(arrays)[0]
        arrays[key] = np.full_like(arrays[key], np.nan)
        np.savez(weights, **arrays)
    else:
        with open(weights, "wb") as f:
            f.write(data)
    return folder, weights


@pytest.mark.parametrize("how", ["truncated", "corrupted", "nan"])
def test_predict_and_eval_name_the_broken_file(good_model_dir, tmp_path, capfd, how):
    from tfmrcnn.cli.eval import main as eval_main
    from tfmrcnn.cli.predict import main as predict_main

    folder, weights = _broken(good_model_dir, tmp_path, how)
    images = tmp_path / "images"
    toy.write_images(str(images), corrupt=False)
    capfd.readouterr()
    rc = predict_main(["--model", folder, "--input", str(images),
                       "--output", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert rc == 1 and weights in err and "Traceback" not in err
    assert "NaN or inf" in err if how == "nan" else "Cannot read" in err
    assert not os.path.isdir(tmp_path / "out") or not os.listdir(tmp_path / "out")
    rc = eval_main(["--model", folder, "--dataset", "shapes_val"])
    err = capfd.readouterr().err
    assert rc == 1 and weights in err and "Traceback" not in err
