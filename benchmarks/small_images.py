"""Benchmark section `small_images`: evaluation speed on small images, ours next to detectron2.

    python scripts/benchmark.py small_images [--quick]

The demo's images are 192..320 px, where the time per image is dominated by costs that do not
scale with pixels (Python per detection, host copies, per-call overheads). This section times,
in one run and on the SAME PNG files:

  ours   the loop of tfmrcnn-eval (`tfmrcnn.evaluation.inference.inference_on_dataset`: read,
         resize, model, post-process, paste, RLE by `COCOEvaluator.process`), at batch 1 (as
         tfmrcnn-eval runs by default) and batch 4 (``--batch-size 4``);
  d2     detectron2 0.5's DefaultPredictor on each image (read with detection_utils.read_image,
         the model, then COCOEvaluator's ``instances_to_coco_json``: boxes and RLE), and its
         model on lists of 4 images (DefaultPredictor's resize applied to each) for batch 4.

The model: the demo's (configs/shapes_demo_cpu.yaml: R18-FPN with GroupNorm, 3 classes,
MIN_SIZE_TEST 192, MAX_SIZE_TEST 320) at detectron2's R18 widths (STEM/RES2_OUT_CHANNELS 64:
detectron2 builds no narrower R18), with the parity harness's seeded random detectron2 weights
(`parity.run_parity.detectron2_step`: calibrated so that scores spread) converted to ours by
tfmrcnn-convert. Random weights give many more detections per image than the trained demo (up
to 100 instead of 1..4), so the per-detection costs weigh more here than in the demo.

Each side runs in its own worker process (ours: this environment; detectron2:
`benchmarks.reference.reference_python()`), with 2 intra-op threads and 1 inter-op thread, over
the images twice at batch 1: the first pass includes tracing (ours) / the first call (both), the
second is the steady state; then once at batch 4 (already warm: one compiled function serves
every batch and image size). Rows per side and batch: ``first_call_s`` (the first batch of the
first pass, whatever it traced: meaningful at batch 1), ``per_image_s`` (median wall per
image of the second pass: per batch / batch size), ``images_per_s`` (second pass, whole loop), ``first_pass_images_per_s``. Then one
summary row per batch: ``ours_over_d2`` = our images/s / detectron2's (> 1: ours is faster).

Everything lives under output/bench_small_images/<arch> (the images and detectron2's weights
are reused between runs: the parity harness's manifest). This module imports neither
TensorFlow nor PyTorch at the top: the detectron2 worker imports it in .venv-reference.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.common import (ROOT, add_worker_arguments, module_command, print_row,
                               run_worker, worker_env)

BATCHES = (1, 4)
NUM_IMAGES, QUICK_IMAGES = 50, 8
SIZE_RANGE = (192, 320)  # sides of the demo's shapes images
# detectron2 config of the model, relative to the demo config (see the module docstring)
ARCHS = {
    "R18-FPN-GN": {"_BASE_": os.path.join(ROOT, "configs", "shapes_demo_cpu.yaml"),
                   "MODEL": {"RESNETS": {"STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 64}}},
}
SEED = 0


def image_sizes(count: int, seed: int = SEED):
    """`count` seeded (h, w), each side uniform in SIZE_RANGE."""
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
            for _ in range(count)]


def workdir(arch: str, quick: bool) -> str:
    return os.path.join(ROOT, "output", "bench_small_images", arch + ("_quick" if quick else ""))


def prepare(arch: str, quick: bool):
    """Images, detectron2 weights (parity harness) and our converted model.

    Returns (image_dir, d2_dir, model_dir, gt_path)."""
    import yaml

    from parity import images as parity_images
    from parity import run_parity

    work = workdir(arch, quick)
    image_dir, d2_dir = os.path.join(work, "images"), os.path.join(work, "d2")
    model_dir = os.path.join(work, "model")
    os.makedirs(work, exist_ok=True)
    config = os.path.join(work, "d2_model.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(ARCHS[arch], f)
    sizes = image_sizes(QUICK_IMAGES if quick else NUM_IMAGES)
    records = parity_images.make_images(image_dir, sizes, SEED)
    d2_args = argparse.Namespace(config=config, seed=SEED, sizes=sizes, rerun_d2=False,
                                 reference_python=reference_python(), threads=2,
                                 save_resized=False)
    run_parity.detectron2_step(d2_args, d2_dir, image_dir)
    weights = os.path.join(d2_dir, "weights.pkl")
    if not os.path.isfile(os.path.join(model_dir, "model_final.npz")) or \
            os.path.getmtime(weights) > os.path.getmtime(os.path.join(model_dir,
                                                                      "model_final.npz")):
        run_parity.run([sys.executable, "-m", "tfmrcnn.cli.convert", weights, "--d2-config",
                        os.path.join(d2_dir, "d2_config.yaml"), "--output", model_dir],
                       os.path.join(work, "convert.log"))
    info = run_parity._read_json(os.path.join(d2_dir, "shapes.json"))
    cats = parity_images.categories(info["num_classes"])
    ref, _ = run_parity.load_d2_detections(d2_dir, cats)
    gt = parity_images.annotations_from_detections(records, ref, cats, SEED)
    gt_path = parity_images.write_json(os.path.join(work, "gt.json"), gt)
    return image_dir, d2_dir, model_dir, gt_path


def reference_python():
    from benchmarks.reference import reference_python as find
    return find()


# ------------------------------------------------------------------------------ the table
def pass_stats(batch_walls, batch: int, num_images: int):
    """Timing of one pass from the wall seconds of each batch (list, in order).

    Returns {first_call_s, per_image_s (median of batch wall / batch), images_per_s}."""
    total = sum(batch_walls)
    return {"first_call_s": batch_walls[0],
            "per_image_s": statistics.median(batch_walls) / batch,
            "images_per_s": num_images / total if total > 0 else None}


def passes_of(batch: int, batches) -> int:
    """Passes over the images: two for the first batch size (the first one cold), one for the
    others (the worker is warm by then)."""
    return 2 if batch == batches[0] else 1


def side_row(side: str, batch: int, num_images: int, first_pass, second_pass=None, **extra):
    """One row: the first call of the first pass, the steady state of the second (of the only
    pass when there is one: a batch size measured after another, warm)."""
    second_pass = first_pass if second_pass is None else second_pass
    first, second = pass_stats(first_pass, batch, num_images), pass_stats(second_pass, batch,
                                                                          num_images)
    return {"side": side, "batch": batch, "images": num_images,
            "first_call_s": first["first_call_s"], "per_image_s": second["per_image_s"],
            "images_per_s": second["images_per_s"],
            "first_pass_images_per_s": first["images_per_s"], **extra}


def summary_rows(rows):
    """Per batch size measured by both sides: ours_over_d2 = our images/s / detectron2's."""
    by_key = {(r.get("side"), r.get("batch")): r for r in rows if r.get("images_per_s")}
    out = []
    for batch in sorted({b for s, b in by_key if s == "ours"}):
        ours, d2 = by_key.get(("ours", batch)), by_key.get(("d2", batch))
        if ours is None or d2 is None:
            continue
        out.append({"side": "ours/d2", "batch": batch,
                    "ours_images_per_s": ours["images_per_s"],
                    "d2_images_per_s": d2["images_per_s"],
                    "ours_over_d2": ours["images_per_s"] / d2["images_per_s"]})
    return out


# ------------------------------------------------------------------------------ driver
def run(args):
    quick = getattr(args, "quick", False)
    python = reference_python()
    rows = []
    for arch in ARCHS:
        if python is None:
            rows.append({"case": arch, "note": "not measured: no PyTorch environment (run "
                         "`bash scripts/setup_reference.sh` or set TFMRCNN_REFERENCE_PYTHON)"})
            continue
        image_dir, d2_dir, model_dir, gt_path = prepare(arch, quick)
        common = ["--images", image_dir, "--batches", ",".join(map(str, BATCHES))]
        side_rows = run_worker(module_command("small_images", "ours", "--model", model_dir,
                                              "--gt", gt_path, *common),
                               "ours", env=worker_env())
        side_rows += run_worker(module_command(
            "small_images", "d2", "--config", os.path.join(d2_dir, "d2_config.yaml"),
            "--weights", os.path.join(d2_dir, "weights.pkl"), *common, python=python),
            "d2", env=worker_env(PYTHONWARNINGS="ignore"))
        rows += [dict(case=arch, **r) for r in side_rows + summary_rows(side_rows)]
    return rows


# ------------------------------------------------------------------------------ ours
class _TimedEvaluator:
    """COCOEvaluator's process (RLE included) with the wall time at each batch's end."""

    def __init__(self, evaluator):
        self.evaluator, self.stamps = evaluator, []

    def reset(self):
        self.evaluator.reset()
        self.stamps = [time.perf_counter()]

    def process(self, inputs, outputs):
        self.evaluator.process(inputs, outputs)
        self.stamps.append(time.perf_counter())

    def evaluate(self):
        return {}  # scoring is not timed here

    def batch_walls(self):
        return list(np.diff(self.stamps))


def ours_worker(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    from tfmrcnn.checkpoint.model_dir import load_model
    from tfmrcnn.evaluation.coco_evaluation import COCOEvaluator
    from tfmrcnn.evaluation.inference import inference_on_dataset

    cfg, model = load_model(args.model)
    # one compiled function for every pass, as one tfmrcnn-eval process has
    fn = model.make_inference_fn()
    dataset = (args.gt, args.images)
    evaluator = _TimedEvaluator(COCOEvaluator(dataset, None, tasks=("bbox", "segm"),
                                              verbose=False))
    num_images = len(evaluator.evaluator.coco_gt.getImgIds())
    for batch in args.batches:
        passes = []
        for _ in range(passes_of(batch, args.batches)):
            inference_on_dataset(fn, dataset, cfg, evaluator, batch_size=batch, progress=False)
            passes.append(evaluator.batch_walls())
        detections = sum(len(p["instances"]) for p in evaluator.evaluator._predictions)
        print_row(**side_row("ours", batch, num_images, *passes, detections=detections,
                             tracings=fn.experimental_get_tracing_count()))


# ------------------------------------------------------------------------------ detectron2
def d2_worker(args):
    import torch
    from detectron2.config import get_cfg
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.inter_threads)
    cfg = get_cfg()
    cfg.merge_from_file(args.config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = args.weights
    predictor = DefaultPredictor(cfg)
    names = sorted(n for n in os.listdir(args.images) if n.endswith(".png"))
    paths = [os.path.join(args.images, n) for n in names]

    def one_batch(chunk, first_id):
        images = [read_image(p, format="BGR") for p in chunk]
        with torch.no_grad():
            if len(images) == 1:  # DefaultPredictor itself
                outputs = [predictor(images[0])]
            else:  # its preprocessing for each image, one model call
                inputs = []
                for im in images:
                    resized = predictor.aug.get_transform(im).apply_image(im)
                    inputs.append({"image": torch.as_tensor(
                        resized.astype("float32").transpose(2, 0, 1)),
                        "height": im.shape[0], "width": im.shape[1]})
                outputs = predictor.model(inputs)
        return [instances_to_coco_json(o["instances"].to("cpu"), first_id + i)
                for i, o in enumerate(outputs)]

    for batch in args.batches:
        passes = []
        for _ in range(passes_of(batch, args.batches)):
            walls, detections = [], 0
            for start in range(0, len(paths), batch):
                t0 = time.perf_counter()
                detections += sum(map(len, one_batch(paths[start:start + batch], start)))
                walls.append(time.perf_counter() - t0)
            passes.append(walls)
        print_row(**side_row("d2", batch, len(paths), *passes, detections=detections))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="side", required=True)
    ours = add_worker_arguments(sub.add_parser("ours"))
    ours.add_argument("--model", required=True)
    ours.add_argument("--gt", required=True)
    d2 = add_worker_arguments(sub.add_parser("d2"))
    d2.add_argument("--config", required=True)
    d2.add_argument("--weights", required=True)
    for p in (ours, d2):
        p.add_argument("--images", required=True)
        p.add_argument("--batches", default="1", type=lambda s: [int(v) for v in s.split(",")])
    args = parser.parse_args(argv)
    {"ours": ours_worker, "d2": d2_worker}[args.side](args)


if __name__ == "__main__":
    main()
