"""The converter's detectron2 name map against detectron2 itself: for model-zoo configs of issue
21 (ResNeXt, DC5, GN / SyncBN in backbone, FPN and heads incl. the 4conv1fc box head,
from-scratch models, LVIS and Cityscapes class counts), the config detectron2 dumps goes through
the converter's config mapping and `expected_d2_state_dict_shapes` must list exactly the names
and shapes of detectron2's own state dict (tests/fixtures/d2_state_dict_shapes.json.gz, made by
tests/fixtures/make_d2_state_dict_shapes.py from detectron2 0.5's build_model)."""
import gzip
import json
import pathlib

import pytest
import yaml

from tfmrcnn.config import load_config
from tfmrcnn.converter.d2_config import cfg_from_d2_config
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "d2_state_dict_shapes.json.gz"
with gzip.open(FIXTURE, "rt") as _f:
    ZOO = json.load(_f)


@pytest.fixture(params=sorted(ZOO))
def zoo_config(request, tmp_path):
    """(name, tfmrcnn cfg mapped from detectron2's dump, detectron2's {name: shape})."""
    entry = ZOO[request.param]
    path = tmp_path / "d2_config.yaml"
    path.write_text(entry["dump"])
    cfg, _ = cfg_from_d2_config(str(path))
    return request.param, cfg, {k: tuple(v) for k, v in entry["shapes"].items()}


def test_names_and_shapes_are_detectron2s(zoo_config):
    name, cfg, d2_shapes = zoo_config
    ours = expected_d2_state_dict_shapes(cfg)
    assert sorted(set(d2_shapes) - set(ours)) == [], f"{name}: names we do not list"
    assert sorted(set(ours) - set(d2_shapes)) == [], f"{name}: names detectron2 does not have"
    wrong = {k: (ours[k], d2_shapes[k]) for k in ours if ours[k] != d2_shapes[k]}
    assert wrong == {}, f"{name}: shapes (ours, detectron2's) differ"


def test_mapping_carries_the_architecture_keys(zoo_config):
    """The keys that change the architecture or the test-time input arrive in our tree."""
    name, cfg, _ = zoo_config
    entry = ZOO[name]["dump"]
    if "X_101_32x8d" in name:
        r = cfg.MODEL.RESNETS
        assert (r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.STRIDE_IN_1X1) == (101, 32, 8, False)
        assert list(cfg.MODEL.PIXEL_STD) == pytest.approx([57.375, 57.12, 58.395])
    # detectron2 pads the batch to its backbone's size_divisibility: 32 for an FPN, none else
    assert cfg.INPUT.SIZE_DIVISIBILITY == (1 if "DC5" in name else 32)
    if "DC5" in name:
        assert cfg.MODEL.RESNETS.RES5_DILATION == 2
        assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
        assert list(cfg.MODEL.RPN.IN_FEATURES) == ["res5"]
        assert list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == ["res5"]
        assert cfg.MODEL.RPN.PRE_NMS_TOPK_TEST == 6000
    if "_gn" in name:
        assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM,
                cfg.MODEL.ROI_MASK_HEAD.NORM) == ("GN",) * 4
        assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    if "syncbn" in name:
        assert (cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM) == ("SyncBN", "SyncBN")
    if name.startswith("LVIS"):
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1230
        assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(1e-4)
        assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    if name.startswith("Cityscapes"):
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048)
    assert "MIN_SIZE_TEST" in entry  # the dump is complete: every key went through the mapping


# our configs/ next to the detectron2 model-zoo config they reproduce
OURS = {"COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml":
        "mask_rcnn_X_101_32x8d_FPN_3x.yaml",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml": "mask_rcnn_R_50_DC5_3x.yaml",
        "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml": "mask_rcnn_R_50_FPN_3x_gn.yaml",
        "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml": "mask_rcnn_R_50_FPN_3x_syncbn.yaml"}


@pytest.mark.parametrize("zoo_name", sorted(OURS))
def test_our_config_is_the_zoo_model(zoo_name, tmp_path):
    """configs/<ours> and detectron2's yaml through the converter's mapping agree on every key
    the mapping sets (architecture, test-time input and thresholds), and ours trains from the
    same ImageNet file for 3x."""
    path = tmp_path / "d2_config.yaml"
    path.write_text(ZOO[zoo_name]["dump"])
    mapped, report = cfg_from_d2_config(str(path))
    ours = load_config(str(ROOT / "configs" / OURS[zoo_name]))

    def get(cfg, key):
        for part in key.split("."):
            cfg = getattr(cfg, part)
        return json.loads(json.dumps(cfg))  # tuples and lists compare equal

    differ = {k: (get(ours, k), get(mapped, k)) for k in report.mapped
              if get(ours, k) != get(mapped, k)}
    assert differ == {}
    # detectron2's catalog://NAME is detectron2://NAME.pkl (its ModelCatalog)
    weights = yaml.safe_load(ZOO[zoo_name]["dump"])["MODEL"]["WEIGHTS"]
    if weights.startswith("catalog://"):
        weights = weights.replace("catalog://", "detectron2://") + ".pkl"
    assert ours.MODEL.WEIGHTS == weights
    assert (ours.SOLVER.STEPS, ours.SOLVER.MAX_ITER) == ((210000, 250000), 270000)


def test_architecture_inferred_from_detectron2s_weights(zoo_config):
    """Without --d2-config the converter reads the architecture from the tensor shapes: the
    names and shapes it then expects are detectron2's, and what it could not see is the zoo
    config's (DC5's dilation 2 assumed, ResNeXt's groups read)."""
    from tfmrcnn.converter.infer_config import infer_cfg_from_shapes
    name, mapped, d2_shapes = zoo_config
    cfg, notes = infer_cfg_from_shapes(d2_shapes)
    assert expected_d2_state_dict_shapes(cfg) == expected_d2_state_dict_shapes(mapped)
    for key in ("BACKBONE.NAME", "RESNETS.RES5_DILATION", "RESNETS.NUM_GROUPS",
                "RESNETS.WIDTH_PER_GROUP", "RPN.IN_FEATURES", "ROI_HEADS.IN_FEATURES",
                "ANCHOR_GENERATOR.SIZES", "RPN.PRE_NMS_TOPK_TEST"):
        a, b = cfg.MODEL, mapped.MODEL
        for part in key.split("."):
            a, b = getattr(a, part), getattr(b, part)
        assert json.loads(json.dumps(a)) == json.loads(json.dumps(b)), key
    assert cfg.INPUT.SIZE_DIVISIBILITY == mapped.INPUT.SIZE_DIVISIBILITY
    if "DC5" in name:
        assert any("RES5_DILATION = 2" in n for n in notes)
