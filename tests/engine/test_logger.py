"""Log line, smoothed metrics and TensorBoard event files (without the tensorboard package)."""
import glob
import logging

import numpy as np
import tensorflow as tf

from tfmrcnn.engine.logger import MetricHistory, TensorBoardWriter, format_log_line, setup_logger


def test_history_medians_and_log_line():
    h = MetricHistory(window=3)
    for v in (10.0, 1.0, 2.0, 3.0):
        h.put("loss_cls", v)
        h.put("time", 0.5)
        h.put("data_time", 0.1)
    assert h.median("loss_cls") == 2.0 and h.latest["loss_cls"] == 3.0   # window drops the 10
    line = format_log_line(9, 109, h, 0.02, images_per_iter=16)
    assert "iter: 9" in line and "loss_cls: 2" in line and "lr: 0.02" in line
    assert "eta: 0:00:49" in line            # 99 iterations left x 0.5 s
    assert "images/s: 32.0" in line and "data_time: 0.1000" in line


def test_setup_logger_rank_files(tmp_path):
    log = setup_logger(str(tmp_path), rank=1)
    logging.getLogger("tfmrcnn.some.module").info("hello from rank 1")
    for h in log.handlers:
        h.flush()
    assert "hello from rank 1" in (tmp_path / "log.txt.rank1").read_text()
    assert not (tmp_path / "log.txt").exists()
    setup_logger(None, rank=0)               # reset for other tests: stdout only


def test_tensorboard_scalars_and_images(tmp_path):
    tb = TensorBoardWriter(str(tmp_path))
    tb.scalars(7, {"total_loss": 1.25, "lr": 0.02})
    tb.images(7, "train/predictions", np.full((2, 5, 6, 3), 200, np.uint8))
    tb.flush()
    found = {}
    for f in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            for v in event.summary.value:
                found[v.tag] = (event.step, v.metadata.plugin_data.plugin_name, tf.make_ndarray(v.tensor))
    assert found["total_loss"][:2] == (7, "scalars") and found["total_loss"][2] == np.float32(1.25)
    step, plugin, images = found["train/predictions"]
    assert plugin == "images" and images[:2].tolist() == [b"6", b"5"] and len(images) == 4
    assert TensorBoardWriter(str(tmp_path), enabled=False).writer is None
