"""Log line, smoothed metrics and TensorBoard event files (without the tensorboard package)."""
import glob
import logging

import numpy as np
import pytest
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


def _events(log_dir):
    """{tag: [(step, value)]} of the scalar events under log_dir."""
    found = {}
    for f in glob.glob(str(log_dir / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            for v in event.summary.value:
                found.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    return found


def test_metrics_json_and_tensorboard_steps_are_the_logged_iterations(tmp_path, caplog):
    """detectron2's metrics.json: one JSON object per logged iteration (0-based, as the log
    line's 'iter'), losses/time/data_time/lr/eta_seconds, and evaluation results at the last
    iteration run; TensorBoard scalars at the same steps."""
    import json

    from engine_toy import ToyModel, toy_cfg, toy_data_fn
    from tfmrcnn.distributed import init_horovod
    from tfmrcnn.engine.trainer import Trainer

    cfg = toy_cfg(tmp_path, max_iter=6, checkpoint_period=0).defrost()
    cfg.TRAINER.LOG_PERIOD, cfg.TRAINER.TENSORBOARD, cfg.TEST.EVAL_PERIOD = 2, True, 4
    cfg.freeze()
    evaluated = []

    def eval_fn(done):
        evaluated.append(done)
        return {"bbox": {"AP": 10.0 * done, "AP50": float("nan")}}

    setup_logger(None)
    trainer = Trainer(cfg, ToyModel(0), init_horovod(), toy_data_fn(4), eval_fn=eval_fn)
    trainer.resume_or_load(resume=False)
    with caplog.at_level(logging.INFO, logger="tfmrcnn"):
        trainer.train()
    trainer.evaluate(6)  # what tfmrcnn-train does after training
    logged = [int(r.getMessage().split("iter: ")[1].split()[0]) for r in caplog.records
              if "iter: " in r.getMessage()]
    assert logged == [0, 1, 3, 5]            # the first iteration, every 2nd, the last

    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    train_lines = [x for x in lines if "total_loss" in x]
    assert [x["iteration"] for x in train_lines] == logged
    for x in train_lines:
        assert {"loss_mse", "time", "data_time", "lr", "eta_seconds"} <= set(x)
        assert x["eta_seconds"] == pytest.approx(x["time"] * (6 - x["iteration"] - 1))
    assert train_lines[0]["lr"] == pytest.approx(trainer.schedule(0).numpy())
    # evaluations after 4 and 6 iterations, recorded at iterations 3 and 5; NaN left out
    assert evaluated == [4, 6]
    assert [(x["iteration"], x["bbox/AP"]) for x in lines if "bbox/AP" in x] == [(3, 40.0), (5, 60.0)]
    assert not any("bbox/AP50" in x for x in lines)

    events = _events(tmp_path)
    assert [s for s, _ in events["total_loss"]] == logged
    assert [s for s, _ in events["bbox/AP"]] == [3, 5]
    assert events["total_loss"][-1][1] == pytest.approx(train_lines[-1]["total_loss"])


def test_config_summary_is_short_and_names_the_run():
    from tfmrcnn.config import get_cfg
    from tfmrcnn.engine.logger import config_summary

    cfg = get_cfg()
    text = config_summary(cfg)
    assert len(text.splitlines()) == 4
    for expected in ("R-50", "80 classes", "coco_2017_train", "coco_2017_val", "90000 iterations",
                     "x 16 images", "(60000, 80000)", "config.yaml"):
        assert expected in text, expected
