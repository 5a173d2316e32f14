"""tfmrcnn-convert writes DIR/classes.json for a COCO model (80 classes) and none when the
classes are unknown (another class count, or a backbone)."""
import pytest

from d2_fakes import fake_d2_state, tiny_cfg, write_d2_pkl
from tfmrcnn.checkpoint.model_dir import read_classes
from tfmrcnn.converter.convert import convert_checkpoint
from tfmrcnn.data.catalog import COCO_CATEGORIES


@pytest.mark.parametrize("num_classes, backbone_only, expected", [
    (80, False, True), (3, False, False), (80, True, False)])
def test_classes_written_when_known(tmp_path, monkeypatch, num_classes, backbone_only, expected):
    monkeypatch.setenv("TFMRCNN_DATASETS", str(tmp_path / "no_coco_here"))
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": num_classes})
    pkl = write_d2_pkl(tmp_path / "m.pkl", fake_d2_state(cfg, backbone_only=backbone_only))
    convert_checkpoint(pkl, str(tmp_path / "out"), log=lambda line: None)
    classes = read_classes(str(tmp_path / "out"))
    if not expected:
        assert classes is None
        return
    assert list(classes.category_ids) == [c["id"] for c in COCO_CATEGORIES]
    assert list(classes.thing_classes) == [c["name"] for c in COCO_CATEGORIES]
    assert classes.datasets == ("coco_2017_train",)
