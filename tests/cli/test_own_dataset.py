"""A user's own COCO json with only the command lines (issue 18): train, evaluate, predict and
export a model on a copy of the shapes set whose category ids are 1, 5, 90 (own_coco_set), then
check that names and ids are the json's everywhere.

Training runs in one folder with relative ``coco:JSON:IMAGES`` names; evaluation, prediction
and export run from another folder with nothing registered: everything they know comes from the
model folder.
"""
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from own_coco_set import LABEL_IDS, LABEL_NAMES, make_own_set

ROOT = pathlib.Path(__file__).resolve().parents[2]
ITERATIONS = 20
pytestmark = pytest.mark.slow


def _run(module, args, cwd, env):
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{module} {args}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(work folder, other folder, env, model folder) after tfmrcnn-train on the own set."""
    work = tmp_path_factory.mktemp("own_dataset")
    make_own_set(str(work), num_train=8, num_val=3, seed=5, image_size=(192, 224))
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("TFMRCNN_DATASETS", "TFMRCNN_SHAPES_DIR")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT),
               TFMRCNN_CACHE=str(work / "cache"))  # a generated set would land here
    _run("tfmrcnn.cli.train", [
        "--config-file", str(ROOT / "configs" / "shapes_demo_cpu.yaml"), "--no-resume",
        "--num-vis", "0", "OUTPUT_DIR=model", f"SOLVER.MAX_ITER={ITERATIONS}",
        "SOLVER.IMS_PER_BATCH=2", "SOLVER.CHECKPOINT_PERIOD=1000",
        'DATASETS.TRAIN=("coco:train.json:generated/train",)',
        'DATASETS.TEST=("coco:val.json:generated/val",)'], cwd=work, env=env)
    return work, elsewhere, env, work / "model"


def test_training_keeps_classes_and_absolute_names(trained):
    work, _, _, model = trained
    classes = json.loads((model / "classes.json").read_text())
    assert classes == {"thing_classes": LABEL_NAMES, "category_ids": LABEL_IDS,
                       "datasets": [f"coco:{work / 'train.json'}:{work / 'generated' / 'train'}"],
                       "json_files": [str(work / "train.json")]}
    config = (model / "config.yaml").read_text()
    assert f"coco:{work / 'val.json'}:{work / 'generated' / 'val'}" in config
    # the evaluation at the end of training wrote the json's ids under a readable folder name
    results = json.loads((model / "inference" / "val" / "coco_instances_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(LABEL_IDS)
    # nothing generated: neither ./datasets nor the shapes set in the cache
    assert not (work / "datasets").exists() and not (work / "cache").exists()


def test_eval_from_another_folder_uses_the_json_ids_and_names(trained):
    work, elsewhere, env, model = trained
    _run("tfmrcnn.cli.eval", ["--model", str(model), "--output", "ev"], cwd=elsewhere, env=env)
    results = json.loads((elsewhere / "ev" / "coco_instances_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(LABEL_IDS)
    metrics = json.loads((elsewhere / "ev" / "metrics.json").read_text())
    assert {k for k in metrics["bbox"] if k.startswith("AP-")} == {
        f"AP-{name}" for name in LABEL_NAMES}


def test_eval_refuses_a_json_with_other_classes(trained):
    """The generator's own json numbers the same shapes 1, 2, 3 in another label order."""
    work, elsewhere, env, model = trained
    result = subprocess.run(
        [sys.executable, "-m", "tfmrcnn.cli.eval", "--model", str(model), "--dataset",
         f"coco:{work / 'generated' / 'annotations' / 'instances_val.json'}:"
         f"{work / 'generated' / 'val'}", "--output", "wrong"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 1
    assert "label 0 is 'square' in the model, 'circle' in the json" in result.stderr
    assert not (elsewhere / "wrong").exists()


def test_predict_json_and_pictures_carry_names_and_ids(trained):
    from tfmrcnn.checkpoint.model_dir import load_model
    from tfmrcnn.inference.predictor import Predictor
    from tfmrcnn.utils.visualize import draw_instances

    work, elsewhere, env, model = trained
    images = work / "generated" / "val"
    _run("tfmrcnn.cli.predict", ["--model", str(model), "--input", str(images), "--output",
                                 "pred", "--score-threshold", "0", "--eager"],
         cwd=elsewhere, env=env)
    predictions = json.loads((elsewhere / "pred" / "predictions.json").read_text())
    # the same model in this process (nothing registered here either) gives the labels
    cfg, net = load_model(str(model), ["MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0"])
    predictor = Predictor(cfg, net, compile=False)
    names = sorted(os.listdir(images))
    assert predictions
    for index, name in enumerate(names):
        image = cv2.imread(str(images / name))
        inst = predictor([image])[0]
        mine = [p for p in predictions if p["image_id"] == index]
        assert [p["category_id"] for p in mine] == [LABEL_IDS[c] for c in inst["classes"]]
        picture = cv2.imread(str(elsewhere / "pred" / (os.path.splitext(name)[0] + ".png")))
        named = draw_instances(image, inst["boxes"], inst["classes"], inst["scores"],
                               inst.get("masks"), LABEL_NAMES)
        numbered = draw_instances(image, inst["boxes"], inst["classes"], inst["scores"],
                                  inst.get("masks"), None)
        assert np.array_equal(picture, named)
        assert len(inst["classes"]) == 0 or not np.array_equal(picture, numbered)


def test_export_assets_carry_names_and_ids(trained):
    _, elsewhere, env, model = trained
    _run("tfmrcnn.cli.export", ["--model", str(model), "--output", "sm"], cwd=elsewhere, env=env)
    assets = elsewhere / "sm" / "assets.extra"
    assert (assets / "class_names.txt").read_text().split("\n")[:-1] == LABEL_NAMES
    assert [int(x) for x in (assets / "category_ids.txt").read_text().split()] == LABEL_IDS
