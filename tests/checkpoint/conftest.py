"""Shared helpers of the checkpoint tests: a tiny architecture and fake detectron2 checkpoints."""
import pickle

import numpy as np
import pytest

from tfmrcnn.checkpoint.d2_names import expected_d2_state_dict_shapes
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


@pytest.fixture
def tiny():
    return tiny_cfg()
