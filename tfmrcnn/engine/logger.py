"""Training logs: Python logging set-up, smoothed metrics, the periodic line, metrics.json,
TensorBoard, the config summary.

Like detectron2: rank 0 logs to stdout and ``OUTPUT_DIR/log.txt``, other ranks only to
``log.txt.rank{r}``; losses are printed as medians over the last ``window`` iterations; times
(iteration, data) too; the ETA uses the median iteration time. Every logged iteration is also
one JSON line of ``OUTPUT_DIR/metrics.json`` (`MetricsJSONWriter`) and TensorBoard scalars at
step = that iteration (the ``iter`` of the log line: 0-based, so the first line is iteration 0).
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import sys
from typing import Dict, Optional

import numpy as np

__all__ = ["quiet_tensorflow", "setup_logger", "MetricHistory", "format_log_line",
           "MetricsJSONWriter", "TensorBoardWriter", "config_summary"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


def quiet_tensorflow(verbose: bool = False) -> None:
    """Unless ``verbose``: TensorFlow's C++ start-up messages (CPU features, absl, oneDNN) off
    (``TF_CPP_MIN_LOG_LEVEL=2`` where the user set no level; call before TensorFlow is imported;
    inherited by re-exec'd processes) and its Python logger at ERROR."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def setup_logger(output_dir: Optional[str], rank: int = 0, name: str = "tfmrcnn") -> logging.Logger:
    """Configure the ``tfmrcnn`` logger once (idempotent); returns it."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        if getattr(h, "_tfmrcnn", False):
            log.removeHandler(h)
            h.close()
    formatter = logging.Formatter(_FORMAT, datefmt="%m/%d %H:%M:%S")
    handlers = []
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        filename = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
        handlers.append(logging.FileHandler(os.path.join(output_dir, filename)))
    for h in handlers:
        h.setFormatter(formatter)
        h._tfmrcnn = True
        log.addHandler(h)
    return log


class MetricHistory:
    """Windowed history of scalar metrics (median/mean over the last ``window`` values)."""

    def __init__(self, window: int = 20):
        self.window = window
        self._values: Dict[str, collections.deque] = {}
        self.latest: Dict[str, float] = {}

    def put(self, name: str, value: float) -> None:
        self._values.setdefault(name, collections.deque(maxlen=self.window)).append(float(value))
        self.latest[name] = float(value)

    def put_many(self, values: Dict[str, float]) -> None:
        for k, v in values.items():
            self.put(k, v)

    def median(self, name: str) -> float:
        return float(np.median(self._values[name]))

    def mean(self, name: str) -> float:
        return float(np.mean(self._values[name]))

    def names(self):
        return list(self._values)


def format_log_line(iteration: int, max_iter: int, history: MetricHistory, lr: float,
                    images_per_iter: int) -> str:
    """detectron2-like line: eta, iter, total_loss, each loss, time, data_time, lr, images/s."""
    parts = []
    if "time" in history.names():
        eta = history.median("time") * (max_iter - iteration - 1)
        parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
    parts.append(f"iter: {iteration}")
    loss_names = sorted(n for n in history.names() if "loss" in n)
    parts += [f"{n}: {history.median(n):.4g}" for n in loss_names]
    if "time" in history.names():
        t = history.median("time")
        parts.append(f"time: {t:.4f}")
        parts.append(f"images/s: {images_per_iter / max(t, 1e-9):.1f}")
    if "data_time" in history.names():
        parts.append(f"data_time: {history.median('data_time'):.4f}")
    parts.append(f"lr: {lr:.6g}")
    return "  ".join(parts)


class MetricsJSONWriter:
    """``OUTPUT_DIR/metrics.json`` as detectron2's JSONWriter writes it: one JSON object per
    line, ``{"iteration": i, name: value, ...}`` with sorted keys (losses, time and data_time
    as window medians, lr, eta_seconds; evaluation results as ``"<task>/<metric>"``). Appended
    to, so a resumed run continues the file. Rank 0 only (disabled: a no-op)."""

    FILENAME = "metrics.json"

    def __init__(self, output_dir: Optional[str], enabled: bool = True):
        self._file = None
        if enabled and output_dir:
            os.makedirs(output_dir, exist_ok=True)
            self._file = open(os.path.join(output_dir, self.FILENAME), "a", encoding="utf-8")

    def write(self, iteration: int, values: Dict[str, float]) -> None:
        if self._file is None:
            return
        line = dict({k: float(v) for k, v in values.items()}, iteration=int(iteration))
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardWriter:
    """TensorBoard scalars and images under ``log_dir`` (rank 0 only; a no-op elsewhere).

    Written with the core ``tf.summary.write`` plus the plugin metadata TensorBoard's scalar and
    image dashboards read ("scalars": float32 scalar; "images": [width, height, png...] strings),
    so event files are produced even where the ``tensorboard`` package is not installed
    (``tf.summary.scalar`` needs it).
    """

    def __init__(self, log_dir: Optional[str], enabled: bool = True):
        self.writer = None
        if enabled and log_dir:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            self._tf = tf
            self._meta = {name: summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name)
            ).SerializeToString() for name in ("scalars", "images")}
            self.writer = tf.summary.create_file_writer(log_dir)

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is None:
            return
        tf = self._tf
        with self.writer.as_default():
            for k, v in values.items():
                tf.summary.write(k, tf.constant(float(v), tf.float32), step=step,
                                 metadata=self._meta["scalars"])

    def images(self, step: int, name: str, images_rgb_uint8: np.ndarray) -> None:
        """(N, H, W, 3) uint8 RGB."""
        if self.writer is None:
            return
        import cv2

        tf = self._tf
        h, w = images_rgb_uint8.shape[1:3]
        pngs = [cv2.imencode(".png", np.ascontiguousarray(im[:, :, ::-1]))[1].tobytes()
                for im in images_rgb_uint8]
        with self.writer.as_default():
            tf.summary.write(name, tf.constant([str(w).encode(), str(h).encode()] + pngs),
                             step=step, metadata=self._meta["images"])

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


def config_summary(cfg) -> str:
    """A few lines on the run (model, data sets, schedule, output) for the log; the full config
    goes to OUTPUT_DIR/config.yaml."""
    m, r, s = cfg.MODEL, cfg.MODEL.RESNETS, cfg.SOLVER
    groups = f" {r.NUM_GROUPS}x{r.WIDTH_PER_GROUP}d" if r.NUM_GROUPS > 1 else ""
    heads = "mask" if m.MASK_ON else "box"
    return "\n".join([
        f"model: {m.META_ARCHITECTURE}, R-{r.DEPTH}{groups} ({r.NORM or 'no norm'}) "
        f"{m.BACKBONE.NAME}, {m.ROI_HEADS.NAME}, {m.ROI_HEADS.NUM_CLASSES} classes, {heads} "
        f"heads; weights: {m.WEIGHTS or 'none (from scratch)'}",
        f"data: train {', '.join(cfg.DATASETS.TRAIN)} (short side {tuple(cfg.INPUT.MIN_SIZE_TRAIN)},"
        f" max {cfg.INPUT.MAX_SIZE_TRAIN}); test {', '.join(cfg.DATASETS.TEST) or 'none'}",
        f"schedule: {s.MAX_ITER} iterations x {s.IMS_PER_BATCH} images, lr {s.BASE_LR:g} "
        f"(warm-up {s.WARMUP_ITERS}, x{s.GAMMA:g} at {tuple(s.STEPS)}), checkpoint every "
        f"{s.CHECKPOINT_PERIOD}, evaluation "
        + (f"every {cfg.TEST.EVAL_PERIOD}" if cfg.TEST.EVAL_PERIOD > 0 else "at the end"),
        f"output: {cfg.OUTPUT_DIR} (full config: {os.path.join(cfg.OUTPUT_DIR, 'config.yaml')})",
    ])
