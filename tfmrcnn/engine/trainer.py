"""The Horovod training loop.

One process per device. Each iteration (detectron2 SimpleTrainer + hooks):

1. take this rank's next batch (``tfmrcnn.data.pipeline``; its ``data_position`` is kept);
2. ``train_step`` (one ``tf.function``, traced once thanks to ``None`` dims): losses under a
   GradientTape, gradients averaged over ranks by ``hvd.DistributedGradientTape`` (float16
   compression with TRAINER.FP16_ALLREDUCE), losses and the model's training statistics
   (detectron2's fast_rcnn/*, roi_head/*; logged, never optimised) averaged over ranks, unscaled
   (float16 loss scaling), clipped, and applied by our SGD with the LR of this iteration; the
   update is skipped when the averaged loss or a gradient is not finite (gradients are the same
   on every rank after the allreduce, so every rank takes the same decision);
3. a non-finite loss stops training (``FloatingPointError`` naming the iteration, the last
   good checkpoint and how to resume from it with a lower LR); with float16 loss scaling a
   non-finite gradient only lowers the scale;
4. hooks: log line + metrics.json + TensorBoard every LOG_PERIOD (at the 0-based iteration of
   the log line, as detectron2), checkpoint every CHECKPOINT_PERIOD and at the end, evaluation
   every TEST.EVAL_PERIOD, training images (ground truth | predictions) every VIS_PERIOD.

Only healthy states become checkpoints (`LossHealth` has the criterion). The weights after
iteration i are judged by the loss they give at iteration i + 1, so a periodic checkpoint is
copied to host memory when due and written one iteration later, only if that iteration is
healthy and every saved value is finite; otherwise it is dropped with a warning. The final
checkpoint is written when the last iteration was healthy and its values are finite. So the
newest checkpoint is always one to resume from: after a divergence, resuming (tfmrcnn-train's
default) with a lower SOLVER.BASE_LR continues from the last healthy state, with nothing to
delete by hand.

Model variables, optimizer slots and the loss scale are broadcast from rank 0 before the first
step (so every rank starts from the same weights, fresh or resumed) and once more after it.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import random
import statistics
import time
from typing import Callable, Dict, Optional

import tensorflow as tf

from tfmrcnn.checkpoint.checkpointer import Checkpointer, checkpoint_name
from tfmrcnn.distributed import Watchdog
from tfmrcnn.engine.logger import (MetricHistory, MetricsJSONWriter, TensorBoardWriter,
                                   format_log_line)
from tfmrcnn.engine.solver import (DynamicLossScale, WarmupMultiStepLR, build_optimizer,
                                   clip_gradients)
from tfmrcnn.modeling.sampling import training_draws

__all__ = ["Trainer", "LossHealth", "make_train_step"]

logger = logging.getLogger(__name__)


def _all_finite(tensors) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


class LossHealth:
    """Whether an iteration's losses show a healthy training state (worth checkpointing).

    Criterion: an iteration is healthy when every loss is finite and the total loss is at most
    ``EXPLOSION_RATIO`` (100) times the median total loss of the last ``window`` (20) healthy
    iterations of this run; the first iteration of a run only has to be finite. Unhealthy
    iterations never enter the reference, so a run that stays exploded stays unhealthy.
    Detection losses move by a few times at most between iterations (they start around 1-5
    and never approach 0); a hundredfold jump is divergence: with SOLVER.BASE_LR=1000 the
    total loss goes from ~4 to ~1e18 in one iteration, then to NaN.
    """

    EXPLOSION_RATIO = 100.0

    def __init__(self, window: int = 20):
        self._healthy_totals = collections.deque(maxlen=window)

    def judge(self, losses: Dict[str, float]) -> Optional[str]:
        """None when healthy, else why not; healthy totals join the reference."""
        bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
        if bad:
            return "non-finite " + ", ".join(f"{k}={losses[k]}" for k in bad)
        total = losses["total_loss"]
        if self._healthy_totals:
            reference = statistics.median(self._healthy_totals)
            if total > self.EXPLOSION_RATIO * reference:
                return (f"total_loss {total:.4g} is more than {self.EXPLOSION_RATIO:g} times "
                        f"the recent median {reference:.4g} (exploding)")
        self._healthy_totals.append(total)
        return None


def make_train_step(model, optimizer, schedule: WarmupMultiStepLR, cfg, hvd,
                    iteration: tf.Variable, element_spec: Dict[str, tf.TensorSpec],
                    loss_scale: Optional[DynamicLossScale] = None, seed: int = 0) -> Callable:
    """The compiled step: batch -> (losses and metrics averaged over ranks, lr, applied, loss
    finite). ``seed``: with the rank and the iteration, the key of the step's random sampling
    (`tfmrcnn.modeling.sampling.training_draws`: a resumed run draws as an uninterrupted one)."""
    variables = optimizer.variables_
    compression = hvd.Compression.fp16 if cfg.TRAINER.FP16_ALLREDUCE else hvd.Compression.none

    def update(grads, lr):
        optimizer.apply(clip_gradients(grads, cfg), lr)
        return tf.constant(True)

    # autograph=False: the step has no Python control flow on tensors (the one branch is the
    # tf.cond below), and converting every function it calls took ~40 % of its tracing time
    # (the demo's step: 14.0 -> 8.7 s of CPU per process and launch)
    @tf.function(input_signature=[element_spec], autograph=False)
    def train_step(batch):
        with tf.GradientTape() as tape, training_draws(seed, hvd.rank(), iteration):
            losses, metrics = model.compute_losses(batch, training=True, return_metrics=True)
            total = tf.add_n([tf.cast(v, tf.float32) for v in losses.values()])
            scaled = total * loss_scale.scale if loss_scale is not None else total
        tape = hvd.DistributedGradientTape(tape, compression=compression, sparse_as_dense=True)
        grads = tape.gradient(scaled, variables)
        # a variable without gradient this step (e.g. no mask loss) gets a zero update
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, variables)]
        if loss_scale is not None:
            grads = [g / loss_scale.scale for g in grads]
        averaged = {k: hvd.allreduce(tf.cast(v, tf.float32), op=hvd.Average, name=f"log_{k}")
                    for k, v in losses.items()}
        averaged["total_loss"] = tf.add_n(list(averaged.values()))
        metrics = {k: hvd.allreduce(tf.cast(v, tf.float32), op=hvd.Average, name=f"log_{k}")
                   for k, v in metrics.items()}
        grads_finite = _all_finite(grads)
        loss_finite = tf.math.is_finite(averaged["total_loss"])
        apply = tf.logical_and(grads_finite, loss_finite)
        lr = schedule(iteration)
        # a step whose loss or gradients are not finite changes no weight
        tf.cond(apply, lambda: update(grads, lr), lambda: tf.constant(False))
        if loss_scale is not None:
            loss_scale.update(grads_finite)
        iteration.assign_add(1)
        return averaged, metrics, lr, apply, loss_finite

    return train_step


class Trainer:
    """Runs SOLVER.MAX_ITER iterations of ``model`` on the batches of ``data_fn``.

    Args:
        cfg: the (worker-scaled) config.
        model: tf.Module with ``compute_losses(batch, training, return_metrics)`` (losses, or
            (losses, metrics) with return_metrics), detectron2-named variables,
            ``trainable_variables`` (and optionally ``norm_variables()``, ``make_inference_fn()``).
        hvd: the initialised ``horovod.tensorflow`` module.
        data_fn: ``(start_position, seed) -> tf.data.Dataset`` of this rank's batches.
        eval_fn: optional ``(iteration) -> metrics`` run on every rank (EVAL_PERIOD and end).
        vis_fn: optional ``(batch numpy dict, iteration) -> (N, H, W, 3) RGB uint8`` (rank 0).
    """

    def __init__(self, cfg, model, hvd, data_fn: Callable, eval_fn: Optional[Callable] = None,
                 vis_fn: Optional[Callable] = None, watchdog: Optional[Watchdog] = None):
        self.cfg, self.model, self.hvd = cfg, model, hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.data_fn, self.eval_fn, self.vis_fn = data_fn, eval_fn, vis_fn
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.optimizer = build_optimizer(cfg, model)
        self.schedule = WarmupMultiStepLR.from_config(cfg)
        self.loss_scale = None
        if cfg.SOLVER.AMP.ENABLED and cfg.TRAINER.AMP_DTYPE == "float16":
            self.loss_scale = DynamicLossScale()
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
        state = dict(self.optimizer.named_slots())
        if self.loss_scale is not None:
            state["loss_scale"] = self.loss_scale.scale
            state["loss_scale_good_steps"] = self.loss_scale.good_steps
        self.checkpointer = Checkpointer(cfg.OUTPUT_DIR, model, state)
        self.start_iter = 0
        self.data_positions = [0] * self.size
        self.seed = int(cfg.SEED)
        self.watchdog = watchdog or Watchdog(0.0, self.rank)
        self.tb = TensorBoardWriter(cfg.OUTPUT_DIR, cfg.TRAINER.TENSORBOARD and self.rank == 0)
        self.metrics_json = MetricsJSONWriter(cfg.OUTPUT_DIR, self.rank == 0)
        self.history = MetricHistory(window=20)
        self.health = LossHealth()
        # (iterations done, rank 0's CheckpointSnapshot or None) waiting for the next iteration
        self._pending_checkpoint = None
        self._last_problem: Optional[str] = None  # LossHealth's verdict on the last iteration
        self.last_good_checkpoint: Optional[str] = None  # known on every rank
        self.last_metrics: Dict[str, float] = {}
        # callables (trainer, iterations done) run on every rank after each iteration's hooks
        self.after_step_hooks = []

    # ------------------------------------------------------------------ state
    def broadcast_state(self) -> None:
        variables = list(self.model.variables) + list(self.optimizer.slots)
        if self.loss_scale is not None:
            variables += [self.loss_scale.scale, self.loss_scale.good_steps]
        self.hvd.broadcast_variables(variables, root_rank=0)

    def resume_or_load(self, resume: bool = True) -> int:
        """Restore the newest readable checkpoint of OUTPUT_DIR (if ``resume``), else load
        MODEL.WEIGHTS; agree on the seed; returns the iteration to start at."""
        found = None
        if resume and self.rank == 0:
            found = self.checkpointer.find_latest()
        meta = None
        if found is not None:
            path, state, meta = found
            self.checkpointer.restore(path, state)
            meta = dict(meta, checkpoint=path)
            logger.info("Resumed from %s at iteration %d", path, meta["iteration"])
        elif self.rank == 0 and self.cfg.MODEL.WEIGHTS:
            self.checkpointer.load_initial_weights(self.cfg.MODEL.WEIGHTS)
        if self.rank == 0 and meta is None:
            seed = self.seed if self.seed >= 0 else random.SystemRandom().randrange(2 ** 31)
            meta = {"iteration": 0, "data_positions": [0] * self.size, "seed": seed}
        meta = self.hvd.broadcast_object(meta, root_rank=0) if self.size > 1 else meta
        self.start_iter = int(meta["iteration"])
        self.seed = int(meta["seed"])
        self.last_good_checkpoint = meta.get("checkpoint")
        positions = list(meta["data_positions"])
        if len(positions) != self.size:
            # another world size: per-rank positions do not transfer; every rank continues
            # its own new stream at the batch count of the iteration reached
            logger.warning("Checkpoint from %d processes, running %d: data stream restarts at "
                           "position %d per rank", len(positions), self.size, self.start_iter)
            positions = [self.start_iter] * self.size
        self.data_positions = positions
        self.iteration.assign(self.start_iter)
        return self.start_iter

    def save(self, final: bool = False) -> None:
        """Checkpoint the current state (collective: every rank calls it at the same iteration).

        A periodic checkpoint is only copied here and written by `_settle_pending_checkpoint`
        once the next iteration is known to be healthy; the final one is written now if the
        last iteration was healthy (see the module docstring). Non-finite values are never
        saved.
        """
        done = int(self.iteration.numpy())
        mine = tf.constant([self.data_positions[self.rank]], tf.int64)
        positions = self.hvd.allgather(mine).numpy().tolist() if self.size > 1 else [int(mine[0])]
        self._pending_checkpoint = None
        # identical on every rank (same weights after the broadcast and the averaged updates)
        problem = self._last_problem
        if problem is None and not bool(_all_finite(self._saved_variables())):
            problem = "NaN or inf in the weights or the optimizer state"
        if problem is not None:
            if final:
                raise FloatingPointError(f"Training ended diverged: no final checkpoint "
                                         f"({problem}). " + self._resume_advice())
            logger.warning("No checkpoint of iteration %d: %s.", done, problem)
            return
        snap = (self.checkpointer.snapshot(done, positions, self.seed, self.cfg.dump())
                if self.rank == 0 else None)
        if final:
            self._write_checkpoint(done, snap, final=True)
        else:
            self._pending_checkpoint = (done, snap)

    def _saved_variables(self):
        variables = list(self.model.variables) + list(self.optimizer.slots)
        if self.loss_scale is not None:
            variables.append(self.loss_scale.scale)
        return variables

    def _write_checkpoint(self, done: int, snap, final: bool = False) -> None:
        if self.rank == 0:
            self.checkpointer.write(snap, final=final)
        self.last_good_checkpoint = os.path.join(self.cfg.OUTPUT_DIR,
                                                 checkpoint_name(done, final))

    def _settle_pending_checkpoint(self, it: int, problem: Optional[str]) -> None:
        """Write the checkpoint copied after iteration ``it - 1`` if iteration ``it``, the
        first to use its weights, is healthy (``problem`` None); drop it otherwise."""
        if self._pending_checkpoint is None:
            return
        done, snap = self._pending_checkpoint
        self._pending_checkpoint = None
        if problem is None:
            self._write_checkpoint(done, snap)
        else:
            logger.warning("Not writing the checkpoint of iteration %d: its weights gave an "
                           "unhealthy iteration %d: %s", done, it, problem)

    def _resume_advice(self) -> str:
        """Where to restart from after a divergence, for the error message."""
        lr = float(self.cfg.SOLVER.BASE_LR)
        lower = f"SOLVER.BASE_LR={lr / 10:g} (now {lr:g})"
        if self.last_good_checkpoint is None:
            return ("No checkpoint of this run was written from a healthy state: start again "
                    f"with a lower learning rate, e.g. {lower}.")
        return (f"The last good checkpoint is {self.last_good_checkpoint}: resume from it with "
                f"a lower learning rate, i.e. run the same tfmrcnn-train command (it resumes "
                f"from the newest checkpoint of OUTPUT_DIR) with e.g. {lower}. Checkpoints "
                "are only written from healthy states, so there is nothing to delete.")

    # ------------------------------------------------------------------ loop
    def train(self) -> Dict[str, float]:
        cfg = self.cfg
        dataset = self.data_fn(self.data_positions[self.rank], self.seed)
        spec = dict(dataset.element_spec)
        spec.pop("data_position", None)
        step = make_train_step(self.model, self.optimizer, self.schedule, cfg, self.hvd,
                               self.iteration, spec, self.loss_scale, seed=self.seed)
        data = iter(dataset)
        images_per_iter = int(cfg.SOLVER.IMS_PER_BATCH)
        log_period = max(int(cfg.TRAINER.LOG_PERIOD), 1)
        ckpt_period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
        eval_period = int(cfg.TEST.EVAL_PERIOD)
        vis_period = int(cfg.TRAINER.VIS_PERIOD)
        logger.info("Starting training from iteration %d to %d (%d processes, %d images per "
                    "iteration)", self.start_iter, self.max_iter, self.size, images_per_iter)
        self.broadcast_state()
        self.watchdog.start()
        it = self.start_iter
        while it < self.max_iter:
            t0 = time.perf_counter()
            batch = next(data)
            self.data_positions[self.rank] = int(batch.pop("data_position"))
            t1 = time.perf_counter()
            averaged, metrics, lr, applied, loss_finite = step(batch)
            losses = {k: float(v) for k, v in averaged.items()}
            metrics = {k: float(v) for k, v in metrics.items()}
            t2 = time.perf_counter()
            self.watchdog.beat(it)
            problem = self.health.judge(losses)
            if problem is None and not bool(applied) and self.loss_scale is None:
                problem = "a non-finite gradient"
            if problem is not None and self._last_problem is None:
                logger.warning("Iteration %d is not healthy: %s. No checkpoint is written "
                               "until training is healthy again.", it, problem)
            self._last_problem = problem
            self._settle_pending_checkpoint(it, problem)
            if not bool(loss_finite):
                raise FloatingPointError(
                    f"Loss became infinite or NaN at iteration={it}! losses: {losses}. "
                    "Training stopped; the weights were not updated. " + self._resume_advice())
            if not bool(applied) and self.loss_scale is None:
                raise FloatingPointError(
                    f"A gradient became infinite or NaN at iteration={it} (losses {losses}). "
                    "Training stopped; the weights were not updated. " + self._resume_advice())
            if it == self.start_iter:
                self.broadcast_state()
            self.history.put_many(losses)
            self.history.put_many(metrics)
            self.history.put("time", t2 - t0)
            self.history.put("data_time", t1 - t0)
            lr = float(lr)
            done = it + 1
            if self.rank == 0 and (done % log_period == 0 or done == self.max_iter
                                   or it == self.start_iter):
                logger.info(format_log_line(it, self.max_iter, self.history, lr, images_per_iter))
                scalars = {k: self.history.median(k) for k in (*losses, *metrics)}
                step_time = self.history.median("time")
                scalars.update(lr=lr, time=step_time, data_time=self.history.median("data_time"),
                               images_per_s=images_per_iter / max(step_time, 1e-9))
                if self.loss_scale is not None:
                    scalars["loss_scale"] = float(self.loss_scale.scale.numpy())
                self.tb.scalars(it, scalars)
                self.metrics_json.write(it, dict(scalars, eta_seconds=step_time * (
                    self.max_iter - done)))
            if vis_period > 0 and done % vis_period == 0 and self.rank == 0 and self.vis_fn:
                self._visualise(batch, it)
            if ckpt_period > 0 and done % ckpt_period == 0 and done < self.max_iter:
                self.save()
            if eval_period > 0 and done % eval_period == 0 and done < self.max_iter:
                self.evaluate(done)
            for hook in self.after_step_hooks:
                hook(self, done)
            it = done
        self.last_metrics = {k: self.history.median(k) for k in self.history.names()}
        if self.start_iter < self.max_iter:
            self.save(final=True)
        self.watchdog.stop()
        self.tb.flush()
        return self.last_metrics

    def _visualise(self, batch, step: int) -> None:
        try:
            images = self.vis_fn({k: v.numpy() for k, v in batch.items()}, step)
            self.tb.images(step, "train/predictions", images)
        except Exception as e:  # noqa: BLE001 - a picture must never stop training
            logger.warning("Visualisation at iteration %d failed: %s", step, e)

    def evaluate(self, done: int):
        """Evaluate after ``done`` iterations; the results are recorded (TensorBoard,
        metrics.json) at the last iteration run, ``done - 1``, as detectron2's EvalHook."""
        if self.eval_fn is None:
            return None
        with self.watchdog.pause():
            metrics = self.eval_fn(done)
        if self.rank == 0 and metrics:
            flat = {}
            for task, values in metrics.items():
                if isinstance(values, dict):
                    for name, value in values.items():
                        if isinstance(value, (int, float)) and math.isfinite(value):
                            flat[f"{task}/{name}"] = value
            self.tb.scalars(max(done - 1, 0), flat)
            self.tb.flush()
            self.metrics_json.write(max(done - 1, 0), flat)
        return metrics
