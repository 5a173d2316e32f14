"""Benchmark section: the whole Mask R-CNN, speed and memory on the CPU.

Every measurement group runs in its own child process (``python -m benchmarks.model --worker
GROUP``): TensorFlow's thread counts can only be set before its runtime starts, and a fresh
process gives a clean peak resident set. Threads: 2 intra-op, 1 inter-op (``--threads`` of the
worker). Random weights, random-noise images (BGR 0..255), fixed seeds.

Rows (seconds = median wall time after warm-up; cpu_s = median CPU time of the whole process,
all threads, the steadier number on a shared machine):
  infer  R50-FPN, 80 classes, one 800x1333 image (padded 800x1344):
         backbone+fpn / rpn (head + proposals) / roi_heads (box head, box NMS, mask head) /
         paste (detector_postprocess: rescale + paste 100 masks, NumPy) / end-to-end
         (`make_inference_fn` + paste). MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0: random weights
         give class probabilities near 1/81, below the default 0.05, so the default would give
         no detection; 0.0 gives the full 100 detections (and 80 x 1000 NMS candidates).
         With --bf16 (always run by the driver): TEST.BF16_INFERENCE for infer, the AMP
         bfloat16 step for train --case r50. With --direct (also run by the driver): fp32
         with MODEL.WINOGRAD off, i.e. every conv through tf.nn.conv2d (oneDNN's direct kernels).
         With --arch x101 (also run by the driver, fp32): configs/mask_rcnn_X_101_32x8d_FPN_3x
         (ResNeXt-101 32x8d: grouped 3x3 convs, one dense conv per group on CPU). Every --arch
         (ARCHS: R50/R101/X101-FPN, cascade, C4, DC5, Faster R-CNN) is run by section
         `architectures` (benchmarks/architectures.py).
  train  one training step (forward, backward, SGD update) at batch 1, 800x1333, R50-FPN
         defaults (FREEZE_AT 2, 512 ROIs/image), 10 GT instances; and the shapes demo config
         (configs/shapes_demo_cpu.yaml, R18-half, GN) at batch 1 and 2 at its image size
         192x256 with 4 instances.
  memory peak RSS (VmHWM) of each group's process, and the RSS growth between iteration 10
         and 60 of the demo training step and of the demo inference.
"""
from __future__ import annotations

import argparse
import os
import time
from unittest import mock

# the problems are shared with the PyTorch reference worker (NumPy only)
from benchmarks import common
from benchmarks.common import (DEMO_HW, FULL_HW, QUICK_HW, ROOT, current_rss_mb, peak_rss_mb,
                               synthetic_batch)

DEMO_CONFIG = os.path.join(ROOT, "configs", "shapes_demo_cpu.yaml")
# infer --arch: (our config file, case label). The keys and labels are also those of detectron2's
# ARCHS (benchmarks/torch_reference.py), whose model-zoo yaml has the same file name: the label,
# one word, pairs the rows (benchmarks/compare.py). Section `architectures` runs them all.
ARCHS = {"r50": (os.path.join(ROOT, "configs", "mask_rcnn_R_50_FPN_1x.yaml"), "R50-FPN"),
         "r101": (os.path.join(ROOT, "configs", "mask_rcnn_R_101_FPN_3x.yaml"), "R101-FPN"),
         "x101": (os.path.join(ROOT, "configs", "mask_rcnn_X_101_32x8d_FPN_3x.yaml"), "X101-FPN"),
         "cascade": (os.path.join(ROOT, "configs", "cascade_mask_rcnn_R_50_FPN_1x.yaml"),
                     "Cascade-R50-FPN"),
         "c4": (os.path.join(ROOT, "configs", "mask_rcnn_R_50_C4_1x.yaml"), "R50-C4"),
         "dc5": (os.path.join(ROOT, "configs", "mask_rcnn_R_50_DC5_3x.yaml"), "R50-DC5"),
         "faster": (os.path.join(ROOT, "configs", "faster_rcnn_R_50_FPN_1x.yaml"),
                    "Faster-R50-FPN")}


# ---------------------------------------------------------------------- helpers (also used by
# benchmarks/scaling.py and benchmarks/profile.py)
def setup_threads(intra: int = 2, inter: int = 1):
    """Thread counts; must run before TensorFlow executes anything."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    tf.get_logger().setLevel("ERROR")
    return tf


def make_cfg(config_file=None, overrides=()):
    from tfmrcnn.config import get_cfg
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(overrides))
    return cfg


def batch_signature(batch):
    """TensorSpecs of a batch with every dimension but the last of boxes/images unknown."""
    import tensorflow as tf
    spec = {}
    for k, v in batch.items():
        shape = [None] * v.ndim
        if k in ("images",):
            shape[-1] = 3
        if k in ("gt_boxes", "crowd_boxes"):
            shape[-1] = 4
        if k == "image_sizes":
            shape[-1] = 2
        spec[k] = tf.TensorSpec(shape, tf.as_dtype(v.dtype), name=k)
    return spec


def build_model(cfg, seed: int = 0):
    import tensorflow as tf
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN
    tf.random.set_seed(seed)
    return GeneralizedRCNN(cfg)


def calibrate_frozen_bn(model, images, image_sizes):
    """Set every FrozenBN's statistics to those of its input on `images` (eager, in call order).

    Random msra weights with identity FrozenBNs let activations grow ~10x per stage (features
    ~2500 at P2): RPN deltas then blow every proposal up to the whole image and the box head's
    softmax saturates, leaving no detection. Normalised like a fresh BatchNorm, the untrained
    model gives realistic proposals and ~1/81 class scores (100 detections at threshold 0).
    """
    import tensorflow as tf
    from tfmrcnn.modeling.norm import FrozenBN
    original = FrozenBN.__call__

    def calibrating(self, x, training=False):
        mean, var = tf.nn.moments(tf.cast(x, tf.float32), axes=[0, 1, 2])
        self.running_mean.assign(mean)
        self.running_var.assign(var)
        return original(self, x, training)

    FrozenBN.__call__ = calibrating  # only for this eager pass
    # convs fold a FrozenBN into their weights (layers._frozen_affine) and never call it:
    # switch the fold off so that every FrozenBN sees its input
    with mock.patch("tfmrcnn.modeling.layers._frozen_affine", lambda norm: None):
        try:
            model.features(tf.constant(images), tf.constant(image_sizes), False, tf.float32)
        finally:
            FrozenBN.__call__ = original


def make_train_step(model, cfg, spec, lr: float = 1e-4):
    """One compiled training step (losses, gradients, SGD) without Horovod: the work of
    tfmrcnn.engine.trainer.make_train_step on one process."""
    import tensorflow as tf
    from tfmrcnn.engine.solver import build_optimizer
    opt = build_optimizer(cfg, model)
    variables = opt.variables_

    @tf.function(input_signature=[spec], autograph=False)
    def step(batch):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, training=True)
            total = tf.add_n(list(losses.values()))
        grads = tape.gradient(total, variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, variables)]
        opt.apply(grads, tf.constant(lr))
        return total

    return step


def inference_stages(model):
    """The inference split into three compiled functions with fixed signatures:
    backbone(images, sizes) -> the features the heads read (FPN: [p2..p6]; C4: [res4]; DC5:
    [res5]); rpn(features, sizes) -> (proposals, valid); heads(features, proposals, valid,
    sizes) -> detections. Together they are model.inference."""
    import tensorflow as tf
    from tfmrcnn.modeling.meta_arch import feature_channels
    dt = model.test_dtype
    names = list(dict.fromkeys(model.rpn_in_features + model.roi_in_features))
    img = tf.TensorSpec([None, None, None, 3], tf.float32)
    sizes = tf.TensorSpec([None, 2], tf.int32)
    feat_specs = [tf.TensorSpec([None, None, None, feature_channels(model.backbone, [n], n)], dt)
                  for n in names]

    @tf.function(input_signature=[img, sizes], autograph=False)
    def backbone(images, image_sizes):
        feats = model.features(images, image_sizes, False, dt)
        return [feats[n] for n in names]

    @tf.function(input_signature=[feat_specs, sizes], autograph=False)
    def rpn(features, image_sizes):
        f = dict(zip(names, features))
        p, _, v, _ = model.proposal_generator([f[n] for n in model.rpn_in_features],
                                              image_sizes, training=False)
        return p, v

    @tf.function(input_signature=[feat_specs, tf.TensorSpec([None, None, 4], tf.float32),
                                  tf.TensorSpec([None, None], tf.bool), sizes], autograph=False)
    def heads(features, proposals, valid, image_sizes):
        f = dict(zip(names, features))
        return model.roi_heads.inference(model._roi_features(f), proposals, valid, image_sizes)

    return backbone, rpn, heads


def block(result):
    import tensorflow as tf
    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy()
    return result


def time_calls(fn, repeats: int, warmup: int):
    """Median (wall, cpu) seconds of fn() over `repeats` calls after `warmup` calls."""
    return common.time_calls(fn, repeats, warmup, wait=block)


def postprocess_all(outputs, hw):
    from tfmrcnn.inference.postprocess import detector_postprocess, unbatch_outputs
    return [detector_postprocess(o, hw, hw) for o in unbatch_outputs(outputs)]


# ---------------------------------------------------------------------- worker groups
_row = common.print_row


def _conv_override(opts):
    return ["MODEL.WINOGRAD", "False"] if opts.direct else []


def _mode(opts, bf16_name="bf16"):
    """Row label of the precision / conv algorithm of a worker."""
    return bf16_name if opts.bf16 else ("fp32 direct conv" if opts.direct else "fp32")


def group_infer(opts):
    import tensorflow as tf
    hw = QUICK_HW if opts.quick else FULL_HW
    config_file, arch = ARCHS[opts.arch]
    cfg = make_cfg(config_file, overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                           "TEST.BF16_INFERENCE", str(bool(opts.bf16))]
                   + _conv_override(opts))
    model = build_model(cfg)
    batch = synthetic_batch(1, hw, 0, 80, masks=False)
    calibrate_frozen_bn(model, batch["images"], batch["image_sizes"])
    images, sizes = tf.constant(batch["images"]), tf.constant(batch["image_sizes"])
    backbone, rpn, heads = inference_stages(model)
    t0 = time.perf_counter()
    feats = block(backbone(images, sizes))
    props, valid = block(rpn(feats, sizes))
    outs = block(heads(feats, props, valid, sizes))
    infer = model.make_inference_fn()
    block(infer(images, sizes))
    trace_s = time.perf_counter() - t0
    ndet = int(outs["num_detections"][0])
    case = "%s %dx%d %s" % (arch, hw[0], hw[1], _mode(opts))
    rep, warm = opts.repeats, opts.warmup
    stages = [("backbone+fpn", lambda: backbone(images, sizes)),
              ("rpn", lambda: rpn(feats, sizes)),
              ("roi_heads", lambda: heads(feats, props, valid, sizes))]
    for name, fn in stages:
        wall, cpu = time_calls(fn, rep, warm)
        _row(group="infer", case=case, stage=name, seconds=wall, cpu_s=cpu)
    np_outs = {k: v.numpy() for k, v in outs.items()}
    wall, cpu = time_calls(lambda: postprocess_all(np_outs, hw), rep, warm)
    _row(group="infer", case=case, stage="paste", seconds=wall, cpu_s=cpu,
         note="%d dets" % ndet)
    wall, cpu = time_calls(lambda: postprocess_all(infer(images, sizes), hw), rep, warm)
    traces = sum(f.experimental_get_tracing_count() for f in (backbone, rpn, heads, infer))
    _row(group="infer", case=case, stage="end-to-end", seconds=wall, cpu_s=cpu,
         note="first trace+run of all fns %.1f s; %d traces for 4 fns" % (trace_s, traces))
    _row(group="infer", case=case, stage="peak RSS MB", seconds=None, value=peak_rss_mb())


def group_train(opts):
    import tensorflow as tf
    rep, warm = opts.repeats, opts.warmup
    if opts.case == "r50":
        hw = QUICK_HW if opts.quick else FULL_HW
        # --bf16: the bfloat16 mixed-precision step (SOLVER.AMP with TRAINER.AMP_DTYPE bfloat16)
        cfg = make_cfg(overrides=(["SOLVER.AMP.ENABLED", "True", "TRAINER.AMP_DTYPE", "bfloat16"]
                                  if opts.bf16 else []) + _conv_override(opts))
        sizes = [(1, hw, 10, "R50-FPN %dx%d %s" % (*hw, _mode(opts, "AMP bf16")))]
    else:
        cfg = make_cfg(DEMO_CONFIG)
        sizes = [(1, DEMO_HW, 4, "demo %dx%d" % DEMO_HW), (2, DEMO_HW, 4, "demo %dx%d" % DEMO_HW)]
    model = build_model(cfg)
    step = None
    for b, hw, g, case in sizes:
        batch = synthetic_batch(b, hw, g, cfg.MODEL.ROI_HEADS.NUM_CLASSES, seed=b)
        if step is None:  # one trace serves every batch size (None dims)
            calibrate_frozen_bn(model, batch["images"], batch["image_sizes"])
            step = make_train_step(model, cfg, batch_signature(batch))
        tensors = {k: tf.constant(v) for k, v in batch.items()}
        t0 = time.perf_counter()
        block(step(tensors))
        first = time.perf_counter() - t0
        wall, cpu = time_calls(lambda: step(tensors), rep, warm)
        _row(group="train", case="%s batch %d" % (case, b), stage="train step", seconds=wall,
             cpu_s=cpu, note="first call %.1f s; traces so far %d" % (
                 first, step.experimental_get_tracing_count()))
    _row(group="train", case=sizes[-1][3], stage="peak RSS MB", seconds=None,
         value=peak_rss_mb())


def group_memory(opts):
    """RSS growth of the demo training step and of R50 inference over 50 iterations."""
    import tensorflow as tf
    iters = 20 if opts.quick else 50
    cfg = make_cfg(DEMO_CONFIG)
    model = build_model(cfg)
    batch = synthetic_batch(2, DEMO_HW, 4, 3)
    step = make_train_step(model, cfg, batch_signature(batch))
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    for _ in range(10):
        block(step(tensors))
    start = current_rss_mb()
    for _ in range(iters):
        block(step(tensors))
    _row(group="memory", case="demo train batch 2", stage="RSS growth MB over %d its" % iters,
         seconds=None, value=current_rss_mb() - start, note="RSS %.0f MB" % current_rss_mb())
    infer = model.make_inference_fn()
    images, sizes = tensors["images"], tensors["image_sizes"]
    for _ in range(10):
        postprocess_all(infer(images, sizes), DEMO_HW)
    start = current_rss_mb()
    for _ in range(iters):
        postprocess_all(infer(images, sizes), DEMO_HW)
    _row(group="memory", case="demo inference batch 2", stage="RSS growth MB over %d its" % iters,
         seconds=None, value=current_rss_mb() - start, note="RSS %.0f MB" % current_rss_mb())


GROUPS = {"infer": group_infer, "train": group_train, "memory": group_memory}


def worker_main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=sorted(GROUPS), required=True)
    p.add_argument("--case", default="r50", help="train group: r50 or demo")
    p.add_argument("--arch", default="r50", choices=sorted(ARCHS), help="infer group's model")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--direct", action="store_true", help="MODEL.WINOGRAD=False")
    opts = common.add_worker_arguments(p).parse_args(argv)
    setup_threads(opts.threads, opts.inter_threads)
    GROUPS[opts.worker](opts)


# ---------------------------------------------------------------------- driver side
def run_worker(extra, timeout=1800):
    """Run one worker group in a child process; returns its rows."""
    return common.run_worker(common.module_command("model", *extra), extra[1],
                             env=common.worker_env(TF_CPP_MIN_LOG_LEVEL="2"), timeout=timeout)


def run_infer(arch, args):
    """The rows of group infer (fp32) of ARCHS[arch] with the driver's worker options."""
    return run_worker(["--worker", "infer", "--arch", arch] + common.worker_options(args))


def run(args):
    """The driver's entry point (python -m benchmarks model [--quick] [--repeats N])."""
    options = common.worker_options(args)
    # fp32 with and without Winograd, and the bfloat16 modes (TEST.BF16_INFERENCE, AMP bf16
    # training) side by side
    groups = [["--worker", "infer"], ["--worker", "infer", "--direct"],
              ["--worker", "infer", "--bf16"], ["--worker", "infer", "--arch", "x101"],
              ["--worker", "train", "--case", "r50"],
              ["--worker", "train", "--case", "r50", "--direct"],
              ["--worker", "train", "--case", "r50", "--bf16"],
              ["--worker", "train", "--case", "demo"], ["--worker", "memory"]]
    rows = []
    for g in groups:
        rows += run_worker(g + options)
    return rows


if __name__ == "__main__":
    worker_main()
