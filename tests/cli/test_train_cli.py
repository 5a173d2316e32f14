"""tfmrcnn-train end to end (single process) and its argument handling."""
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from tfmrcnn.cli.train import build_parser, main

# the synthetic shapes set is generated once (file-locked) and shared by these tests
SHAPES_DIR = os.path.join(tempfile.gettempdir(), "tfmrcnn_test_shapes")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_parser_defaults_and_flags():
    p = build_parser()
    a = p.parse_args(["--config-file", "c.yaml", "SOLVER.BASE_LR=0.1", "OUTPUT_DIR=x"])
    assert a.resume and not a.eval_only and a.opts == ["SOLVER.BASE_LR=0.1", "OUTPUT_DIR=x"]
    a = p.parse_args(["--config-file", "c.yaml", "--no-resume", "--eval-only"])
    assert not a.resume and a.eval_only
    a = p.parse_intermixed_args(["--config-file", "c.yaml", "A.B=1", "--eval-only", "C=2"])
    assert a.eval_only and a.opts == ["A.B=1", "C=2"]
    with pytest.raises(SystemExit):
        p.parse_args(["--config-file", "c.yaml", "--resume", "--no-resume"])


def test_unknown_config_key_is_reported(capsys):
    rc = main(["--config-file", str(ROOT / "configs" / "shapes_demo_cpu.yaml"), "SOLVER.BASE_LRR=1"])
    assert rc == 2
    assert "SOLVER.BASE_LR" in capsys.readouterr().err


def test_negative_max_iter_is_refused_before_anything_runs(tmp_path, capsys):
    """Issue 20: SOLVER.MAX_ITER=-5 printed 'from iteration 5 to -5' and exited 0."""
    rc = main(["--config-file", str(ROOT / "configs" / "shapes_demo_cpu.yaml"),
               "SOLVER.MAX_ITER=-5", f"OUTPUT_DIR={tmp_path / 'out'}"])
    assert rc == 2
    assert "SOLVER.MAX_ITER=-5 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_evaluate_draw_and_resume(tmp_path):
    import json

    # TensorFlow's own log level is left to tfmrcnn-train (quiet unless --verbose)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(ROOT),
               TFMRCNN_SHAPES_DIR=os.environ.get("TFMRCNN_SHAPES_DIR", SHAPES_DIR))
    cmd = [sys.executable, "-m", "tfmrcnn.cli.train", "--config-file",
           str(ROOT / "configs" / "shapes_demo_cpu.yaml"), "--num-vis", "2",
           f"OUTPUT_DIR={tmp_path / 'out'}", "SOLVER.MAX_ITER=2", "SOLVER.IMS_PER_BATCH=2",
           "SOLVER.STEPS=(1,)", "SOLVER.CHECKPOINT_PERIOD=1", "TRAINER.LOG_PERIOD=1",
           "TRAINER.VIS_PERIOD=2", "MODEL.RESNETS.NORM=BN"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # a quiet log (issue 18): no AutoGraph or TensorFlow warnings, no start-up noise, the
    # config summarised in a few lines (the whole of it in config.yaml)
    for text in (first.stdout, first.stderr):
        assert "AutoGraph" not in text and "WARNING" not in text, text[-3000:]
    assert "cpu_feature_guard" not in first.stderr and "VERSION: 2" not in first.stdout
    assert "schedule: 2 iterations x 2 images" in first.stdout
    # one metrics.json line per logged iteration (0, 1) and the final evaluation at 1
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "total_loss" in x] == [0, 1]
    assert [x["iteration"] for x in lines if "bbox/AP" in x] == [1]
    out = tmp_path / "out"
    for name in ("config.yaml", "log.txt", "model_0000000.npz", "model_final.npz",
                 "model_final.train_state.npz", "last_checkpoint"):
        assert (out / name).exists(), name
    assert "| bbox |" in first.stdout and "| segm |" in first.stdout       # the AP table
    assert len(list((out / "vis").glob("*.png"))) == 2
    assert "iter: 1" in (out / "log.txt").read_text()
    # --eval-only picks the newest checkpoint of OUTPUT_DIR and evaluates it
    again = subprocess.run(cmd + ["--eval-only", "--num-vis", "0"], capture_output=True,
                           text=True, env=env, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "| bbox |" in again.stdout
    assert f"Resumed from {out / 'model_final.npz'} at iteration 2" in (out / "log.txt").read_text()


@pytest.mark.parametrize("how", ["files missing", "boxes outside"])
def test_no_usable_training_image_stops_at_once(tmp_path, how):
    """Issue 20: with no usable training image the input pipeline skipped empty batches forever
    (after 240 s no iteration, 148,609 'Skipping image' lines); now training stops before the
    model is built, with the reason."""
    import json

    from tfmrcnn.data.catalog import DatasetCatalog, MetadataCatalog, register_coco_instances

    images = tmp_path / "images"
    images.mkdir()
    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50}
                       for i in (1, 2)],
            "annotations": [{"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0,
                             "bbox": [60, 5, 10, 10] if how == "boxes outside" else [5, 5, 10, 10],
                             "area": 100.0, "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]}
                            for i in (1, 2)],
            "categories": [{"id": 1, "name": "thing"}]}
    if how == "boxes outside":
        import cv2
        import numpy as np

        for i in (1, 2):
            cv2.imwrite(str(images / f"{i}.png"), np.zeros((40, 50, 3), np.uint8))
    (tmp_path / "set.json").write_text(json.dumps(data))
    name = f"unusable_{how.replace(' ', '_')}"
    register_coco_instances(name, {}, str(tmp_path / "set.json"), str(images))
    try:
        rc = main(["--config-file", str(ROOT / "configs" / "shapes_demo_cpu.yaml"),
                   f"OUTPUT_DIR={tmp_path / 'out'}", f"DATASETS.TRAIN=('{name}',)",
                   "DATASETS.TEST=()", "MODEL.ROI_HEADS.NUM_CLASSES=1"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert rc == 1
    log = (tmp_path / "out" / "log.txt").read_text()
    if how == "files missing":
        assert "2 problems in 2 of 2 images" in log and f"{images / '1.png'}" in log
    else:
        assert "no usable training image among 2" in log
    assert not list((tmp_path / "out").glob("model_*"))
