"""tfmrcnn.config.defaults: detectron2's defaults and the shipped yaml configs."""

import os
import pathlib

import pytest

from tfmrcnn.config import get_cfg, load_config

CONFIG_DIR = str(pathlib.Path(__file__).resolve().parents[2] / "configs")

# Values of detectron2's defaults.py + Base-RCNN-FPN.yaml + mask_rcnn_R_50_FPN_1x.yaml, written
# out by hand from detectron2 (not read from tfmrcnn).
DETECTRON2_R50_FPN_1X = {
    "MODEL.MASK_ON": True,
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "",
    "MODEL.FPN.FUSE_TYPE": "sum",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.BOUNDARY_THRESH": -1,
    "MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7],
    "MODEL.RPN.IOU_LABELS": [0, -1, 1],
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.POSITIVE_FRACTION": 0.5,
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": "smooth_l1",
    "MODEL.RPN.BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
    "MODEL.RPN.SMOOTH_L1_BETA": 0.0,
    "MODEL.RPN.LOSS_WEIGHT": 1.0,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.5],
    "MODEL.ROI_HEADS.IOU_LABELS": [0, 1],
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": True,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.CONV_DIM": 256,
    "MODEL.ROI_BOX_HEAD.NORM": "",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.0,
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "INPUT.MIN_SIZE_TRAIN": (640, 672, 704, 736, 768, 800),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.FORMAT": "BGR",
    "INPUT.MASK_FORMAT": "polygon",
    "INPUT.RANDOM_FLIP": "horizontal",
    "INPUT.SIZE_DIVISIBILITY": 32,
    "DATASETS.TRAIN": ("coco_2017_train",),
    "DATASETS.TEST": ("coco_2017_val",),
    "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.ASPECT_RATIO_GROUPING": True,
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.REFERENCE_WORLD_SIZE": 0,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.NESTEROV": False,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.WEIGHT_DECAY_BIAS": 0.0001,
    "SOLVER.GAMMA": 0.1,
    "SOLVER.STEPS": (60000, 80000),
    "SOLVER.MAX_ITER": 90000,
    "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.CHECKPOINT_PERIOD": 5000,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "value",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
    "SOLVER.AMP.ENABLED": False,
    "TEST.EVAL_PERIOD": 0,
    "TEST.DETECTIONS_PER_IMAGE": 100,
    "OUTPUT_DIR": "./output",
    "SEED": -1,
}

TFMRCNN_ONLY = {
    "TRAINER.LOG_PERIOD": 20,
    "TRAINER.NUM_THREADS": 0,
    "TRAINER.AMP_DTYPE": "float16",
    "TRAINER.FP16_ALLREDUCE": False,
    "TRAINER.MAX_GT_INSTANCES": 100,
    "TRAINER.TENSORBOARD": True,
    "TRAINER.VIS_PERIOD": 1000,  # pictures in TensorBoard by default (issue 18)
    "TEST.BF16_INFERENCE": False,
}


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("key", sorted({**DETECTRON2_R50_FPN_1X, **TFMRCNN_ONLY}))
def test_defaults_match_detectron2(key):
    expected = {**DETECTRON2_R50_FPN_1X, **TFMRCNN_ONLY}[key]
    value = _get(get_cfg(), key)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("name", ["Base-RCNN-FPN.yaml", "mask_rcnn_R_50_FPN_1x.yaml"])
def test_r50_configs_equal_defaults(name):
    assert load_config(os.path.join(CONFIG_DIR, name)).to_dict() == get_cfg().to_dict()


@pytest.mark.parametrize("name,depth", [("mask_rcnn_R_50_FPN_3x.yaml", 50),
                                        ("mask_rcnn_R_101_FPN_3x.yaml", 101)])
def test_3x_configs(name, depth):
    cfg = load_config(os.path.join(CONFIG_DIR, name))
    assert cfg.SOLVER.STEPS == (210000, 250000)
    assert cfg.SOLVER.MAX_ITER == 270000
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.MODEL.WEIGHTS.endswith(f"R-{depth}.pkl")
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)


def test_shapes_demo_config():
    cfg = load_config(os.path.join(CONFIG_DIR, "shapes_demo_cpu.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RESNETS.NORM == "GN"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16], [32], [64], [128], [256]]
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.DATASETS.TEST == ("shapes_val",)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (192,) and cfg.SOLVER.IMS_PER_BATCH == 4
    assert max(cfg.SOLVER.STEPS) < cfg.SOLVER.MAX_ITER


@pytest.mark.parametrize("override", ["SOLVER.MAX_ITER=-5", "SOLVER.BASE_LR=-0.01",
                                      "SOLVER.IMS_PER_BATCH=0", "SOLVER.BASE_LR=.nan"])
def test_values_out_of_range_are_refused(override):
    """Issue 20: MAX_ITER=-5 printed 'from iteration 5 to -5' and exited 0; a negative LR
    was accepted."""
    from tfmrcnn.config import ConfigError

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}=.* is not allowed: it must be >= "):
        load_config(overrides=[override])
    assert load_config(overrides=["SOLVER.MAX_ITER=0", "SOLVER.BASE_LR=0"]).SOLVER.MAX_ITER == 0
