"""tfmrcnn-eval: COCO bbox / segm evaluation of a trained or converted model.

    tfmrcnn-eval --model DIR --dataset coco_2017_val [--output OUT] [--batch-size 2] [KEY=VALUE ...]
    tfmrcnn-eval --model DIR --json instances.json --images IMAGE_DIR
    horovodrun -np 8 -H localhost:8 tfmrcnn-eval --model DIR --dataset coco_2017_val

DIR holds config.yaml and model_final.npz (as written by training or tfmrcnn-convert). The
12-number COCO tables are printed; OUT (default DIR/inference/<dataset>) receives
coco_instances_results.json and metrics.json. Under a multi-process launcher each process
evaluates every size-th image and rank 0 merges and scores (OUT must be shared by all ranks).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    from tfmrcnn.cli.score_threshold import add_score_threshold

    p = argparse.ArgumentParser(prog="tfmrcnn-eval",
                                description="Evaluate a tfmrcnn model on a COCO-format dataset.")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="directory with config.yaml and model_final.npz")
    p.add_argument("--weights", metavar="FILE",
                   help="weights file to load instead of DIR/model_final.npz")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--dataset", metavar="NAME",
                      help="registered dataset name or coco:JSON:IMAGES (default: the config's "
                           "DATASETS.TEST[0])")
    data.add_argument("--json", metavar="J", help="COCO instances json (use with --images)")
    p.add_argument("--images", metavar="D", help="image directory of --json")
    p.add_argument("--output", "-o", metavar="OUT",
                   help="results directory (default: DIR/inference/<dataset>)")
    p.add_argument("--batch-size", type=int, default=1, help="images per model call and process")
    p.add_argument("--no-per-category", action="store_true", help="skip the AP-<class> entries")
    add_score_threshold(p, default=None)
    p.add_argument("--bn-batch-stats", action="store_true",
                   help="diagnostic: batch norms normalise with each test batch's own statistics "
                        "instead of their moving averages (a large AP gain means the moving "
                        "averages do not match training: batch too small for BN, use GN)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. INPUT.MIN_SIZE_TEST=640")
    return p


def _setup_horovod(pin_cpu_cores: bool = False):
    """(rank, size): Horovod is initialised only under a multi-process launcher."""
    from tfmrcnn.distributed import init_horovod, launcher_world_size, pin_devices

    if (launcher_world_size() or 1) <= 1:
        pin_devices(0)
        return 0, 1
    hvd = init_horovod()
    pin_devices(hvd.local_rank(), local_size=hvd.local_size(), pin_cpu_cores=pin_cpu_cores)
    return hvd.rank(), hvd.size()


def _dataset_and_output(args, cfg):
    if args.json:
        if not args.images:
            raise SystemExit("tfmrcnn-eval: error: --json needs --images")
        dataset = (args.json, args.images)
        tag = os.path.splitext(os.path.basename(args.json))[0]
    else:
        from tfmrcnn.data.catalog import dataset_tag

        dataset = args.dataset or cfg.DATASETS.TEST[0]
        tag = dataset_tag(dataset)  # coco:JSON:IMAGES -> the json's stem
    output = args.output or os.path.join(args.model, "inference", tag)
    return dataset, output


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (utils/launch.py)
    # imported after parsing so that --help stays instant
    from tfmrcnn.cli.score_threshold import describe_score_threshold, with_score_threshold
    from tfmrcnn.config import ConfigError, load_config

    config_path = os.path.join(args.model, "config.yaml")
    weights = args.weights or os.path.join(args.model, "model_final.npz")
    for path in (config_path, weights):
        if not os.path.isfile(path):
            print(f"tfmrcnn-eval: error: {path} not found", file=sys.stderr)
            return 1
    try:
        cfg = load_config(config_path, with_score_threshold(args.score_threshold, args.overrides))
    except ConfigError as e:
        print(f"tfmrcnn-eval: error: {e}", file=sys.stderr)
        return 1
    dataset, output = _dataset_and_output(args, cfg)

    rank, _ = _setup_horovod(cfg.TRAINER.PIN_CPU_CORES)
    from tfmrcnn.checkpoint.weights_io import WeightsError, load_weights
    from tfmrcnn.evaluation.coco_evaluation import METRIC_NAMES, COCOEvaluator
    from tfmrcnn.utils.file_io import to_jsonable
    from tfmrcnn.evaluation.inference import inference_on_dataset
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    model = GeneralizedRCNN(cfg)
    try:
        report = load_weights(model, weights)
    except WeightsError as e:  # unreadable, truncated, non-finite or not this model's
        print(f"tfmrcnn-eval: error: {e}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"Loaded {weights}" + (f"\n{report.summary()}" if report.missing else ""))
        print(describe_score_threshold(cfg, args.score_threshold, args.overrides))
    if args.bn_batch_stats:
        from tfmrcnn.modeling.norm import use_batch_statistics_at_test

        switched = use_batch_statistics_at_test(model)
        if switched == 0:
            print("tfmrcnn-eval: error: --bn-batch-stats: the model has no BN/SyncBN layer",
                  file=sys.stderr)
            return 1
        if rank == 0:
            print(f"{switched} batch norm layers use each test batch's statistics "
                  f"(batch size {args.batch_size})")
    from tfmrcnn.data.validate import checked_evaluation_records

    try:  # every image and annotation checked before inference (tfmrcnn.data.validate)
        records = checked_evaluation_records(cfg, dataset)
    except (OSError, ValueError) as e:
        print(f"tfmrcnn-eval: error: {e}", file=sys.stderr)
        return 1
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    evaluator = COCOEvaluator(dataset, output, tasks=tasks, verbose=(rank == 0),
                              per_category=not args.no_per_category)
    from tfmrcnn.checkpoint.model_dir import read_classes
    from tfmrcnn.data.class_metadata import classes_mismatch

    try:  # results carry the json's category ids: its categories must be the model's classes
        gt = evaluator.coco_gt
        problem = classes_mismatch(read_classes(args.model), gt.loadCats(gt.getCatIds()))
    except ValueError as e:  # an unreadable DIR/classes.json
        problem = str(e)
    if problem:
        print(f"tfmrcnn-eval: error: {args.model} on {dataset}: {problem}", file=sys.stderr)
        return 1
    metrics = inference_on_dataset(model, records, cfg, evaluator, batch_size=args.batch_size)
    if rank == 0:
        summary = {task: {k: metrics[task][k] for k in METRIC_NAMES}
                   for task in tasks if task in metrics}
        print(json.dumps(to_jsonable({"metrics": summary, "timing": metrics["timing"]}), indent=2))
        print(f"Results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
