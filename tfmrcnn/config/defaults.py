"""Every config key of tfmrcnn with its default value: the tree ``get_cfg()`` copies.

Key names and default values are detectron2's (``detectron2/config/defaults.py`` overlaid with
``configs/Base-RCNN-FPN.yaml`` and ``mask_rcnn_R_50_FPN_1x.yaml``), so ``get_cfg()`` already
describes Mask R-CNN R50-FPN 1x. Keys that detectron2 does not have live in ``TRAINER`` (and
``INPUT.SIZE_DIVISIBILITY``, ``TEST.BF16_INFERENCE``, ``MODEL.WINOGRAD``,
``DATASETS.TRUST_IMAGE_SIZE``, ``DATASETS.SKIP_BAD_IMAGES``).

Usage::

    cfg = load_config("configs/mask_rcnn_R_50_FPN_1x.yaml", ["SOLVER.BASE_LR=0.01"])
    cfg.SOLVER.BASE_LR            # 0.01; the tree is frozen
    cfg.SOLVER.BASE_LRR           # ConfigKeyError: ... Did you mean 'SOLVER.BASE_LR'?
"""
import functools

from tfmrcnn.config.node import CfgNode, ConfigError

__all__ = ["get_cfg", "load_config", "check_values"]

_C = CfgNode(new_allowed=True)

_C.VERSION = 2  # detectron2 config version; kept so detectron2 yaml files merge unchanged

# ---------------------------------------------------------------------------- model
_C.MODEL = {}
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # only GeneralizedRCNN is implemented
_C.MODEL.LOAD_PROPOSALS = False  # precomputed proposals: not supported, must stay False
_C.MODEL.MASK_ON = True  # add the mask head (Mask R-CNN); False gives Faster R-CNN
_C.MODEL.KEYPOINT_ON = False  # keypoint head: not supported, must stay False
_C.MODEL.DEVICE = "cuda"  # informational (detectron2 key); tfmrcnn places ops with TF/Horovod
_C.MODEL.WEIGHTS = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # checkpoint to start from
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]  # subtracted from BGR input (Caffe ImageNet mean)
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]  # input divisor; 1 because MSRA weights absorbed the std
# 3x3 stride-1 float32 convs by Winograd F(4x4,3x3) when TF sees no GPU (tfmrcnn key; ~3x
# faster on CPU, ~1e-6 relative rounding difference; cuDNN picks its own algorithm on GPUs)
_C.MODEL.WINOGRAD = True

_C.MODEL.BACKBONE = {}
# build_resnet_fpn_backbone (ResNet + FPN) or build_resnet_backbone (the ResNet alone: C4)
_C.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
_C.MODEL.BACKBONE.FREEZE_AT = 2  # freeze stem (1) .. res{N} (N); 0 trains everything

_C.MODEL.RESNETS = {}
_C.MODEL.RESNETS.DEPTH = 50  # 18/34 (basic blocks), 50/101/152 (bottlenecks)
# stages fed to the FPN, or the backbone's outputs without FPN (C4: ["res4"]); stages after
# the last one listed are not built
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.RESNETS.NUM_GROUPS = 1  # >1 makes ResNeXt
_C.MODEL.RESNETS.NORM = "FrozenBN"  # FrozenBN, BN, SyncBN, GN or "" (none)
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # bottleneck width of res2 per group
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True  # stride in the first 1x1 conv (MSRA weights) not the 3x3
_C.MODEL.RESNETS.RES5_DILATION = 1  # dilation of res5 (1 or 2)
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256  # res2 output width; must be 64 for R18/R34 in detectron2
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64  # stem conv output width

_C.MODEL.FPN = {}
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # backbone outputs used by FPN
_C.MODEL.FPN.OUT_CHANNELS = 256  # width of every P level
_C.MODEL.FPN.NORM = ""  # norm after lateral/output convs: "" or GN
_C.MODEL.FPN.FUSE_TYPE = "sum"  # top-down fusion: "sum" or "avg"

_C.MODEL.PROPOSAL_GENERATOR = {}
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # only RPN is implemented
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0  # proposals with a side <= this are dropped

_C.MODEL.ANCHOR_GENERATOR = {}
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"  # only the default generator exists
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]  # sqrt(area) per RPN level
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]  # h/w ratios, one list for all levels
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0  # anchor centre offset in strides from the pixel corner

_C.MODEL.RPN = {}
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"  # only the standard head exists
_C.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]  # FPN levels the RPN runs on
_C.MODEL.RPN.BOUNDARY_THRESH = -1  # drop anchors beyond the image by this many px; -1 keeps all
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]  # anchor matching thresholds [bg, fg]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]  # labels below / between / above the thresholds
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256  # anchors sampled per image for the RPN losses
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5  # at most this fraction of sampled anchors are foreground
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"  # only smooth_l1 (L1 when SMOOTH_L1_BETA = 0)
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0  # weight of the RPN box loss
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # (wx, wy, ww, wh) of the anchor deltas
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0  # smooth-L1 transition point; 0 = plain L1
_C.MODEL.RPN.LOSS_WEIGHT = 1.0  # weight of both RPN losses
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000  # proposals kept per level before NMS (training)
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000  # proposals kept per level before NMS (test)
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000  # proposals kept per image after NMS (training)
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000  # proposals kept per image after NMS (test)
_C.MODEL.RPN.NMS_THRESH = 0.7  # IoU threshold of the per-level proposal NMS
_C.MODEL.RPN.CONV_DIMS = [-1]  # RPN head conv widths; -1 = input width (only [-1] supported)

_C.MODEL.ROI_HEADS = {}
# StandardROIHeads, CascadeROIHeads or Res5ROIHeads (C4: res5 on 14x14 ROIs of res4, shared by
# the box predictor and the mask head; pooler keys of ROI_BOX_HEAD, ROI_MASK_HEAD's unused)
_C.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80  # foreground classes (background label = NUM_CLASSES)
_C.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]  # FPN levels pooled by the heads
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]  # proposal is foreground if IoU >= this
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]  # labels below / above the threshold
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # proposals sampled per image for the head losses
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25  # at most this fraction of them are foreground
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05  # detections scoring <= this are dropped at test
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5  # IoU threshold of the per-class NMS at test
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True  # add the gt boxes to the proposals in training

_C.MODEL.ROI_BOX_HEAD = {}
_C.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"  # only the conv+fc head exists
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"  # only smooth_l1 (L1 when beta = 0)
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0  # weight of the box regression loss
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # (wx, wy, ww, wh) of ROI deltas
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0  # smooth-L1 transition point; 0 = plain L1
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7  # ROIAlign output side
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0  # samples per bin per axis; 0 = adaptive
# ROIAlignV2: aligned (half-pixel) ROIAlign; ROIAlign: Detectron1's unaligned one
# (modeling/poolers.aligned_for_pooler_type)
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 2  # fully connected layers
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024  # width of the fc layers
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0  # 3x3 convs before the fcs
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256  # width of those convs
_C.MODEL.ROI_BOX_HEAD.NORM = ""  # norm of those convs: "", GN, SyncBN
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False  # one box regression for all classes
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False  # not supported, must stay False

# Cascade R-CNN (ROI_HEADS.NAME CascadeROIHeads): one stage per entry of both lists, each with
# its own box head and predictor; stage s takes IOUS[s] as foreground threshold (IOUS[0] must
# equal ROI_HEADS.IOU_THRESHOLDS[0]) and BBOX_REG_WEIGHTS[s] for its deltas (detectron2's keys)
_C.MODEL.ROI_BOX_CASCADE_HEAD = {}
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                  (30.0, 30.0, 15.0, 15.0))
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

_C.MODEL.ROI_MASK_HEAD = {}
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"  # only the conv+deconv head exists
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4  # 3x3 convs before the deconv
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256  # width of those convs (and the deconv)
_C.MODEL.ROI_MASK_HEAD.NORM = ""  # norm of those convs: "", GN, SyncBN
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14  # ROIAlign output side (mask output is twice it)
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0  # samples per bin per axis; 0 = adaptive
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"  # as ROI_BOX_HEAD.POOLER_TYPE
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False  # one mask for all classes

# ---------------------------------------------------------------------------- input
_C.INPUT = {}
_C.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)  # short-side sizes in training
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice" of MIN_SIZE_TRAIN or "range" [lo, hi]
_C.INPUT.MAX_SIZE_TRAIN = 1333  # long-side cap in training
_C.INPUT.MIN_SIZE_TEST = 800  # short side at test; 0 disables resizing
_C.INPUT.MAX_SIZE_TEST = 1333  # long-side cap at test
_C.INPUT.FORMAT = "BGR"  # channel order the model expects
_C.INPUT.MASK_FORMAT = "polygon"  # gt mask representation: "polygon" or "bitmask"
_C.INPUT.RANDOM_FLIP = "horizontal"  # training flip: "horizontal", "vertical" or "none"
_C.INPUT.SIZE_DIVISIBILITY = 32  # pad images bottom/right to a multiple of this (tfmrcnn key)

# ---------------------------------------------------------------------------- data
_C.DATASETS = {}
_C.DATASETS.TRAIN = ("coco_2017_train",)  # registered dataset names merged for training
_C.DATASETS.TEST = ("coco_2017_val",)  # registered dataset names evaluated
# An image whose file size differs from its json height/width: an error (as detectron2), or,
# True, the file's size is used with the json's coordinates (tfmrcnn.data.validate)
_C.DATASETS.TRUST_IMAGE_SIZE = False
# Training images with problems (unreadable, size mismatch, bad RLE): stop with the list
# (False), or train without them and count them (True); evaluation never skips
_C.DATASETS.SKIP_BAD_IMAGES = False

_C.DATALOADER = {}
_C.DATALOADER.NUM_WORKERS = 4  # parallel decode/augment calls per process (tf.data)
_C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch landscape and portrait images separately
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"  # only TrainingSampler is implemented
_C.DATALOADER.REPEAT_THRESHOLD = 0.0  # RepeatFactorTrainingSampler threshold (unused)
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # drop training images without (non-crowd) objects

# ---------------------------------------------------------------------------- solver
_C.SOLVER = {}
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # only WarmupMultiStepLR is implemented
_C.SOLVER.IMS_PER_BATCH = 16  # images per iteration summed over all processes
_C.SOLVER.BASE_LR = 0.02  # learning rate after warmup, for IMS_PER_BATCH images
_C.SOLVER.REFERENCE_WORLD_SIZE = 0  # if > 0, rescale batch/LR/schedule to the real world size
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.NESTEROV = False  # Nesterov momentum
_C.SOLVER.WEIGHT_DECAY = 0.0001  # L2 weight decay of conv/fc weights
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of norm scales and shifts
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0001  # weight decay of biases (detectron2: = WEIGHT_DECAY)
_C.SOLVER.BIAS_LR_FACTOR = 1.0  # LR multiplier of biases
_C.SOLVER.GAMMA = 0.1  # LR multiplier at each step
_C.SOLVER.STEPS = (60000, 80000)  # iterations at which the LR is multiplied by GAMMA
_C.SOLVER.MAX_ITER = 90000  # training iterations
_C.SOLVER.WARMUP_FACTOR = 0.001  # LR factor at iteration 0 of the warmup
_C.SOLVER.WARMUP_ITERS = 1000  # warmup length in iterations
_C.SOLVER.WARMUP_METHOD = "linear"  # "linear" or "constant" warmup
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # save a checkpoint every this many iterations

_C.SOLVER.CLIP_GRADIENTS = {}
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False  # clip gradients before the update
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # "value" (elementwise) or "norm" (per parameter)
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0  # clip threshold
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0  # p of the L-p norm for CLIP_TYPE "norm" (.inf allowed)

_C.SOLVER.AMP = {}
_C.SOLVER.AMP.ENABLED = False  # mixed precision training (dtype: TRAINER.AMP_DTYPE)

# ---------------------------------------------------------------------------- test
_C.TEST = {}
_C.TEST.EVAL_PERIOD = 0  # evaluate every this many iterations during training; 0 = only at end
_C.TEST.DETECTIONS_PER_IMAGE = 100  # detections kept per image
_C.TEST.EXPECTED_RESULTS = []  # [[task, metric, value, tolerance], ...] checked after eval
_C.TEST.BF16_INFERENCE = False  # run inference in bfloat16 (tfmrcnn key)

# ---------------------------------------------------------------------------- misc
_C.OUTPUT_DIR = "./output"  # checkpoints, logs and results go here
_C.SEED = -1  # random seed; negative = drawn from the OS

# ---------------------------------------------------------------------------- tfmrcnn only
_C.TRAINER = {}
_C.TRAINER.LOG_PERIOD = 20  # log losses and timings every this many iterations
_C.TRAINER.NUM_THREADS = 0  # intra-op threads per process; 0 = TensorFlow's default
# CPU-only hosts with several processes: run each local rank on its own share of the cores
# (tfmrcnn.distributed.pin_devices). Off: on 2 cores it bought nothing for GN/BN and cost
# SyncBN, whose Horovod thread then shares a core with the compute (NOTES.md)
_C.TRAINER.PIN_CPU_CORES = False
_C.TRAINER.AMP_DTYPE = "float16"  # mixed-precision compute dtype: "float16" or "bfloat16"
_C.TRAINER.FP16_ALLREDUCE = False  # compress gradients to float16 for the Horovod allreduce
_C.TRAINER.MAX_GT_INSTANCES = 100  # gt instances per image are padded/truncated to this
_C.TRAINER.TENSORBOARD = True  # write TensorBoard summaries under OUTPUT_DIR
# TensorBoard pictures of training images (ground truth | predictions) every this many
# iterations; 0 = never
_C.TRAINER.VIS_PERIOD = 1000


# sealed (no new keys) and frozen: every tree is a copy of this one
_DEFAULTS = _C.set_new_allowed(False).freeze()


def get_cfg():
    """A fresh, mutable copy of the default tree (Mask R-CNN R50-FPN 1x)."""
    return _DEFAULTS.clone().defrost()


# Lowest allowed value of keys where a value below makes no sense (a negative MAX_ITER used to
# print "from iteration 5 to -5" and exit 0, a negative LR trained uphill); checked by
# load_config, so every command refuses such a config before it starts.
LOWER_BOUNDS = (("SOLVER.MAX_ITER", 0), ("SOLVER.BASE_LR", 0.0), ("SOLVER.IMS_PER_BATCH", 1),
                ("SOLVER.WARMUP_ITERS", 0), ("SOLVER.CHECKPOINT_PERIOD", 0),
                ("SOLVER.WEIGHT_DECAY", 0.0))


def check_values(cfg):
    """Raise ConfigError naming the first key of LOWER_BOUNDS whose value is below its bound."""
    for key, lowest in LOWER_BOUNDS:
        value = functools.reduce(getattr, key.split("."), cfg)
        if not value >= lowest:  # also refuses NaN
            raise ConfigError(f"{key}={value} is not allowed: it must be >= {lowest}")


def load_config(path=None, overrides=()):
    """Default tree, merged with the yaml file (if any) then the overrides, its values checked
    (check_values); returned frozen."""
    cfg = get_cfg()
    if path:
        cfg.merge_from_file(path)
    if overrides:
        cfg.merge_from_list(list(overrides))
    check_values(cfg)
    return cfg.freeze()
