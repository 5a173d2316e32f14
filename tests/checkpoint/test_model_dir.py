"""Model directory checks, class-name resolution order and the label -> category id map."""
import pytest

from tfmrcnn.config import load_config
from tfmrcnn.data.catalog import COCO_CATEGORIES, MetadataCatalog
from tfmrcnn.checkpoint.model_dir import (ModelDirError, label_to_category_id, model_dir_paths,
                                      resolve_class_names)


def _cfg(num_classes, train=("shapes_train",)):
    return load_config(overrides=[f"MODEL.ROI_HEADS.NUM_CLASSES={num_classes}",
                                  f"DATASETS.TRAIN={list(train)}"])


def test_model_dir_paths(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        model_dir_paths(str(tmp_path / "nope"))
    (tmp_path / "model_final.npz").write_bytes(b"")
    with pytest.raises(ModelDirError, match="config.yaml"):
        model_dir_paths(str(tmp_path))
    (tmp_path / "config.yaml").write_text("")
    assert model_dir_paths(str(tmp_path)) == (str(tmp_path / "config.yaml"),
                                              str(tmp_path / "model_final.npz"))


def test_class_names_order(tmp_path):
    cfg = _cfg(3)
    shapes_names = list(MetadataCatalog.get("shapes_train").thing_classes)
    # dataset metadata when nothing else is given
    assert resolve_class_names(cfg, str(tmp_path)) == shapes_names
    # DIR/class_names.txt before the metadata
    (tmp_path / "class_names.txt").write_text("x\n\ny\nz\n")
    assert resolve_class_names(cfg, str(tmp_path)) == ["x", "y", "z"]
    # an explicit file before everything; a wrong count there is an error
    names = tmp_path / "names.txt"
    names.write_text("p\nq\nr\n")
    assert resolve_class_names(cfg, str(tmp_path), str(names)) == ["p", "q", "r"]
    names.write_text("p\nq\n")
    with pytest.raises(ValueError, match="2 names"):
        resolve_class_names(cfg, str(tmp_path), str(names))


def test_coco_fallback_and_none():
    coco = _cfg(80, train=("my_unregistered_set",))
    assert resolve_class_names(coco) == [c["name"] for c in COCO_CATEGORIES]
    assert label_to_category_id(coco) == [c["id"] for c in COCO_CATEGORIES]
    other = _cfg(5, train=("my_unregistered_set",))
    assert resolve_class_names(other) is None
    assert label_to_category_id(other) == [1, 2, 3, 4, 5]


def test_category_ids_from_metadata():
    to_dataset = MetadataCatalog.get("shapes_train").thing_contiguous_id_to_dataset_id
    assert label_to_category_id(_cfg(3)) == [to_dataset[k] for k in range(3)]
    # a metadata map of another size is not used
    assert label_to_category_id(_cfg(4)) == [1, 2, 3, 4]


def test_export_cli_reports_missing_model(tmp_path, capfd):
    from tfmrcnn.cli.export import main

    assert main(["--model", str(tmp_path), "--output", str(tmp_path / "saved")]) == 1
    err = capfd.readouterr().err
    assert "config.yaml" in err and "model_final.npz" in err
