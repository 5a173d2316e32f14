"""COCO bbox / segm evaluation with pycocotools, detectron2's COCOEvaluator conventions.

Conventions (detectron2 ``evaluation/coco_evaluation.py``)
---------------------------------------------------------
- A result is ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation"}``
  in original-image pixels; ``category_id`` is the id in the ground-truth json of the
  contiguous label, which numbers that json's categories sorted by id (as the dataset loader
  does). The json's own categories are used whatever name the data set was reached by, never
  a fixed table from metadata (a custom set behind ``coco_2017_val`` keeps its own ids); masks
  are compressed RLE of the column-major uint8 mask with ``counts`` decoded to str so the
  list is json-serialisable.
- segm is scored without the ``bbox`` field, so pycocotools takes the instance area (which
  decides small/medium/large) from the mask, not from the box.
- Only the images that were evaluated are scored (``params.imgIds``).
- Metrics are COCOeval's ``stats[0:6]`` x 100 named AP, AP50, AP75, APs, APm, APl (-1, i.e. no
  ground truth in that range, becomes NaN, written as null), plus ``AP-<class>`` per category:
  the mean of ``precision[:, :, k, area=all, maxDets=100]`` over entries > -1.
- No detections at all is not an error: the result set is empty and AP is 0 where there is
  ground truth (pycocotools' ``loadRes`` would crash on an empty list).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfmrcnn.data.coco import category_maps
from tfmrcnn.distributed import barrier, world
from tfmrcnn.evaluation.rle import encode_masks, encode_pasted_masks
from tfmrcnn.utils.file_io import read_json, write_json

__all__ = [
    "encode_masks", "instances_to_coco_json", "load_coco_gt", "contiguous_to_dataset_id",
    "evaluate_predictions_on_coco", "derive_coco_results", "evaluate_coco_results",
    "COCOEvaluator", "METRIC_NAMES",
]

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "metrics.json"
SHARD_DIR = ".eval_shards"


# ------------------------------------------------------------------------------ conversion
def instances_to_coco_json(instances, image_id, label_to_category_id):
    """One image's post-processed detections -> list of COCO result dicts.

    Args:
        instances: dict with boxes (D, 4) xyxy original pixels, scores (D,), classes (D,)
            contiguous labels, optional masks (D, H, W) bool pasted into those boxes (from
            `detector_postprocess`: only the boxes' paste windows are read when encoding; its
            mask_windows (D, 4) are those windows, computed here when absent).
        image_id: the dataset's image id.
        label_to_category_id: sequence or dict, contiguous label -> dataset category id.
    """
    boxes = np.asarray(instances["boxes"], np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    xywh = boxes.copy()
    xywh[:, 2:] -= boxes[:, :2]                                        # (D, 4) xywh
    scores = np.asarray(instances["scores"], np.float32).tolist()
    classes = np.asarray(instances["classes"]).astype(np.int64).tolist()
    rles = None
    if instances.get("masks") is not None:
        windows = instances.get("mask_windows")
        rles = (encode_pasted_masks(instances["masks"], boxes) if windows is None
                else encode_masks(instances["masks"], windows))
    results = []
    for k, box in enumerate(xywh.tolist()):
        result = {"image_id": image_id, "category_id": int(label_to_category_id[classes[k]]),
                  "bbox": box, "score": scores[k]}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


# ------------------------------------------------------------------------------ ground truth
def load_coco_gt(json_file):
    """pycocotools COCO of a json file, without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(json_file)


def contiguous_to_dataset_id(coco_gt):
    """List: contiguous label -> category id of the json (its categories sorted by id)."""
    _, _, to_dataset = category_maps(coco_gt.loadCats(coco_gt.getCatIds()))
    return [to_dataset[c] for c in range(len(to_dataset))]


def _class_names(coco_gt, label_to_category_id):
    cats = coco_gt.loadCats(list(label_to_category_id))
    return [c["name"] for c in cats]


# ------------------------------------------------------------------------------ scoring
def _load_results(coco_gt, results):
    """COCO object of the results; an empty list gives an empty result set instead of a crash."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate_predictions_on_coco(coco_gt, results, iou_type, img_ids=None, verbose=True):
    """Run COCOeval for one iou_type ("bbox" or "segm"); prints the 12-number table if verbose.

    results are not modified (pycocotools writes into the dicts it loads, so it gets copies).
    """
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        results = [dict(r) for r in results]
    coco_dt = _load_results(coco_gt, results)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    if img_ids is not None:
        coco_eval.params.imgIds = sorted(set(int(i) for i in img_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    if verbose:
        print(f"Evaluation results for {iou_type}:")
        coco_eval.summarize()
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval.summarize()
    return coco_eval


def derive_coco_results(coco_eval, class_names=None):
    """{AP, AP50, AP75, APs, APm, APl[, AP-<class>...]} in percent from a finished COCOeval."""
    metrics = {name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
               for i, name in enumerate(METRIC_NAMES)}
    if class_names:
        # precision: (iou thresholds, recall thresholds, classes, area ranges, max dets)
        precision = coco_eval.eval["precision"]
        assert len(class_names) == precision.shape[2], (len(class_names), precision.shape)
        for k, name in enumerate(class_names):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            metrics[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return metrics


def _format_table(metrics):
    names = [k for k in METRIC_NAMES if k in metrics]
    head = "| " + " | ".join(f"{n:>7}" for n in names) + " |"
    row = "| " + " | ".join(f"{metrics[n]:7.3f}" for n in names) + " |"
    return "\n".join([head, "|" + "|".join(["-" * 9] * len(names)) + "|", row])


def _format_per_category(metrics, columns=3):
    pairs = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP-")]
    lines = []
    for i in range(0, len(pairs), columns):
        lines.append(" | ".join(f"{name:<14} {ap:6.3f}" for name, ap in pairs[i:i + columns]))
    return "\n".join(lines)


def evaluate_coco_results(coco_gt, results, iou_types=("bbox", "segm"), img_ids=None,
                          class_names=None, output_dir=None, verbose=True):
    """Score a results list for each iou type; write metrics.json / results json if output_dir.

    Returns {iou_type: metrics dict}. segm is skipped when results exist but none has a mask.
    """
    if not results:
        logger.warning("No predictions from the model: AP is 0 wherever there is ground truth")
    if results and not any("segmentation" in r for r in results):
        iou_types = [t for t in iou_types if t != "segm"]
    if output_dir:
        write_json(os.path.join(output_dir, RESULTS_FILE), results, sanitize=False)
    all_metrics = {}
    for iou_type in iou_types:
        coco_eval = evaluate_predictions_on_coco(coco_gt, results, iou_type, img_ids, verbose)
        all_metrics[iou_type] = derive_coco_results(coco_eval, class_names)
        if verbose:
            print(f"{iou_type} AP:\n{_format_table(all_metrics[iou_type])}")
            if class_names:
                print(f"Per-category {iou_type} AP:\n"
                      f"{_format_per_category(all_metrics[iou_type])}")
    if output_dir:
        write_json(os.path.join(output_dir, METRICS_FILE), all_metrics, indent=2)
    return all_metrics


# ------------------------------------------------------------------------------ evaluator
class COCOEvaluator:
    """Collects per-image detections, merges them across Horovod ranks and scores them.

    Usage::

        evaluator = COCOEvaluator("coco_2017_val", output_dir)
        evaluator.reset()
        evaluator.process(inputs, outputs)    # per batch; inputs carry image_id/height/width
        metrics = evaluator.evaluate()        # rank 0: {"bbox": {...}, "segm": {...}}; others: {}

    Distributed (Horovod initialised, size > 1, distributed=True): each rank writes its results
    to ``output_dir/.eval_shards/rank{r}.json``, a barrier orders the writes before rank 0's
    reads, rank 0 merges and scores. output_dir must be visible to every rank. Results are
    ordered by image id (each image keeping its detection order) before scoring, so the merged
    set is identical to a single-process run over the same images.
    """

    def __init__(self, dataset, output_dir=None, distributed=True, tasks=("bbox", "segm"),
                 per_category=True, verbose=True):
        """
        Args:
            dataset: a registered dataset name, or a (json_file, image_root) pair.
            output_dir: where results / metrics json are written (None: nothing written).
            distributed: merge across Horovod ranks when Horovod is initialised.
            tasks: iou types to score; "segm" is dropped automatically without masks.
            per_category: add AP-<class> entries.
        """
        if isinstance(dataset, str):
            from tfmrcnn.data.catalog import MetadataCatalog  # written concurrently; lazy

            json_file = MetadataCatalog.get(dataset).json_file
        else:
            json_file, _image_root = dataset
        self._json_file = json_file
        self._coco_gt = None
        self._label_to_category_id = None
        self._output_dir = output_dir
        self._distributed = distributed
        self._tasks = tuple(tasks)
        self._per_category = per_category
        self._verbose = verbose
        self.eval_time = 0.0
        self.reset()

    @property
    def coco_gt(self):
        if self._coco_gt is None:
            self._coco_gt = load_coco_gt(self._json_file)
        return self._coco_gt

    @property
    def label_to_category_id(self):
        if self._label_to_category_id is None:
            self._label_to_category_id = contiguous_to_dataset_id(self.coco_gt)
        return self._label_to_category_id

    def reset(self):
        # [{"image_id": id, "size": [h, w] of the input, "instances": [result dicts]}]
        self._predictions = []

    def process(self, inputs, outputs):
        """inputs: dataset dicts (image_id, height, width); outputs: postprocessed dicts."""
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            if isinstance(image_id, np.integer):     # json cannot write numpy integers
                image_id = int(image_id)
            self._predictions.append({
                "image_id": image_id, "size": [int(inp["height"]), int(inp["width"])],
                "instances": instances_to_coco_json(out, image_id, self.label_to_category_id)})

    def _score_in_input_frame(self, predictions):
        """Give the ground truth the image sizes the detections were made in.

        They differ from the json's only for images whose json size is wrong and which the
        data set check let through under DATASETS.TRUST_IMAGE_SIZE; pycocotools rasterises
        ground-truth polygons at the json's size, so it gets the file's.
        """
        for p in predictions:
            img = self.coco_gt.imgs.get(p["image_id"])
            size = p.get("size")
            if img is not None and size and [img["height"], img["width"]] != list(size):
                img["height"], img["width"] = int(size[0]), int(size[1])

    def _gather(self):
        """All ranks' predictions on rank 0 (None elsewhere), through shard files."""
        rank, size = world()
        if not self._distributed or size == 1:
            return self._predictions
        if not self._output_dir:
            raise ValueError("distributed evaluation needs an output_dir shared by all ranks")
        shard_dir = os.path.join(self._output_dir, SHARD_DIR)
        write_json(os.path.join(shard_dir, f"rank{rank}.json"), self._predictions,
                          sanitize=False)
        barrier("tfmrcnn_eval_shards_written")
        merged = None
        if rank == 0:
            merged = []
            for r in range(size):
                path = os.path.join(shard_dir, f"rank{r}.json")
                merged.extend(read_json(path))
                os.remove(path)
        # keeps a fast rank from overwriting its shard (next evaluation) before rank 0 read it
        barrier("tfmrcnn_eval_shards_read")
        return merged

    def evaluate(self, img_ids=None):
        """Score the collected predictions. Returns metrics on rank 0, {} on other ranks."""
        predictions = self._gather()
        if predictions is None:
            return {}
        start = time.perf_counter()
        self._score_in_input_frame(predictions)
        by_image = {}
        for p in predictions:
            by_image.setdefault(p["image_id"], p["instances"])    # first occurrence wins
        image_ids = sorted(by_image)
        results = [r for i in image_ids for r in by_image[i]]
        if img_ids is None and image_ids:
            img_ids = image_ids            # score the evaluated images only
        class_names = (_class_names(self.coco_gt, self.label_to_category_id)
                       if self._per_category else None)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
        metrics = evaluate_coco_results(self.coco_gt, results, self._tasks, img_ids, class_names,
                                        self._output_dir, self._verbose)
        self.eval_time = time.perf_counter() - start
        return metrics
