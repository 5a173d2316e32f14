"""Checkpoint test fakes: a tiny architecture, fake detectron2 checkpoints and yaml files."""
import pickle

import numpy as np

from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes
from tfmrcnn.config import get_cfg


def tiny_cfg(**changes):
    """R50-FPN Mask R-CNN with every name of the real one but tiny widths (fast to convert)."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.merge_from_list([f"{k}={v}" for k, v in changes.items()])
    return cfg


def fake_d2_state(cfg, seed=0, backbone_only=False):
    """{name: random float32 array} with detectron2's names and PyTorch shapes for cfg."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32)
            for k, s in expected_d2_state_dict_shapes(cfg, backbone_only).items()}


def write_d2_pkl(path, state, author="Detectron2 Model Zoo", protocol=2):
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": author}, f, protocol=protocol)
    return str(path)


# detectron2's configs/Base-RCNN-FPN.yaml + mask_rcnn_R_50_FPN_1x.yaml, as detectron2 spells them
D2_BASE_FPN_YAML = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
  ROI_MASK_HEAD:
    NAME: "MaskRCNNConvUpsampleHead"
    NUM_CONV: 4
    POOLER_RESOLUTION: 14
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
  STEPS: (60000, 80000)
  MAX_ITER: 90000
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
VERSION: 2
"""

# a child config with the tiny widths of tiny_cfg()
D2_TINY_YAML = """\
_BASE_: "Base-RCNN-FPN.yaml"
MODEL:
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
  MASK_ON: True
  RESNETS:
    DEPTH: 50
    STEM_OUT_CHANNELS: 8
    RES2_OUT_CHANNELS: 16
    WIDTH_PER_GROUP: 4
  FPN:
    OUT_CHANNELS: 8
  ROI_HEADS:
    NUM_CLASSES: 3
    SCORE_THRESH_TEST: 0.3
  ROI_BOX_HEAD:
    FC_DIM: 16
  ROI_MASK_HEAD:
    CONV_DIM: 8
"""


def write_d2_yaml(directory, child_text=D2_TINY_YAML, name="tiny.yaml"):
    """Write Base-RCNN-FPN.yaml and a child config next to it; returns the child's path."""
    (directory / "Base-RCNN-FPN.yaml").write_text(D2_BASE_FPN_YAML)
    (directory / name).write_text(child_text)
    return str(directory / name)
