"""A tiny stand-in detector for the training-loop tests: linear regression with named variables.

``ToyModel`` has the interface the trainer needs (``compute_losses`` with a training metric,
detectron2-style variable names, ``norm_variables``); ``toy_data_fn`` is a deterministic,
position-addressable stream of batches like tfmrcnn.data.pipeline's.
"""
import numpy as np
import tensorflow as tf

from tfmrcnn.config import get_cfg

DIM = 4
TRUE_W = np.array([1.5, -2.0, 0.5, 3.0], np.float32)


class ToyModel(tf.Module):
    """pred = (x * norm.weight) @ fc.weight + fc.bias; losses: MSE and 0.1 * L1 (batch means)."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(size=(DIM, 1)).astype(np.float32), name="head.fc.weight")
        self.b = tf.Variable(rng.normal(size=(1,)).astype(np.float32), name="head.fc.bias")
        self.g = tf.Variable(np.ones(DIM, np.float32) + rng.normal(size=DIM).astype(np.float32) * 0.1,
                             name="head.norm.weight")
        self.frozen = tf.Variable(np.ones(2, np.float32), trainable=False, name="head.frozen")

    def norm_variables(self):
        return [self.g]

    def predict(self, x):
        return (tf.matmul(x * self.g, self.w) + self.b)[:, 0]

    def compute_losses(self, batch, training=True, return_metrics=False):
        """losses; with return_metrics, (losses, {"toy/max_abs_error"}) (logged, not optimised)."""
        err = self.predict(batch["images"]) - batch["targets"]
        losses = {"loss_mse": tf.reduce_mean(tf.square(err)),
                  "loss_l1": 0.1 * tf.reduce_mean(tf.abs(err))}
        if return_metrics:
            return losses, {"toy/max_abs_error": tf.reduce_max(tf.abs(err))}
        return losses


def toy_batch(position, seed, batch_size):
    """Batch number ``position`` of a stream: x (B, DIM), y = x @ TRUE_W + noise."""
    rng = np.random.default_rng([seed, position])
    x = rng.normal(size=(batch_size, DIM)).astype(np.float32)
    y = (x @ TRUE_W + 0.05 * rng.normal(size=batch_size)).astype(np.float32)
    return x, y


def toy_data_fn(batch_size, rank=0, world_size=1):
    """data_fn(start_position, seed) -> infinite dataset of this rank's batches (+ data_position)."""

    def data_fn(start_position, seed):
        def gen():
            pos = start_position
            while True:
                x, y = toy_batch(pos * world_size + rank, seed, batch_size)
                pos += 1
                yield {"images": x, "targets": y, "data_position": np.int64(pos)}

        return tf.data.Dataset.from_generator(gen, output_signature={
            "images": tf.TensorSpec([None, DIM], tf.float32),
            "targets": tf.TensorSpec([None], tf.float32),
            "data_position": tf.TensorSpec([], tf.int64)})

    return data_fn


def toy_cfg(output_dir, max_iter=20, checkpoint_period=5, batch=4, **solver):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.MODEL.WEIGHTS = ""
    cfg.SEED = 11
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (max_iter // 2,)
    cfg.SOLVER.WARMUP_ITERS = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_period
    cfg.TRAINER.LOG_PERIOD = 5
    cfg.TRAINER.TENSORBOARD = False
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg.freeze()
