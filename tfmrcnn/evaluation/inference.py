"""Run a detector over a dataset (sharded over Horovod ranks) and evaluate it.

Data flow per batch: read BGR uint8 images (a small thread pool reads and preprocesses the next
batches while the model runs) -> the test-time path of `tfmrcnn.inference.predictor.Predictor`
(preprocess: ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) + pad to SIZE_DIVISIBILITY; model
inference; postprocess to the original image) -> `evaluator.process`. Image i of the dataset
goes to rank ``i % size``.

Timing: ``inference_s`` is the model call until its outputs are on the host, ``postprocess_s``
the rescale + mask paste + conversion to COCO results (RLE), ``data_s`` the time spent waiting
for input, ``coco_eval_s`` the scoring (rank 0, after the merge).

Progress (rank 0): a tqdm bar with ETA (``progress=True``, tfmrcnn-eval) or, for evaluation
inside training whose output is a log, a log line with ETA every ``log_every_s`` seconds
(detectron2's "Inference done 11/100 ... ETA=0:00:05").
"""
from __future__ import annotations

import collections
import concurrent.futures
import datetime
import logging
import time

from tfmrcnn.data.datasets import get_dataset_dicts
from tfmrcnn.data.image_io import read_image
from tfmrcnn.distributed import world
from tfmrcnn.inference.predictor import Predictor

__all__ = ["inference_on_dataset"]

logger = logging.getLogger(__name__)

_PREFETCH_BATCHES = 2


def _load_batch(records, predictor):
    """(records, images, image_sizes). Each record gets the decoded image's height/width:
    detections are rescaled to the image actually read (the data set check makes it equal
    the json's unless DATASETS.TRUST_IMAGE_SIZE, where the file's size is the one to use)."""
    images = [read_image(r["file_name"]) for r in records]
    records = [dict(r, height=im.shape[0], width=im.shape[1]) for r, im in zip(records, images)]
    return (records, *predictor.preprocess(images))


def _batches(records, batch_size, predictor, executor):
    """Yield _load_batch's (records, images, image_sizes), loading up to _PREFETCH_BATCHES
    ahead."""
    chunks = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    pending = collections.deque()
    for chunk in chunks:
        pending.append(executor.submit(_load_batch, chunk, predictor))
        if len(pending) > _PREFETCH_BATCHES:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _progress_line(done, total, timed_images, timed_s) -> str:
    """'Inference done 11/100 (0.250 s/image), ETA 0:00:22': the rate of the images after the
    first batch (which includes tracing the model)."""
    per_image = timed_s / max(timed_images, 1)
    eta = datetime.timedelta(seconds=int(per_image * (total - done)))
    return f"Inference done {done}/{total} ({per_image:.3f} s/image), ETA {eta}"


def inference_on_dataset(model, dataset, cfg, evaluator, batch_size=1, progress=True,
                         log_every_s=0.0):
    """Run the model on this rank's shard of the dataset and evaluate.

    Args:
        model: a GeneralizedRCNN (uses make_inference_fn() or inference()), or any callable
            (images (B, Hp, Wp, 3) float32 BGR, image_sizes (B, 2) int32) -> model outputs.
        dataset: registered name, (json_file, image_root), or a list of dataset dicts.
        cfg: config (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST, SIZE_DIVISIBILITY, FORMAT).
        evaluator: e.g. COCOEvaluator; reset() here, evaluate() at the end on every rank.
        batch_size: images per model call on each rank.
        progress: show a tqdm bar (rank 0).
        log_every_s: if > 0, log the progress with an ETA at most this often (rank 0).
    Returns:
        rank 0: the evaluator's metrics plus "timing" {data_s, inference_s, postprocess_s,
        coco_eval_s, num_images, images_per_s}; other ranks: {}.
    """
    from tqdm import tqdm

    rank, size = world()
    dicts = get_dataset_dicts(dataset)
    shard = dicts[rank::size]
    predictor = Predictor(cfg, model)
    evaluator.reset()
    timing = collections.Counter()
    start = last_log = time.perf_counter()
    done, warm = 0, None  # warm: (images done, time) after the first batch
    bar = tqdm(total=len(shard), desc="inference", disable=(rank != 0 or not progress),
               unit="img", dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        t0 = time.perf_counter()
        for records, images, image_sizes in _batches(shard, batch_size, predictor, executor):
            t1 = time.perf_counter()
            outputs = predictor.run_model(images, image_sizes)
            t2 = time.perf_counter()
            results = predictor.postprocess(outputs, image_sizes,
                                            [(r["height"], r["width"]) for r in records])
            evaluator.process(records, results)
            t3 = time.perf_counter()
            timing["data_s"] += t1 - t0
            timing["inference_s"] += t2 - t1
            timing["postprocess_s"] += t3 - t2
            bar.update(len(records))
            done += len(records)
            t0 = time.perf_counter()
            if warm is None:
                warm = (done, t0)
            elif rank == 0 and log_every_s > 0 and t0 - last_log >= log_every_s:
                logger.info("%s", _progress_line(done, len(shard), done - warm[0], t0 - warm[1]))
                last_log = t0
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
