"""tfmrcnn-train: train Mask R-CNN with Horovod (one process per GPU), then evaluate.

    tfmrcnn-train --config-file configs/mask_rcnn_R_50_FPN_1x.yaml [--resume|--no-resume]
                  [--eval-only] [KEY=VALUE ...]

Runs as a single process without a launcher, or under ``horovodrun -np N ...`` /
``mpirun -np N ...`` (scripts/train_8gpu.sh). By default a run resumes from the newest readable
checkpoint in OUTPUT_DIR when there is one (``--no-resume`` starts over from MODEL.WEIGHTS).
At the end (and every TEST.EVAL_PERIOD) it evaluates on DATASETS.TEST, prints the AP table and
writes pictures of a few validation predictions to OUTPUT_DIR/vis/*.png (evaluation:
tfmrcnn.evaluation.testing; pictures: tfmrcnn.utils.visualize).

OUTPUT_DIR receives: config.yaml (the resolved config, for tfmrcnn-eval), log.txt,
model_*.npz + *.train_state.npz + last_checkpoint, TensorBoard events, inference/<dataset>/.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

__all__ = ["build_parser", "main"]

logger = logging.getLogger("tfmrcnn.cli.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfmrcnn-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", required=True, metavar="FILE",
                   help="YAML config (detectron2 keys; _BASE_ supported)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=True,
                       help="continue from the newest checkpoint in OUTPUT_DIR if any (default)")
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="ignore checkpoints in OUTPUT_DIR; start from MODEL.WEIGHTS")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate (newest checkpoint of OUTPUT_DIR, else MODEL.WEIGHTS)")
    p.add_argument("--verbose", action="store_true",
                   help="also TensorFlow's start-up messages and warnings, and the full config "
                        "in the log (it is always in OUTPUT_DIR/config.yaml)")
    p.add_argument("--num-vis", type=int, default=8,
                   help="validation images drawn into OUTPUT_DIR/vis at the end (0: none)")
    p.add_argument("opts", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. SOLVER.BASE_LR=0.01 OUTPUT_DIR=out (may be "
                        "mixed with the options above; write negative numbers as KEY=-1)")
    return p


def train_dataset_dicts(cfg):
    from tfmrcnn.data.catalog import DatasetCatalog

    dicts = []
    for name in cfg.DATASETS.TRAIN:
        dicts.extend(DatasetCatalog.get(name))
    return dicts


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (utils/launch.py)
    from tfmrcnn.engine.logger import quiet_tensorflow

    quiet_tensorflow(args.verbose)  # before TensorFlow is imported
    opts = list(args.opts)
    from tfmrcnn.config import ConfigError, load_config
    from tfmrcnn.data.catalog import absolute_dataset_names

    try:
        cfg = load_config(args.config_file, opts)
        cfg = absolute_dataset_names(cfg)  # coco:JSON:IMAGES names, for OUTPUT_DIR/config.yaml
    except (ConfigError, ValueError) as e:
        print(f"tfmrcnn-train: error: {e}", file=sys.stderr)
        return 2

    from tfmrcnn.distributed import Watchdog, init_horovod, pin_devices
    from tfmrcnn.modeling.norm import uses_sync_bn

    hvd = init_horovod(sync_bn=uses_sync_bn(cfg))
    device = pin_devices(hvd.local_rank(), cfg.TRAINER.NUM_THREADS, hvd.local_size(),
                         cfg.TRAINER.PIN_CPU_CORES)
    rank, size = hvd.rank(), hvd.size()

    from tfmrcnn.engine.logger import setup_logger
    from tfmrcnn.engine.solver import auto_scale_workers

    cfg = auto_scale_workers(cfg, size)
    setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info("rank %d/%d (local rank %d) on %s", rank, size, hvd.local_rank(), device)
    if rank == 0:
        from tfmrcnn.checkpoint.model_dir import write_config

        from tfmrcnn.engine.logger import config_summary

        write_config(cfg.OUTPUT_DIR, cfg.dump())
        logger.info("Run:\n%s", config_summary(cfg))
        if args.verbose:
            logger.info("Config:\n%s", cfg.dump())

    from tfmrcnn.checkpoint.model_dir import write_classes
    from tfmrcnn.data.class_metadata import training_classes
    from tfmrcnn.data.validate import checked_evaluation_records, checked_training_records

    try:  # the data sets are checked before any long work (tfmrcnn.data.validate)
        dicts = [] if args.eval_only else checked_training_records(cfg, train_dataset_dicts(cfg))
        classes = None if args.eval_only else training_classes(cfg)  # after the jsons loaded
        if rank == 0 and classes is not None:  # names and ids travel with the model folder
            write_classes(cfg.OUTPUT_DIR, classes)
        for name in cfg.DATASETS.TEST:
            checked_evaluation_records(cfg, name)
    except (OSError, ValueError) as e:
        logger.error("%s", e)
        return 1

    import tensorflow as tf

    from tfmrcnn.data.pipeline import build_train_dataset
    from tfmrcnn.checkpoint.weights_io import WeightsError
    from tfmrcnn.engine.trainer import Trainer
    from tfmrcnn.evaluation.testing import make_eval_fn, print_ap_table
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN
    from tfmrcnn.utils.visualize import make_train_vis_fn, write_val_pictures

    if cfg.SEED >= 0:
        tf.random.set_seed(cfg.SEED)        # initial weights; rank 0's are broadcast anyway
    model = GeneralizedRCNN(cfg)
    eval_fn = make_eval_fn(cfg, model, rank) if cfg.DATASETS.TEST else None
    vis_fn = make_train_vis_fn(cfg, model) if cfg.TRAINER.VIS_PERIOD > 0 and rank == 0 else None

    def data_fn(start_position, seed):
        return build_train_dataset(cfg, dicts, rank, size, seed, start_position=start_position)

    trainer = Trainer(cfg, model, hvd, data_fn, eval_fn=eval_fn, vis_fn=vis_fn,
                      watchdog=Watchdog.from_env(rank))
    try:
        trainer.resume_or_load(resume=args.resume or args.eval_only)
    except WeightsError as e:  # MODEL.WEIGHTS unreadable, truncated, non-finite, or mismatched
        logger.error("%s", e)
        return 2
    if args.eval_only:
        trainer.broadcast_state()
    else:
        try:
            trainer.train()
        except FloatingPointError as e:
            logger.error("%s", e)
            return 3
    metrics = trainer.evaluate(int(trainer.iteration.numpy())) if eval_fn else None
    if rank == 0:
        if metrics:
            print_ap_table(metrics)
        if cfg.DATASETS.TEST and args.num_vis > 0:
            write_val_pictures(cfg, model, args.num_vis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
