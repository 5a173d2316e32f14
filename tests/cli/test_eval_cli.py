"""tfmrcnn-eval command line: argument errors (fast), a full run on a tiny random model (slow)."""
import json

import pytest

import coco_toy_set as toy
from tfmrcnn.cli.eval import main

TINY = ["MODEL.ROI_HEADS.NUM_CLASSES=4", "MODEL.RESNETS.DEPTH=18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS=64", "MODEL.RESNETS.NORM=FrozenBN",
        "MODEL.FPN.OUT_CHANNELS=32", "MODEL.ROI_BOX_HEAD.FC_DIM=64",
        "MODEL.ROI_MASK_HEAD.CONV_DIM=16", "MODEL.RPN.PRE_NMS_TOPK_TEST=100",
        "MODEL.RPN.POST_NMS_TOPK_TEST=50", "INPUT.MIN_SIZE_TEST=64", "INPUT.MAX_SIZE_TEST=96"]


def test_missing_model_files_is_an_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--dataset", "shapes_val"]) == 1
    assert "config.yaml not found" in capsys.readouterr().err


def test_json_needs_images(tmp_path):
    (tmp_path / "config.yaml").write_text("MODEL:\n  MASK_ON: True\n")
    (tmp_path / "model_final.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match="--json needs --images"):
        main(["--model", str(tmp_path), "--json", "x.json"])


def _model_dir(tmp_path, repo_root, overrides):
    from tfmrcnn.checkpoint.weights_io import save_weights
    from tfmrcnn.config import load_config
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    cfg = load_config(str(repo_root / "configs" / "Base-RCNN-FPN.yaml"), overrides)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(cfg.dump())
    save_weights(str(model_dir / "model_final.npz"), GeneralizedRCNN(cfg))
    return model_dir


@pytest.mark.slow
def test_eval_cli_runs_a_model_and_writes_metrics(tmp_path, repo_root):
    json_path, root = toy.write_coco_set(str(tmp_path / "toy"), with_images=True)
    model_dir = _model_dir(tmp_path, repo_root, TINY[:-2])
    out = tmp_path / "out"
    rc = main(["--model", str(model_dir), "--json", json_path, "--images", root,
               "--output", str(out), "--batch-size", "2"] + TINY[-2:])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    for task in metrics.values():      # a random model: AP is a number in [0, 100]
        assert 0.0 <= task["AP"] <= 100.0
    assert isinstance(json.loads((out / "coco_instances_results.json").read_text()), list)


def test_bn_batch_stats_needs_batch_norms(tmp_path, repo_root, capsys):
    model_dir = _model_dir(tmp_path, repo_root, TINY[:-2])  # FrozenBN: nothing to switch
    rc = main(["--model", str(model_dir), "--dataset", "shapes_val", "--bn-batch-stats"])
    assert rc == 1
    assert "--bn-batch-stats: the model has no BN/SyncBN layer" in capsys.readouterr().err


@pytest.mark.slow
def test_bn_batch_stats_evaluates_with_batch_statistics(tmp_path, repo_root, capsys):
    json_path, root = toy.write_coco_set(str(tmp_path / "toy"), with_images=True)
    bn = [o.replace("NORM=FrozenBN", "NORM=BN") for o in TINY[:-2]]
    model_dir = _model_dir(tmp_path, repo_root, bn + ["MODEL.BACKBONE.FREEZE_AT=0"])
    out = tmp_path / "out"
    rc = main(["--model", str(model_dir), "--json", json_path, "--images", root,
               "--output", str(out), "--bn-batch-stats"] + TINY[-2:])
    assert rc == 0
    # R18: stem + 8 blocks x 2 convs + 3 shortcut convs = 20 batch norms
    assert "20 batch norm layers use each test batch's statistics" in capsys.readouterr().out
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["bbox"]["AP"] <= 100.0


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, repo_root):
    return _model_dir(tmp_path_factory.mktemp("eval_cli"), repo_root, TINY[:-2])


def test_bad_data_stops_before_inference_with_every_problem(tmp_path, tiny_model_dir, capsys):
    """Issue 20: a missing image or a `[]` ground-truth segmentation stopped tfmrcnn-eval with a
    traceback only after all inference; now it is a report naming each file and annotation."""
    json_path, root = toy.write_coco_set(str(tmp_path / "toy"), with_images=True)
    data = json.loads(open(json_path).read())
    data["annotations"][0]["segmentation"] = []
    with open(json_path, "w") as f:
        json.dump(data, f)
    missing = data["images"][1]
    (tmp_path / "toy" / missing["file_name"]).unlink()
    out = tmp_path / "out"
    rc = main(["--model", str(tiny_model_dir), "--json", json_path, "--images", root,
               "--output", str(out)] + TINY[-2:])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"{missing['file_name']} (image {missing['id']}): unreadable image" in err
    first = data["annotations"][0]
    assert f"(image {first['image_id']}, annotation {first['id']}): bad segmentation" in err
    assert not out.exists()  # nothing was inferred or written


def test_shapes_dir_of_the_user_is_refused_not_deleted(tmp_path, tiny_model_dir, monkeypatch,
                                                       capsys):
    """Issue 20: TFMRCNN_SHAPES_DIR=d tfmrcnn-eval ... deleted d/labels.csv and d/README."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "labels.csv").write_text("a,b")
    (folder / "README").write_text("mine")
    monkeypatch.setenv("TFMRCNN_SHAPES_DIR", str(folder))
    rc = main(["--model", str(tiny_model_dir), "--dataset", "shapes_val"])
    assert rc == 1
    assert f"Refusing to write the shapes data set into {folder}" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["README", "labels.csv"]
