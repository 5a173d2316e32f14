"""Where the time of one Mask R-CNN step goes on the CPU, op by op.

    python -m benchmarks.profile ops    [--hw 800 1333] [--train] [--top 25]
                                        [--config-file F --batch B --num-gt G] [KEY VALUE ...]
    python -m benchmarks.profile trace  --logdir /tmp/tfmrcnn_trace [--train] [--bf16]

ops     per-op CPU time from TF1-style RunMetadata (FULL_TRACE) of the inference graph (or the
        training step with --train), summed by op type and by stage scope: this is what shows
        unfused pointwise ops, copies and NMS. The stage scopes come from wrapping the stage
        methods of the model (_SCOPES) in tf.name_scope while the graph is built; nothing else
        of the model is changed.
trace   a TensorBoard profiler trace (tf.profiler.experimental) of a few calls.

Random weights are calibrated like the benchmark (benchmarks/model.py calibrate_frozen_bn)
and MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0 so that there are 100 detections.
Threads: 2 intra-op, 1 inter-op unless --threads / --inter-threads.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import re
import sys
import time
from unittest import mock

from benchmarks.cli import format_table
from benchmarks.model import (batch_signature, block, build_model, calibrate_frozen_bn, make_cfg,
                              make_train_step, setup_threads, synthetic_batch)


def _setup(opts, overrides=()):
    tf = setup_threads(opts.threads, opts.inter_threads)
    cfg = make_cfg(overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                "TEST.BF16_INFERENCE", str(bool(getattr(opts, "bf16", False)))]
                     + list(overrides))
    model = build_model(cfg)
    batch = synthetic_batch(1, tuple(opts.hw), 10, 80, masks=True)
    calibrate_frozen_bn(model, batch["images"], batch["image_sizes"])
    return tf, cfg, model, batch


# ---------------------------------------------------------------------- per-op trace
# (scope name, "Class.method" or "function" of tfmrcnn.modeling): wrapped in tf.name_scope
# while the graph is built, so that op names tell their stage
_SCOPES = [
    ("bottom_up", "ResNet.__call__"),
    ("rpn_head", "RPNHead.__call__"),
    ("rpn_targets", "RPN.label_and_sample_anchors"),
    ("rpn_losses", "RPN.losses"),
    ("rpn_proposals", "RPN.find_top_proposals"),
    ("roi_sampler", "ROISampler.__call__"),
    ("roialign", "ROIPooler.__call__"),
    ("box_head", "FastRCNNConvFCHead.__call__"),
    ("box_inference", "FastRCNNOutputLayers.inference"),
    ("box_losses", "FastRCNNOutputLayers.losses"),
    ("mask_head", "MaskRCNNConvUpsampleHead.__call__"),
    ("mask_targets", "mask_rcnn_targets"),
]
_ABSENT = object()


def _wrap_points(qualified: str):
    """[(owner, attribute)] to replace for "Class.method" (the class, whichever
    tfmrcnn.modeling module defines it) or "function" (every tfmrcnn.modeling module holding
    it, since modules import it by name); [] when no module defines it."""
    import tfmrcnn.modeling.meta_arch  # noqa: F401  imports every module the model uses
    modules = {n: m for n, m in sorted(sys.modules.items())
               if n.startswith("tfmrcnn.modeling.") and m is not None}
    name, _, method = qualified.partition(".")
    for module_name, module in modules.items():
        obj = getattr(module, name, None)
        if obj is None or getattr(obj, "__module__", None) != module_name:
            continue
        if method:
            return [(obj, method)]
        return [(m, name) for m in modules.values() if getattr(m, name, None) is obj]
    return []


@contextlib.contextmanager
def named_scopes(tf):
    """Wrap the stage methods of _SCOPES in tf.name_scope so that op names tell their stage;
    a stage the model no longer has is reported (its ops then count under "other")."""
    undo = []  # (owner, attribute, what its own __dict__ held)
    for scope, qualified in _SCOPES:
        points = _wrap_points(qualified)
        if not points:
            print("# stage scope %r not applied: no tfmrcnn.modeling module defines %s "
                  "(benchmarks/profile.py _SCOPES)" % (scope, qualified))
            continue
        original = getattr(*points[0])

        def wrapped(*a, _fn=original, _scope=scope, **k):
            with tf.name_scope(_scope):
                return _fn(*a, **k)

        functools.update_wrapper(wrapped, original)
        for owner, attribute in points:
            undo.append((owner, attribute, vars(owner).get(attribute, _ABSENT)))
            setattr(owner, attribute, wrapped)
    try:
        yield
    finally:
        for owner, attribute, held in reversed(undo):
            if held is _ABSENT:  # an inherited method: drop the override
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, held)


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
    tf = setup_threads(opts.threads, opts.inter_threads)
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), named_scopes(tf):
        cfg = make_cfg(opts.config_file,
                         overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] + opts.opts)
        with tf.name_scope("model"):  # graph mode rejects tf.Module's "_Conv" as a root scope
            model = build_model(cfg)
        batch = synthetic_batch(opts.batch, tuple(opts.hw), opts.num_gt,
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
    print(format_table([{"scope": k, "op_s": v / 1e6, "share": "%.1f%%" % (100 * v / total_us)}
                        for k, v in by_scope.most_common()]))
    print("\n## by op type (top %d)" % opts.top)
    print(format_table([{"op": k, "count": counts[k], "op_s": v / 1e6,
                         "share": "%.1f%%" % (100 * v / total_us)}
                        for k, v in by_type.most_common(opts.top)]))
    print("\n## slowest nodes (top %d)" % opts.top)
    print(format_table([{"node": k[-90:], "op_ms": v / 1e3}
                        for k, v in by_node.most_common(opts.top)]))


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
        fn_ = make_train_step(model, cfg, batch_signature(batch))
        tensors = {k: tf.constant(v) for k, v in batch.items()}
        call = lambda: fn_(tensors)  # noqa: E731
    else:
        fn_ = model.make_inference_fn()
        call = lambda: fn_(images, sizes)  # noqa: E731
    block(call())
    tf.profiler.experimental.start(opts.logdir)
    for _ in range(opts.repeats):
        block(call())
    tf.profiler.experimental.stop()
    print("trace written to %s (tensorboard --logdir %s, Profile tab)" % (opts.logdir,
                                                                          opts.logdir))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["ops", "trace"])
    p.add_argument("--hw", type=int, nargs=2, default=[800, 1333])
    p.add_argument("--bf16", action="store_true", help="trace: TEST.BF16_INFERENCE")
    p.add_argument("--train", action="store_true", help="the training step")
    p.add_argument("--repeats", type=int, default=3, help="trace: traced calls")
    p.add_argument("--warmup", type=int, default=1, help="ops: untraced runs first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inter-threads", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--logdir", default="/tmp/tfmrcnn_trace")
    p.add_argument("--no-calibrate", action="store_true", help="ops: keep identity FrozenBNs")
    p.add_argument("--config-file", default=None,
                   help="ops: profile this config (e.g. configs/shapes_demo_cpu.yaml) not R50")
    p.add_argument("--batch", type=int, default=1, help="ops: images per step")
    p.add_argument("--num-gt", type=int, default=10, help="ops: GT instances per image")
    p.add_argument("opts", nargs="*", default=[], help="ops: config overrides KEY VALUE ...")
    opts = p.parse_args(argv)
    {"ops": cmd_ops, "trace": cmd_trace}[opts.command](opts)


if __name__ == "__main__":
    main()
