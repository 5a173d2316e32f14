#!/usr/bin/env python
"""Where the time of Mask R-CNN goes on the CPU, and what the candidate optimisations gain.

    python scripts/profile_model.py stages  [--hw 800 1333] [--bf16] [--repeats 3]
    python scripts/profile_model.py ops     [--hw 800 1333] [--train] [--top 25]
                                            [--config-file F --batch B --num-gt G] [KEY VALUE ...]
    python scripts/profile_model.py trace   --logdir /tmp/tfmrcnn_trace [--train]
    python scripts/profile_model.py proto   [--hw 800 1333] [--only NAME ...]
    python scripts/profile_model.py proto   --train [--hw 800 1333] [--only NAME ...]

stages  inference cut into compiled pieces (each a tf.function with a fixed signature, fed the
        previous piece's outputs): normalize, ResNet bottom-up, FPN (= features - bottom-up),
        RPN head convs, proposals (anchors, top-k, decode, NMS), box ROIAlign, box head,
        box inference (score threshold, per-class NMS, per image: tf.map_fn), mask ROIAlign,
        mask head, paste (NumPy). Also the whole model.inference in one function, so that
        "sum of pieces - whole" shows the cost of the cuts themselves.
ops     per-op CPU time from TF1-style RunMetadata (FULL_TRACE) of the inference graph (or the
        training step with --train), summed by op type and by stage scope: this is what shows
        unfused pointwise ops (FrozenBN's Mul/Add, Pad before every conv), copies and NMS.
trace   a TensorBoard profiler trace (tf.profiler.experimental) of a few calls.
proto   the optimisation prototypes, applied by monkeypatching tfmrcnn's classes in this
        process only (no model file is changed), each timed A/B against the unpatched model
        on the same weights and input, with the largest output difference:
          fold_bn       FrozenBN folded into the conv (w * scale, bias = shift) so the
                        Conv2D + BiasAdd + Relu is one oneDNN fused op
          pad_in_conv   the explicit symmetric padding given to tf.nn.conv2d (padding=[[..]])
                        instead of a separate tf.pad copy of every 3x3/7x7 input
          fold+pad      both
          bf16          TEST.BF16_INFERENCE (backbone, FPN, RPN head in bfloat16)
          heads_bf16    the pooled ROI features cast to bfloat16, so the box head, box
                        predictor and mask head run in bfloat16 too (float32 ROIAlign kept)
          and combinations (PROTOS); by default baseline, fold_bn, bf16, bf16+heads_bf16,
          fold+bf16+heads_bf16. Times: median wall and process CPU time.
        With --train, training-step variants (TRAIN_PROTOS): fg_mask (mask head on the real
        foreground ROIs only, `_mask_loss_foreground_only`), fold_bn, amp_bf16
        (SOLVER.AMP.ENABLED with TRAINER.AMP_DTYPE bfloat16), heads_bf16, and combinations.

Random weights are calibrated like the benchmark (scripts/bench/model.py calibrate_frozen_bn)
and MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0 so that there are 100 detections.
Threads: 2 intra-op, 1 inter-op unless --threads / --inter-threads.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import os
import re
import sys
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "tfmrcnn_bench_model", os.path.join(ROOT, "scripts", "bench", "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


B = _load_bench()


def _setup(opts, overrides=()):
    tf = B.setup_threads(opts.threads, opts.inter_threads)
    cfg = B.make_cfg(overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                "TEST.BF16_INFERENCE", str(bool(getattr(opts, "bf16", False)))]
                     + list(overrides))
    model = B.build_model(cfg)
    batch = B.synthetic_batch(1, tuple(opts.hw), 10, 80, masks=True)
    B.calibrate_frozen_bn(model, batch["images"], batch["image_sizes"])
    return tf, cfg, model, batch


def _print_table(rows, columns):
    widths = [max(len(str(c)), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v):
    if isinstance(v, float):
        return "%.4g" % v
    return "" if v is None else str(v)


# ---------------------------------------------------------------------- stages
def stage_functions(tf, model):
    """Compiled pieces of model.inference; returns [(name, fn, args_builder)] run in order."""
    dt = model.test_dtype
    names = model.backbone.output_names
    roi_names = model.roi_in_features
    c = model.backbone.out_channels
    heads = model.roi_heads
    pred = heads.box_predictor
    fpn = model.backbone
    f32 = tf.float32
    img = tf.TensorSpec([None, None, None, 3], f32)
    sizes = tf.TensorSpec([None, 2], tf.int32)
    feats = [tf.TensorSpec([None, None, None, c], dt) for _ in names]
    roi_feats = [tf.TensorSpec([None, None, None, c], f32) for _ in roi_names]
    bottom_specs = [tf.TensorSpec([None, None, None, None], dt) for _ in fpn.in_features]
    fn = lambda sig: tf.function(input_signature=sig, autograph=False)  # noqa: E731

    @fn([img, sizes])
    def normalize(images, image_sizes):
        return model.normalize(images, image_sizes, dt)

    @fn([tf.TensorSpec([None, None, None, 3], dt)])
    def bottom_up(x):
        out = fpn.bottom_up(x, training=False)
        return [out[f] for f in fpn.in_features]

    @fn([img, sizes])
    def features(images, image_sizes):
        out = model.features(images, image_sizes, False, dt)
        return [out[n] for n in names]

    @fn([feats])
    def rpn_head(features_list):
        f = dict(zip(names, features_list))
        return model.proposal_generator.rpn_head([f[n] for n in model.rpn_in_features])

    num_rpn = len(model.rpn_in_features)

    @fn([[tf.TensorSpec([None, None], f32)] * num_rpn,
         [tf.TensorSpec([None, None, 4], f32)] * num_rpn, feats, sizes])
    def proposals(objectness, deltas, features_list, image_sizes):
        f = dict(zip(names, features_list))
        rpn = model.proposal_generator
        anchors = rpn.anchor_generator([(tf.shape(f[n])[1], tf.shape(f[n])[2])
                                        for n in model.rpn_in_features])
        p, _, v = rpn.find_top_proposals(anchors, objectness, deltas, image_sizes, False)
        return p, v

    box_spec = tf.TensorSpec([None, None, 4], f32)

    @fn([roi_feats, box_spec])
    def box_roialign(features_list, boxes):
        flat, idx = _flatten(tf, boxes)
        return heads.box_pooler(features_list, flat, idx)

    @fn([tf.TensorSpec([None, None, None, c], f32), tf.TensorSpec([None], tf.int32)])
    def box_head(pooled, shape_br):
        logits, deltas = pred(heads.box_head(pooled, training=False))
        return (tf.reshape(logits, tf.concat([shape_br, [-1]], 0)),
                tf.reshape(deltas, tf.concat([shape_br, [-1]], 0)))

    @fn([tf.TensorSpec([None, None, None], f32), tf.TensorSpec([None, None, None], f32),
         box_spec, tf.TensorSpec([None, None], tf.bool), sizes])
    def box_inference(logits, deltas, proposals_, valid, image_sizes):
        return pred.inference(logits, deltas, proposals_, valid, image_sizes)

    @fn([roi_feats, box_spec])
    def mask_roialign(features_list, boxes):
        flat, idx = _flatten(tf, boxes)
        return heads.mask_pooler(features_list, flat, idx)

    @fn([tf.TensorSpec([None, None, None, c], f32), tf.TensorSpec([None], tf.int32)])
    def mask_head(pooled, classes):
        from tfmrcnn.modeling.mask_head import mask_rcnn_inference
        return mask_rcnn_inference(heads.mask_head(pooled, training=False), classes)

    whole = model.make_inference_fn()
    return dict(normalize=normalize, bottom_up=bottom_up, features=features, rpn_head=rpn_head,
                proposals=proposals, box_roialign=box_roialign, box_head=box_head,
                box_inference=box_inference, mask_roialign=mask_roialign, mask_head=mask_head,
                whole=whole)


def _flatten(tf, boxes):
    b, r = tf.shape(boxes)[0], tf.shape(boxes)[1]
    return tf.reshape(boxes, [-1, 4]), tf.repeat(tf.range(b, dtype=tf.int32), r)


def cmd_stages(opts):
    tf, cfg, model, batch = _setup(opts)
    fns = stage_functions(tf, model)
    images, sizes = tf.constant(batch["images"]), tf.constant(batch["image_sizes"])
    roi_idx = [model.backbone.output_names.index(n) for n in model.roi_in_features]
    # one pass to get every piece's inputs (and trace everything)
    x = fns["normalize"](images, sizes)
    feats = fns["features"](images, sizes)
    obj, dlt = fns["rpn_head"](feats)
    props, valid = fns["proposals"](obj, dlt, feats, sizes)
    roi_feats = [tf.cast(feats[i], tf.float32) for i in roi_idx]
    pooled = fns["box_roialign"](roi_feats, props)
    shape_br = tf.shape(props)[:2]
    logits, deltas = fns["box_head"](pooled, shape_br)
    det = fns["box_inference"](logits, deltas, props, valid, sizes)
    mpooled = fns["mask_roialign"](roi_feats, det["boxes"])
    classes = tf.reshape(det["classes"], [-1])
    masks = fns["mask_head"](mpooled, classes)
    whole_out = fns["whole"](images, sizes)
    np_out = {k: v.numpy() for k, v in whole_out.items()}
    hw = tuple(opts.hw)
    pieces = [
        ("normalize", lambda: fns["normalize"](images, sizes)),
        ("resnet bottom-up", lambda: fns["bottom_up"](x)),
        ("features (normalize+resnet+fpn)", lambda: fns["features"](images, sizes)),
        ("rpn head convs", lambda: fns["rpn_head"](feats)),
        ("rpn proposals (topk/decode/nms)", lambda: fns["proposals"](obj, dlt, feats, sizes)),
        ("box roialign (1000 rois)", lambda: fns["box_roialign"](roi_feats, props)),
        ("box head + predictor", lambda: fns["box_head"](pooled, shape_br)),
        ("box inference (thresh/nms, map_fn)",
         lambda: fns["box_inference"](logits, deltas, props, valid, sizes)),
        ("mask roialign (100 rois)", lambda: fns["mask_roialign"](roi_feats, det["boxes"])),
        ("mask head", lambda: fns["mask_head"](mpooled, classes)),
        ("paste (numpy)", lambda: B.postprocess_all(np_out, hw)),
        ("whole model.inference (1 fn)", lambda: fns["whole"](images, sizes)),
    ]
    rows, times = [], {}
    for name, f in pieces:
        wall, cpu = B.time_calls(f, opts.repeats, opts.warmup)
        times[name] = (wall, cpu)
        rows.append({"stage": name, "wall_s": wall, "cpu_s": cpu})
    fpn_w = times["features (normalize+resnet+fpn)"][0] - times["resnet bottom-up"][0] \
        - times["normalize"][0]
    rows.insert(3, {"stage": "  => fpn top-down (difference)", "wall_s": fpn_w})
    sum_pieces = sum(times[n][0] for n, _ in pieces[2:-2])
    rows.append({"stage": "sum of model pieces (features..mask head)", "wall_s": sum_pieces})
    print("# profile stages, %s, hw %s, dets %d, load %s" % (
        "bf16" if opts.bf16 else "fp32", hw, int(det["num_detections"][0]),
        " ".join("%.2f" % v for v in os.getloadavg())))
    _print_table(rows, ["stage", "wall_s", "cpu_s"])
    del masks


# ---------------------------------------------------------------------- per-op trace
_SCOPES = [  # (scope name, class, method) wrapped in tf.name_scope for the op profile
    ("bottom_up", "tfmrcnn.modeling.backbone", "ResNet", "__call__"),
    ("rpn_head", "tfmrcnn.modeling.rpn", "RPNHead", "__call__"),
    ("rpn_targets", "tfmrcnn.modeling.rpn", "RPN", "label_and_sample_anchors"),
    ("rpn_losses", "tfmrcnn.modeling.rpn", "RPN", "losses"),
    ("rpn_proposals", "tfmrcnn.modeling.rpn", "RPN", "find_top_proposals"),
    ("roi_sampler", "tfmrcnn.modeling.roi_heads", "ROISampler", "__call__"),
    ("roialign", "tfmrcnn.modeling.poolers", "ROIPooler", "__call__"),
    ("box_head", "tfmrcnn.modeling.roi_heads", "FastRCNNConvFCHead", "__call__"),
    ("box_inference", "tfmrcnn.modeling.roi_heads", "FastRCNNOutputLayers", "inference"),
    ("box_losses", "tfmrcnn.modeling.roi_heads", "FastRCNNOutputLayers", "losses"),
    ("mask_head", "tfmrcnn.modeling.mask_head", "MaskRCNNConvUpsampleHead", "__call__"),
    ("mask_targets", "tfmrcnn.modeling.mask_head", "mask_rcnn_targets", None),
]


@contextlib.contextmanager
def named_scopes(tf):
    """Wrap the stage methods in tf.name_scope so that op names tell their stage."""
    import functools
    undo = []
    for scope, mod_name, attr, method in _SCOPES:
        mod = importlib.import_module(mod_name)
        owner, name = (getattr(mod, attr), method) if method else (mod, attr)
        original = getattr(owner, name)

        def wrap(fn, scope=scope):
            @functools.wraps(fn)
            def wrapped(*a, **k):
                with tf.name_scope(scope):
                    return fn(*a, **k)
            return wrapped

        setattr(owner, name, wrap(original))
        undo.append((owner, name, original))
        if method is None:  # imported by name elsewhere
            for other in ("tfmrcnn.modeling.roi_heads",):
                m = importlib.import_module(other)
                if getattr(m, attr, None) is original:
                    setattr(m, attr, getattr(owner, name))
                    undo.append((m, attr, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def _scope_of(node_name):
    parts = node_name.split("/")
    known = {s for s, *_ in _SCOPES}
    for p in parts:
        base = re.sub(r"_\d+$", "", p)
        if base in known:
            return base
    if "gradients" in parts[0] or parts[0].startswith("gradient_tape"):
        return "backward(other)"
    return "other (fpn, normalize, update...)"


def cmd_ops(opts):
    """Per-op times of one graph run, from TF1 RunMetadata step stats."""
    tf = B.setup_threads(opts.threads, opts.inter_threads)
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), named_scopes(tf):
        cfg = B.make_cfg(opts.config_file,
                         overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] + opts.opts)
        with tf.name_scope("model"):  # graph mode rejects tf.Module's "_Conv" as a root scope
            model = B.build_model(cfg)
        batch = B.synthetic_batch(opts.batch, tuple(opts.hw), opts.num_gt,
                                  cfg.MODEL.ROI_HEADS.NUM_CLASSES, masks=opts.train)
        feeds = {k: tf1.placeholder(tf.as_dtype(v.dtype), [None] * v.ndim, name=k)
                 for k, v in batch.items()}
        feeds["images"].set_shape([None, None, None, 3])
        if opts.train:
            losses = model.compute_losses(feeds, training=True)
            total = tf.add_n(list(losses.values()))
            variables = model.trainable_variables
            grads = tf.gradients(total, variables)
            updates = [v.assign_sub(1e-6 * g) for v, g in zip(variables, grads) if g is not None]
            fetch = [total, updates]
        else:
            fetch = model.inference(feeds["images"], feeds["image_sizes"])
        init = tf1.global_variables_initializer()
    config = tf1.ConfigProto(intra_op_parallelism_threads=opts.threads,
                             inter_op_parallelism_threads=opts.inter_threads)
    with tf1.Session(graph=graph, config=config) as sess:
        sess.run(init)
        feed = {feeds[k]: v for k, v in batch.items()}
        _calibrate_graph_bn(tf, sess, graph, model, feed) if not opts.no_calibrate else None
        for _ in range(opts.warmup):
            sess.run(fetch, feed)
        md = tf1.RunMetadata()
        t0 = time.perf_counter()
        sess.run(fetch, feed, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                 run_metadata=md)
        wall = time.perf_counter() - t0
    by_type, by_scope, by_node = (collections.Counter() for _ in range(3))
    counts = collections.Counter()
    for dev in md.step_stats.dev_stats:
        for ns in dev.node_stats:
            us = ns.op_end_rel_micros
            op = ns.timeline_label.split("=")[-1].split("(")[0].strip() or ns.node_name
            op = re.sub(r"^.*\s", "", op)
            by_type[op] += us
            counts[op] += 1
            by_scope[_scope_of(ns.node_name)] += us
            by_node[ns.node_name] += us
    total_us = sum(by_type.values())
    print("# ops profile (%s), hw %s, traced run wall %.2f s, summed op time %.2f s, load %s" % (
        "train step" if opts.train else "inference", tuple(opts.hw), wall, total_us / 1e6,
        " ".join("%.2f" % v for v in os.getloadavg())))
    print("\n## by stage scope")
    _print_table([{"scope": k, "op_s": v / 1e6, "share": "%.1f%%" % (100 * v / total_us)}
                  for k, v in by_scope.most_common()], ["scope", "op_s", "share"])
    print("\n## by op type (top %d)" % opts.top)
    _print_table([{"op": k, "count": counts[k], "op_s": v / 1e6,
                   "share": "%.1f%%" % (100 * v / total_us)}
                  for k, v in by_type.most_common(opts.top)], ["op", "count", "op_s", "share"])
    print("\n## slowest nodes (top %d)" % opts.top)
    _print_table([{"node": k[-90:], "op_ms": v / 1e3} for k, v in by_node.most_common(opts.top)],
                 ["node", "op_ms"])


def _calibrate_graph_bn(tf, sess, graph, model, feed):
    """Graph-mode version of calibrate_frozen_bn: run the features with a moments hook."""
    from tfmrcnn.modeling.norm import FrozenBN
    original = FrozenBN.__call__
    stats = []

    def recording(self, x, training=False):
        mean, var = tf.nn.moments(tf.cast(x, tf.float32), axes=[0, 1, 2])
        stats.append((self, mean, var))
        # normalise with the batch moments so that later layers see the calibrated input
        return (x - mean) * tf.math.rsqrt(var + 1e-5) * self.weight + self.bias

    with graph.as_default():
        FrozenBN.__call__ = recording
        fold_off = mock.patch("tfmrcnn.modeling.layers._frozen_affine", lambda norm: None)
        fold_off.start()  # folded convs would bypass FrozenBN.__call__
        try:
            images = [t for t in feed if t.name.startswith("images")][0]
            sizes = [t for t in feed if t.name.startswith("image_sizes")][0]
            model.features(images, sizes, False, tf.float32)
        finally:
            FrozenBN.__call__ = original
            fold_off.stop()
        values = sess.run([(m, v) for _, m, v in stats], feed)
        for (bn, _, _), (m, v) in zip(stats, values):
            bn.running_mean.load(m, sess)
            bn.running_var.load(v, sess)


def cmd_trace(opts):
    tf, cfg, model, batch = _setup(opts)
    images, sizes = tf.constant(batch["images"]), tf.constant(batch["image_sizes"])
    if opts.train:
        fn_ = B.make_train_step(model, cfg, B.batch_signature(batch))
        tensors = {k: tf.constant(v) for k, v in batch.items()}
        call = lambda: fn_(tensors)  # noqa: E731
    else:
        fn_ = model.make_inference_fn()
        call = lambda: fn_(images, sizes)  # noqa: E731
    B.block(call())
    tf.profiler.experimental.start(opts.logdir)
    for _ in range(opts.repeats):
        B.block(call())
    tf.profiler.experimental.stop()
    print("trace written to %s (tensorboard --logdir %s, Profile tab)" % (opts.logdir,
                                                                          opts.logdir))


# ---------------------------------------------------------------------- prototypes
def _conv_call_folded(self, x, training=False):
    """Conv2D.__call__ with a FrozenBN folded into the weights (prototype of `fold_bn`)."""
    import tensorflow as tf
    from tfmrcnn.modeling.norm import FrozenBN
    norm = self.norm
    if not isinstance(norm, FrozenBN):
        return _ORIGINAL["conv"](self, x, training)
    scale = norm.weight * tf.math.rsqrt(norm.running_var + 1e-5)  # (Cout,)
    shift = norm.bias - norm.running_mean * scale
    if self.bias is not None:
        shift = shift + self.bias * scale
    w = tf.cast(self.weight * scale, x.dtype)  # HWIO: scales the output channels
    x = _conv(self, x, w)
    x = tf.nn.bias_add(x, tf.cast(shift, x.dtype))
    return self.activation(x) if self.activation is not None else x


def _conv(self, x, w):
    import tensorflow as tf
    if _PAD_IN_CONV[0] and self.padding:
        p = self.padding
        return tf.nn.conv2d(x, w, strides=self.stride, dilations=self.dilation,
                            padding=[[0, 0], [p, p], [p, p], [0, 0]])
    if self.padding:
        p = self.padding
        x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
    return tf.nn.conv2d(x, w, strides=self.stride, padding="VALID", dilations=self.dilation)


def _conv_call_pad(self, x, training=False):
    """Conv2D.__call__ with the padding inside tf.nn.conv2d (prototype of `pad_in_conv`)."""
    import tensorflow as tf
    x = _conv(self, x, tf.cast(self.weight, x.dtype))
    if self.bias is not None:
        x = tf.nn.bias_add(x, tf.cast(self.bias, x.dtype))
    if self.norm is not None:
        x = self.norm(x, training=training)
    if self.activation is not None:
        x = self.activation(x)
    return x


_ORIGINAL = {}
_PAD_IN_CONV = [False]


def _pooler_call_bf16(self, features, boxes, box_indices):
    """ROIPooler.__call__ whose pooled features are cast to bfloat16 (prototype of
    `heads_bf16`): the box and mask heads then run in bfloat16, since Linear / Conv2D /
    ConvTranspose2D cast their weights to the input dtype and the predictor outputs are cast
    back to float32 by the inference code."""
    import tensorflow as tf
    return tf.cast(_ORIGINAL["pooler"](self, features, boxes, box_indices), tf.bfloat16)


@contextlib.contextmanager
def patched(fold: bool, pad: bool, heads_bf16: bool = False):
    from tfmrcnn.modeling.layers import Conv2D
    from tfmrcnn.modeling.poolers import ROIPooler
    _ORIGINAL["conv"] = Conv2D.__call__
    _ORIGINAL["pooler"] = ROIPooler.__call__
    _PAD_IN_CONV[0] = pad
    if fold:
        Conv2D.__call__ = _conv_call_folded
    elif pad:
        Conv2D.__call__ = _conv_call_pad
    if heads_bf16:
        ROIPooler.__call__ = _pooler_call_bf16
    try:
        yield
    finally:
        Conv2D.__call__ = _ORIGINAL["conv"]
        ROIPooler.__call__ = _ORIGINAL["pooler"]
        _PAD_IN_CONV[0] = False


# variant: (fold_bn, pad_in_conv, bf16 backbone/FPN/RPN (TEST.BF16_INFERENCE), bf16 ROI heads)
PROTOS = {"baseline": (False, False, False, False), "fold_bn": (True, False, False, False),
          "pad_in_conv": (False, True, False, False), "fold+pad": (True, True, False, False),
          "bf16": (False, False, True, False), "bf16+heads_bf16": (False, False, True, True),
          "fold+bf16+heads_bf16": (True, False, True, True),
          "heads_bf16": (False, False, False, True)}
DEFAULT_PROTOS = ["baseline", "fold_bn", "bf16", "bf16+heads_bf16", "fold+bf16+heads_bf16"]


def cmd_proto(opts):
    import numpy as np
    tf, cfg, model, batch = _setup(opts)
    bf_cfg = B.make_cfg(overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                   "TEST.BF16_INFERENCE", "True"])
    bf_model = B.build_model(bf_cfg)
    src = model.named_variables()
    for k, v in bf_model.named_variables().items():
        v.assign(src[k])
    images, sizes = tf.constant(batch["images"]), tf.constant(batch["image_sizes"])
    names = opts.only or DEFAULT_PROTOS
    rows, ref = [], None
    for name in names:
        fold, pad, bf16, heads_bf16 = PROTOS[name]
        m = bf_model if bf16 else model
        with patched(fold, pad, heads_bf16):
            feats_fn = tf.function(lambda i, s, m=m: [
                tf.cast(v, tf.float32) for v in
                m.features(i, s, False, m.test_dtype).values()], autograph=False)
            infer = m.make_inference_fn()  # traced inside the patch
            out = infer(images, sizes)
            feats = feats_fn(images, sizes)
            f_wall, f_cpu = B.time_calls(lambda: feats_fn(images, sizes), opts.repeats,
                                         opts.warmup)
            e_wall, e_cpu = B.time_calls(lambda: infer(images, sizes), opts.repeats, opts.warmup)
        p2 = feats[0].numpy()
        row = {"variant": name, "features_s": f_wall, "features_cpu_s": f_cpu,
               "inference_s": e_wall, "inference_cpu_s": e_cpu,
               "dets": int(out["num_detections"][0])}
        if ref is None:
            ref = (p2, out)
        else:
            scale = np.abs(ref[0]).max()  # max |P2 - P2_baseline| / max |P2_baseline|
            row["p2_max_rel_diff"] = float(np.abs(p2 - ref[0]).max() / scale)
        rows.append(row)
        print("done", name, row, flush=True)
    print("# prototypes, hw %s, load %s" % (tuple(opts.hw),
                                            " ".join("%.2f" % v for v in os.getloadavg())))
    _print_table(rows, ["variant", "features_s", "features_cpu_s", "inference_s",
                        "inference_cpu_s", "dets", "p2_max_rel_diff"])


def _mask_loss_foreground_only(self, features_list, samples, gt_masks, training):
    """StandardROIHeads._mask_loss on the real foreground ROIs only (prototype of `fg_mask`).

    The shipped version runs the mask head on all F = BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION
    slots per image (128 at detectron2's defaults) and weights the padding by 0; this one
    gathers the foreground rows of every image first (a dynamic row count: fine on CPU/GPU
    without XLA), as detectron2 does. Same loss value.
    """
    import tensorflow as tf
    from tfmrcnn.modeling.mask_head import mask_rcnn_loss, mask_rcnn_targets
    f = self.sampler.max_foreground
    fg = samples.foreground[:, :f]  # (B, F)
    b, g = tf.shape(gt_masks)[0], tf.shape(gt_masks)[1]
    image = tf.boolean_mask(tf.broadcast_to(tf.range(b)[:, None], tf.shape(fg)), fg)  # (N,)
    boxes = tf.boolean_mask(samples.boxes[:, :f], fg)  # (N, 4)
    classes = tf.boolean_mask(samples.classes[:, :f], fg)  # (N,)
    stack_index = image * g + tf.boolean_mask(samples.gt_indices[:, :f], fg)  # into B*G
    x = self.mask_pooler(features_list, boxes, image)  # (N, 14, 14, C)
    logits = self.mask_head(x, training=training)  # (N, M, M, K)
    hp, wp = tf.shape(gt_masks)[2], tf.shape(gt_masks)[3]
    all_masks = tf.reshape(gt_masks, tf.stack([1, b * g, hp, wp]))  # one "image" of B*G masks
    targets = mask_rcnn_targets(all_masks, boxes[None], stack_index[None], self.mask_size)[0]
    return mask_rcnn_loss(logits, classes, targets, tf.ones_like(classes, tf.float32))


# training variant: (SOLVER.AMP bfloat16, heads in bf16, foreground-only mask head, fold_bn)
TRAIN_PROTOS = {"baseline": (False, False, False, False),
                "fg_mask": (False, False, True, False),
                "fold_bn": (False, False, False, True),
                "amp_bf16": (True, False, False, False),
                "amp_bf16+heads_bf16": (True, True, False, False),
                "amp_bf16+heads_bf16+fg_mask": (True, True, True, False),
                "amp_bf16+heads_bf16+fg_mask+fold_bn": (True, True, True, True)}
DEFAULT_TRAIN_PROTOS = ["baseline", "fg_mask", "amp_bf16", "amp_bf16+heads_bf16+fg_mask"]


def cmd_proto_train(opts):
    """A/B of training-step prototypes at batch 1 (10 GT instances)."""
    import tensorflow as tf
    from tfmrcnn.modeling.roi_heads import StandardROIHeads
    tf_ = B.setup_threads(opts.threads, opts.inter_threads)
    batch = B.synthetic_batch(1, tuple(opts.hw), 10, 80, masks=True)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    spec = B.batch_signature(batch)
    rows = []
    original_mask_loss = StandardROIHeads._mask_loss
    for name in opts.only or DEFAULT_TRAIN_PROTOS:
        amp, heads_bf16, fg_mask, fold = TRAIN_PROTOS[name]
        cfg = B.make_cfg(overrides=["SOLVER.AMP.ENABLED", str(amp),
                                    "TRAINER.AMP_DTYPE", "bfloat16"])
        model = B.build_model(cfg)
        B.calibrate_frozen_bn(model, batch["images"], batch["image_sizes"])
        with patched(fold, False, heads_bf16):
            if fg_mask:
                StandardROIHeads._mask_loss = _mask_loss_foreground_only
            try:
                step = B.make_train_step(model, cfg, spec)
                t0 = time.perf_counter()
                loss = float(step(tensors))
                first = time.perf_counter() - t0
                wall, cpu = B.time_calls(lambda: step(tensors), opts.repeats, opts.warmup)
            finally:
                StandardROIHeads._mask_loss = original_mask_loss
        rows.append({"variant": name, "step_s": wall, "step_cpu_s": cpu,
                     "first_call_s": first, "loss": loss})
        print("done", rows[-1], flush=True)
    del tf_
    print("# training prototypes, hw %s, batch 1, load %s" % (
        tuple(opts.hw), " ".join("%.2f" % v for v in os.getloadavg())))
    _print_table(rows, ["variant", "step_s", "step_cpu_s", "first_call_s", "loss"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["stages", "ops", "trace", "proto"])
    p.add_argument("--hw", type=int, nargs=2, default=[800, 1333])
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--train", action="store_true", help="ops/trace: the training step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inter-threads", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--logdir", default="/tmp/tfmrcnn_trace")
    p.add_argument("--only", nargs="*", choices=sorted(set(PROTOS) | set(TRAIN_PROTOS)))
    p.add_argument("--no-calibrate", action="store_true")
    p.add_argument("--config-file", default=None,
                   help="ops: profile this config (e.g. configs/shapes_demo_cpu.yaml) not R50")
    p.add_argument("--batch", type=int, default=1, help="ops: images per step")
    p.add_argument("--num-gt", type=int, default=10, help="ops: GT instances per image")
    p.add_argument("opts", nargs="*", default=[], help="ops: config overrides KEY VALUE ...")
    opts = p.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if opts.command == "proto" and opts.train:
        return cmd_proto_train(opts)
    {"stages": cmd_stages, "ops": cmd_ops, "trace": cmd_trace, "proto": cmd_proto}[
        opts.command](opts)


if __name__ == "__main__":
    main()
