"""detectron2 yaml (with _BASE_) -> our config tree; unsupported keys/values are named errors."""
import pytest
import yaml

from d2_fakes import D2_BASE_FPN_YAML, write_d2_yaml
from tfmrcnn.cli.convert import main as convert_main
from tfmrcnn.converter.d2_config import D2ConfigError, cfg_from_d2_config, cfg_from_d2_dict


def test_base_chain_maps_keys(tmp_path):
    cfg, report = cfg_from_d2_config(write_d2_yaml(tmp_path))
    m = cfg.MODEL
    assert m.RESNETS.STEM_OUT_CHANNELS == 8 and m.RESNETS.WIDTH_PER_GROUP == 4
    assert m.FPN.OUT_CHANNELS == 8 and m.ROI_HEADS.NUM_CLASSES == 3 and m.MASK_ON is True
    assert m.ROI_HEADS.SCORE_THRESH_TEST == 0.3
    assert m.ROI_BOX_HEAD.NUM_FC == 2 and m.ROI_BOX_HEAD.POOLER_RESOLUTION == 7  # from _BASE_
    assert m.RPN.PRE_NMS_TOPK_TEST == 1000
    assert "SOLVER.BASE_LR" in report.ignored and "MODEL.WEIGHTS" in report.ignored
    assert "MODEL.ROI_HEADS.NAME" in report.checked


def test_absent_keys_take_detectron2_defaults_not_ours():
    # detectron2's default PRE_NMS_TOPK_TEST is 6000 and MASK_ON False (tfmrcnn: 1000, True)
    base = yaml.safe_load(D2_BASE_FPN_YAML)
    del base["MODEL"]["RPN"]["PRE_NMS_TOPK_TEST"]
    cfg, report = cfg_from_d2_dict(base)
    assert cfg.MODEL.RPN.PRE_NMS_TOPK_TEST == 6000 and cfg.MODEL.MASK_ON is False
    assert "MODEL.RPN.PRE_NMS_TOPK_TEST" in report.defaulted


def test_full_dump_with_all_default_groups_is_accepted():
    base = yaml.safe_load(D2_BASE_FPN_YAML)
    base["MODEL"]["RETINANET"] = {"NUM_CLASSES": 80, "PRIOR_PROB": 0.01}
    base["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False, False, False, False]
    base["MODEL"]["RESNETS"]["DEFORM_MODULATED"] = False
    base["MODEL"]["RESNETS"]["NORM"] = "naiveSyncBN"
    base["TEST"] = {"AUG": {"ENABLED": False, "FLIP": True}, "DETECTIONS_PER_IMAGE": 50}
    base["CUDNN_BENCHMARK"] = False
    base["MODEL"]["ROI_BOX_HEAD"].update(USE_FED_LOSS=True, USE_SIGMOID_CE=False)
    cfg, _ = cfg_from_d2_dict(base)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 50
    assert cfg.MODEL.RESNETS.NORM == "SyncBN"  # same inference as SyncBN


@pytest.mark.parametrize("path, value, key", [
    (("MODEL", "ROI_HEADS", "NAME"), "RROIHeads", "MODEL.ROI_HEADS.NAME"),
    (("MODEL", "META_ARCHITECTURE"), "RetinaNet", "MODEL.META_ARCHITECTURE"),
    (("MODEL", "RPN", "HEAD_NAME"), "MyHead", "MODEL.RPN.HEAD_NAME"),
    (("MODEL", "PROPOSAL_GENERATOR", "NAME"), "RRPN", "MODEL.PROPOSAL_GENERATOR.NAME"),
    (("MODEL", "BACKBONE", "NAME"), "build_resnet_backbone", "MODEL.BACKBONE.NAME"),
    (("MODEL", "RESNETS", "DEFORM_ON_PER_STAGE"), [False, True, True, True],
     "MODEL.RESNETS.DEFORM_ON_PER_STAGE"),
    (("MODEL", "KEYPOINT_ON"), True, "MODEL.KEYPOINT_ON"),
    (("MODEL", "RESNETS", "NORM"), "LN", "MODEL.RESNETS.NORM"),
    (("MODEL", "FOO", "BAR"), 1, "MODEL.FOO.BAR"),
    (("MODEL", "ROI_BOX_HEAD", "POOLER_TYPE"), "ROIPool", "MODEL.ROI_BOX_HEAD.POOLER_TYPE"),
    (("MODEL", "ROI_BOX_HEAD", "USE_SIGMOID_CE"), True, "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE"),
    (("TEST", "AUG", "ENABLED"), True, "TEST.AUG.ENABLED"),
])
def test_unsupported_keys_name_the_key(tmp_path, path, value, key):
    data = yaml.safe_load(D2_BASE_FPN_YAML)
    node = data
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = value
    (tmp_path / "Base-RCNN-FPN.yaml").write_text(yaml.safe_dump(data))
    child = tmp_path / "c.yaml"
    child.write_text('_BASE_: "Base-RCNN-FPN.yaml"\n')
    with pytest.raises(D2ConfigError, match=key.replace(".", r"\.")):
        cfg_from_d2_config(str(child))


def test_mask_head_name_only_checked_with_masks():
    data = yaml.safe_load(D2_BASE_FPN_YAML)
    data["MODEL"]["ROI_MASK_HEAD"]["NAME"] = "PointRendMaskHead"
    cfg, _ = cfg_from_d2_dict(data)  # MASK_ON False: the mask head is not built
    assert cfg.MODEL.MASK_ON is False
    data["MODEL"]["MASK_ON"] = True
    with pytest.raises(D2ConfigError, match="ROI_MASK_HEAD.NAME"):
        cfg_from_d2_dict(data)


def test_lazyconfig_python_file_is_refused_by_name(tmp_path, capsys):
    """detectron2's LazyConfig models (the model zoo's *.py) are Python programs, not yaml."""
    lazy = tmp_path / "mask_rcnn_R_50_FPN_1x.py"
    lazy.write_text("from ..common.models.mask_rcnn_fpn import model\n"
                    "model.backbone.bottom_up.freeze_at = 2\n")
    with pytest.raises(D2ConfigError, match="LazyConfig") as err:
        cfg_from_d2_config(str(lazy))
    assert str(lazy) in str(err.value) and "not supported" in str(err.value)
    # tfmrcnn-convert says so before it fetches the model (the missing file is never opened)
    assert convert_main([str(tmp_path / "missing.pkl"), "--d2-config", str(lazy)]) == 1
    message = capsys.readouterr().err
    assert "LazyConfig" in message and str(lazy) in message and "missing.pkl" not in message


def test_all_refused_keys_are_named_at_once():
    data = yaml.safe_load(D2_BASE_FPN_YAML)
    data["MODEL"]["META_ARCHITECTURE"] = "PanopticFPN"
    data["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False, True, True, True]
    with pytest.raises(D2ConfigError) as err:
        cfg_from_d2_dict(data)
    assert "MODEL.META_ARCHITECTURE = 'PanopticFPN'" in str(err.value)
    assert "MODEL.RESNETS.DEFORM_ON_PER_STAGE" in str(err.value)


def test_detectron1_roialign_pooler_is_copied():
    """ROIAlign (Detectron1's, aligned=False) is built by our poolers: mapped, not refused."""
    data = yaml.safe_load(D2_BASE_FPN_YAML)
    data["MODEL"]["ROI_BOX_HEAD"]["POOLER_TYPE"] = "ROIAlign"
    cfg, _ = cfg_from_d2_dict(data)
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlign"
    assert cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE == "ROIAlignV2"  # detectron2's default
