"""The converter's detectron2 name map against detectron2 itself, for every Mask R-CNN / Faster
R-CNN yaml of detectron2 0.5's model zoo (tests/fixtures/d2_state_dict_shapes.json.gz, made by
tests/fixtures/make_d2_state_dict_shapes.py from detectron2's build_model and cfg.dump()):
COCO-InstanceSegmentation, COCO-Detection/faster_rcnn_*, Misc (cascade, class-agnostic, GN,
SyncBN, from-scratch), LVIS v0.5 and v1, Cityscapes and Detectron1-Comparisons; FPN, C4 and
DC5 layouts, R50 / R101 / X101-32x8d.

- the config detectron2 dumps goes through the converter's config mapping, and
  `expected_d2_state_dict_shapes` lists exactly the names and shapes of detectron2's state dict;
  the keys that select the architecture arrive in our tree;
- the architecture read from detectron2's shapes alone (no config) expects the same tensors;
- the zoo's yamls of models tfmrcnn does not run (deformable convs, precomputed proposals, an RPN
  alone, RetinaNet, panoptic FPN) are refused with an error naming the key that rules each out.
"""
import gzip
import json
import pathlib

import pytest
import yaml

from tfmrcnn.config import load_config
from tfmrcnn.converter.d2_config import D2ConfigError, cfg_from_d2_config
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "d2_state_dict_shapes.json.gz"
with gzip.open(FIXTURE, "rt") as _f:
    _FIXTURE = json.load(_f)
# {zoo config: {"dump": detectron2's cfg.dump(), "shapes": {state-dict name: shape}}}
ZOO = {name: {"dump": entry["dump"], "shapes": _FIXTURE["shapes"][entry["shapes"]]}
       for name, entry in _FIXTURE["models"].items()}
REFUSED = _FIXTURE["refused"]  # {zoo config: cfg.dump()} of models tfmrcnn does not run


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_config(request, tmp_path_factory):
    """(name, tfmrcnn cfg mapped from detectron2's dump, detectron2's {name: shape}); mapped once
    per config for the tests below (none changes the cfg)."""
    entry = ZOO[request.param]
    path = tmp_path_factory.mktemp("zoo") / "d2_config.yaml"
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


def _layout(name):
    """The zoo's feature layout, from its file-name convention."""
    return "C4" if "_C4_" in name else "DC5" if "_DC5_" in name else "FPN"


def test_mapping_carries_the_architecture_keys(zoo_config):
    """The keys that change the architecture or the test-time input arrive in our tree, as the
    zoo's file names and detectron2's docs (MODEL_ZOO.md) describe each model."""
    name, cfg, _ = zoo_config
    m = cfg.MODEL
    assert m.RESNETS.DEPTH == (101 if ("R_101" in name or "X_101" in name) else 50)
    assert m.MASK_ON == ("faster_rcnn" not in name)
    if "X_101_32x8d" in name:
        r = m.RESNETS
        assert (r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.STRIDE_IN_1X1) == (32, 8, False)
        assert list(m.PIXEL_STD) == pytest.approx([57.375, 57.12, 58.395])
    layout = _layout(name)
    # detectron2 pads the batch to its backbone's size_divisibility: 32 for an FPN, none else
    assert cfg.INPUT.SIZE_DIVISIBILITY == (32 if layout == "FPN" else 1)
    assert m.BACKBONE.NAME == ("build_resnet_fpn_backbone" if layout == "FPN"
                               else "build_resnet_backbone")
    assert m.RESNETS.RES5_DILATION == (2 if layout == "DC5" else 1)
    if layout == "FPN":
        assert list(m.ROI_HEADS.IN_FEATURES) == ["p2", "p3", "p4", "p5"]
    else:  # C4 pools res4 and runs res5 per region; DC5 has its heads on a dilated res5
        feature = "res4" if layout == "C4" else "res5"
        assert list(m.RPN.IN_FEATURES) == list(m.ROI_HEADS.IN_FEATURES) == [feature]
        assert m.RPN.PRE_NMS_TOPK_TEST == 6000
    assert m.ROI_HEADS.NAME == ("CascadeROIHeads" if "cascade" in name else
                                "Res5ROIHeads" if layout == "C4" else "StandardROIHeads")
    # cascade stages regress one box for all classes (detectron2 requires it)
    assert m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG == ("cascade" in name or "cls_agnostic" in name)
    assert m.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK == ("cls_agnostic" in name)
    # Detectron1-Comparisons pool with Detectron1's ROIAlign (no half-pixel shift), 2 samples
    d1 = name.startswith("Detectron1-Comparisons")
    heads = (m.ROI_BOX_HEAD, m.ROI_MASK_HEAD) if m.MASK_ON else (m.ROI_BOX_HEAD,)
    for head in heads:
        assert head.POOLER_TYPE == ("ROIAlign" if d1 else "ROIAlignV2")
        assert head.POOLER_SAMPLING_RATIO == (2 if d1 else 0)
    if "_gn" in name:
        assert (m.RESNETS.NORM, m.FPN.NORM, m.ROI_BOX_HEAD.NORM, m.ROI_MASK_HEAD.NORM) == \
            ("GN",) * 4
        assert (m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    if "syncbn" in name:
        assert (m.FPN.NORM, m.ROI_BOX_HEAD.NORM) == ("SyncBN", "SyncBN")
    dataset = name.split("/")[0].split("-")[0]
    assert m.ROI_HEADS.NUM_CLASSES == {"LVISv0.5": 1230, "LVISv1": 1203, "Cityscapes": 8}.get(
        dataset, 80)
    if name.startswith("LVIS"):
        assert m.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(1e-4)
        assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    if name.startswith("Cityscapes"):
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048)
    assert "MIN_SIZE_TEST" in ZOO[name]["dump"]  # the dump is complete: every key was mapped


# what rules out each refused zoo model, by a part of its file name: the keys its error names
REFUSAL = {"dconv": "MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]",
           "panoptic_fpn": "MODEL.META_ARCHITECTURE = 'PanopticFPN'",
           "fast_rcnn_": "MODEL.LOAD_PROPOSALS = True",
           "rpn_": "MODEL.META_ARCHITECTURE = 'ProposalNetwork'",
           "retinanet_": "MODEL.META_ARCHITECTURE = 'RetinaNet'"}


@pytest.mark.parametrize("zoo_name", sorted(REFUSED))
def test_zoo_models_we_do_not_run_are_refused_by_key(zoo_name, tmp_path):
    path = tmp_path / "d2_config.yaml"
    path.write_text(REFUSED[zoo_name])
    expected = [why for part, why in REFUSAL.items() if part in zoo_name.split("/")[-1]]
    assert expected, f"{zoo_name}: no expected refusal listed"
    with pytest.raises(D2ConfigError) as err:
        cfg_from_d2_config(str(path))
    for why in expected:
        assert why in str(err.value)


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
