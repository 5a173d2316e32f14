"""Run a detector over a dataset (sharded over Horovod ranks) and evaluate it.

Data flow per batch: read BGR uint8 images (a small thread pool reads and resizes the next
batches while the model runs) -> ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) + pad to
SIZE_DIVISIBILITY -> model inference -> `detector_postprocess` to the original image ->
`evaluator.process`. Image i of the dataset goes to rank ``i % size``.

Timing: ``inference_s`` is the model call until its outputs are on the host, ``postprocess_s``
the rescale + mask paste + conversion to COCO results (RLE), ``data_s`` the time spent waiting
for input, ``coco_eval_s`` the scoring (rank 0, after the merge).
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import time

import numpy as np

from tfmrcnn.data.image_io import read_image
from tfmrcnn.data.resize import prepare_eval_images
from tfmrcnn.distributed import world
from tfmrcnn.inference.postprocess import detector_postprocess, unbatch_outputs

__all__ = ["inference_on_dataset", "get_dataset_dicts", "read_image_bgr", "inference_callable"]

logger = logging.getLogger(__name__)

_PREFETCH_BATCHES = 2


def get_dataset_dicts(dataset):
    """Dataset dicts of a registered name, a (json_file, image_root) pair, or a list of dicts."""
    if isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0], dict):
        return list(dataset)
    if isinstance(dataset, str):
        from tfmrcnn.data.catalog import DatasetCatalog

        return DatasetCatalog.get(dataset)
    from tfmrcnn.data.coco import load_coco_json

    json_file, image_root = dataset
    return load_coco_json(json_file, image_root)


def read_image_bgr(path):
    """(H, W, 3) uint8 BGR; raises ImageReadError (an OSError) if the file cannot be read whole
    (evaluation must not skip images). The one strict decoder: tfmrcnn.data.image_io."""
    return read_image(path)


def inference_callable(model):
    """The function (images, image_sizes) -> outputs of a model: compiled when it offers one."""
    if hasattr(model, "make_inference_fn"):
        return model.make_inference_fn()
    if hasattr(model, "inference"):
        return model.inference
    return model


def _load_batch(records, cfg):
    """(records, images, image_sizes). Each record gets the decoded image's height/width:
    detections are rescaled to the image actually read (the data set check makes it equal
    the json's unless DATASETS.TRUST_IMAGE_SIZE, where the file's size is the one to use)."""
    images = [read_image_bgr(r["file_name"]) for r in records]
    records = [dict(r, height=im.shape[0], width=im.shape[1]) for r, im in zip(records, images)]
    if cfg.INPUT.FORMAT == "RGB":
        images = [im[:, :, ::-1] for im in images]
    return (records, *prepare_eval_images(images, cfg.INPUT.MIN_SIZE_TEST,
                                          cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.SIZE_DIVISIBILITY))


def _batches(records, batch_size, cfg, executor):
    """Yield _load_batch's (records, images, image_sizes), loading up to _PREFETCH_BATCHES
    ahead."""
    chunks = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    pending = collections.deque()
    for chunk in chunks:
        pending.append(executor.submit(_load_batch, chunk, cfg))
        if len(pending) > _PREFETCH_BATCHES:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _to_host(outputs):
    return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in outputs.items()}


def inference_on_dataset(model, dataset, cfg, evaluator, batch_size=1, progress=True):
    """Run the model on this rank's shard of the dataset and evaluate.

    Args:
        model: a GeneralizedRCNN (uses make_inference_fn() or inference()), or any callable
            (images (B, Hp, Wp, 3) float32 BGR, image_sizes (B, 2) int32) -> model outputs.
        dataset: registered name, (json_file, image_root), or a list of dataset dicts.
        cfg: config (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST, SIZE_DIVISIBILITY, FORMAT).
        evaluator: e.g. COCOEvaluator; reset() here, evaluate() at the end on every rank.
        batch_size: images per model call on each rank.
    Returns:
        rank 0: the evaluator's metrics plus "timing" {data_s, inference_s, postprocess_s,
        coco_eval_s, num_images, images_per_s}; other ranks: {}.
    """
    from tqdm import tqdm

    rank, size = world()
    dicts = get_dataset_dicts(dataset)
    shard = dicts[rank::size]
    fn = inference_callable(model)
    evaluator.reset()
    timing = collections.Counter()
    start = time.perf_counter()
    bar = tqdm(total=len(shard), desc="inference", disable=(rank != 0 or not progress),
               unit="img", dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        t0 = time.perf_counter()
        for records, images, image_sizes in _batches(shard, batch_size, cfg, executor):
            t1 = time.perf_counter()
            outputs = _to_host(fn(images, image_sizes))
            t2 = time.perf_counter()
            per_image = unbatch_outputs(outputs)
            results = [detector_postprocess(out, image_sizes[i], (r["height"], r["width"]))
                       for i, (out, r) in enumerate(zip(per_image, records))]
            evaluator.process(records, results)
            t3 = time.perf_counter()
            timing["data_s"] += t1 - t0
            timing["inference_s"] += t2 - t1
            timing["postprocess_s"] += t3 - t2
            bar.update(len(records))
            t0 = time.perf_counter()
    bar.close()
    loop_s = time.perf_counter() - start
    metrics = evaluator.evaluate()
    if rank != 0:
        return {}
    metrics = dict(metrics or {})
    metrics["timing"] = {
        **{k: round(v, 3) for k, v in timing.items()},
        "coco_eval_s": round(getattr(evaluator, "eval_time", 0.0), 3),
        "num_images": len(shard),
        "images_per_s": round(len(shard) / loop_s, 3) if loop_s > 0 else None,
    }
    logger.info("Evaluation timing (rank 0): %s", metrics["timing"])
    return metrics
