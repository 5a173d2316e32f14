"""Training logs: Python logging set-up, smoothed metrics, the periodic line, TensorBoard.

Like detectron2: rank 0 logs to stdout and ``OUTPUT_DIR/log.txt``, other ranks only to
``log.txt.rank{r}``; losses are printed as medians over the last ``window`` iterations; times
(iteration, data) too; the ETA uses the median iteration time.
"""
from __future__ import annotations

import collections
import datetime
import logging
import os
import sys
from typing import Dict, Optional

import numpy as np

__all__ = ["setup_logger", "MetricHistory", "format_log_line", "TensorBoardWriter"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


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
