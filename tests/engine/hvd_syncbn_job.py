"""Run with 2 processes: SyncBatchNorm on half batches == batch norm on the whole batch.

Each rank normalises its half of a fixed batch with tfmrcnn's SyncBatchNorm; the outputs,
input gradients and (summed) weight/bias gradients must equal a single-process batch norm over
the whole batch, written here from its definition.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmrcnn.distributed import init_horovod  # noqa: E402
from tfmrcnn.modeling.norm import EPS, SyncBatchNorm  # noqa: E402

hvd = init_horovod()
assert hvd.size() == 2, f"hvd.size()={hvd.size()}, expected 2"
rank = hvd.rank()

rng = np.random.default_rng(0)
N, H, W, C = 4, 3, 5, 6
x_full = (rng.normal(size=(N, H, W, C)) * 3 + 1).astype(np.float32)
upstream = rng.normal(size=(N, H, W, C)).astype(np.float32)
gamma = rng.normal(size=C).astype(np.float32)
beta = rng.normal(size=C).astype(np.float32)

# reference: the whole batch in one process
xr, gr, br = tf.Variable(x_full), tf.Variable(gamma), tf.Variable(beta)
with tf.GradientTape() as tape:
    mean = tf.reduce_mean(xr, axis=[0, 1, 2])
    var = tf.reduce_mean(tf.square(xr - mean), axis=[0, 1, 2])
    y_ref = (xr - mean) / tf.sqrt(var + EPS) * gr + br
    loss = tf.reduce_sum(y_ref * upstream)
dx_ref, dg_ref, db_ref = tape.gradient(loss, [xr, gr, br])

# SyncBN: this rank's half
half = slice(2 * rank, 2 * rank + 2)
bn = SyncBatchNorm("bn.norm", C)
bn.weight.assign(gamma)
bn.bias.assign(beta)
x = tf.Variable(x_full[half])


@tf.function
def step():
    with tf.GradientTape() as t:
        y = bn(x, training=True)
        local = tf.reduce_sum(y * upstream[half])
    dx, dg, db = t.gradient(local, [x, bn.weight, bn.bias])
    return y, dx, hvd.allreduce(dg, op=hvd.Sum), hvd.allreduce(db, op=hvd.Sum)


y, dx, dg, db = step()
y_all = hvd.allgather(y).numpy()
dx_all = hvd.allgather(dx).numpy()
np.testing.assert_allclose(y_all, y_ref.numpy(), rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(dx_all, dx_ref.numpy(), rtol=1e-3, atol=1e-4)
np.testing.assert_allclose(dg.numpy(), dg_ref.numpy(), rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(db.numpy(), db_ref.numpy(), rtol=1e-4, atol=1e-4)
# running statistics are identical on both ranks and use the whole batch's mean
rm = hvd.allgather(bn.running_mean[None]).numpy()
np.testing.assert_allclose(rm[0], rm[1])
np.testing.assert_allclose(rm[0], 0.1 * x_full.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
print(f"OK rank={rank} size={hvd.size()}", flush=True)
sys.exit(0)
