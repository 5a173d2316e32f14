"""Evaluation during and after training: every DATASETS.TEST set scored with COCOEvaluator,
and the AP table printed at the end (detectron2's DefaultTrainer.test / print_csv_format)."""
from __future__ import annotations

import logging
import os

__all__ = ["make_eval_fn", "print_ap_table"]

logger = logging.getLogger(__name__)

AP_TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
EVAL_LOG_PERIOD_S = 5.0  # a progress line with ETA this often during evaluation in training


def make_eval_fn(cfg, model, rank):
    """(iteration) -> {dataset: metrics} on rank 0; runs on every rank (collective).

    With one test set the metrics are returned as ``{task: {...}}``; with several, keyed
    ``"<dataset>/<task>"``. Results go to OUTPUT_DIR/inference/<dataset_tag(dataset)>/.
    """
    from tfmrcnn.data.catalog import dataset_tag
    from tfmrcnn.evaluation.coco_evaluation import COCOEvaluator
    from tfmrcnn.evaluation.inference import inference_on_dataset

    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)

    def eval_fn(iteration):
        results = {}
        for name in cfg.DATASETS.TEST:
            out = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_tag(name))
            evaluator = COCOEvaluator(name, out, tasks=tasks, verbose=(rank == 0))
            metrics = inference_on_dataset(model, name, cfg, evaluator, progress=False,
                                           log_every_s=EVAL_LOG_PERIOD_S)
            if rank == 0:
                logger.info("Evaluation on %s at iteration %d: %s", name, iteration,
                            {t: round(metrics[t].get("AP", float("nan")), 3)
                             for t in tasks if t in metrics})
                results[name] = metrics
        if len(results) == 1:
            return next(iter(results.values()))
        return {f"{name}/{task}": v for name, m in results.items() for task, v in m.items()}

    return eval_fn


def print_ap_table(metrics) -> None:
    """AP, AP50, AP75, APs, APm, APl per task (the evaluator also logs per-category tables)."""
    lines = ["| task | " + " | ".join(AP_TABLE_KEYS) + " |",
             "|" + "---|" * (len(AP_TABLE_KEYS) + 1)]
    for task, values in metrics.items():
        if isinstance(values, dict) and "AP" in values:
            lines.append(f"| {task} | " + " | ".join(f"{values.get(k, float('nan')):.3f}"
                                                    for k in AP_TABLE_KEYS) + " |")
    print("\n".join(lines), flush=True)
