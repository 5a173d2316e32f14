"""Run with 2 processes: one training iteration of the toy model through tfmrcnn's Trainer.

Checks (rank by rank, then prints "OK rank=r"):
* hvd.size() == 2 (a gloo-only Horovod under mpirun would give 1);
* pin_devices gives the two ranks disjoint halves of the cores (every thread of the process,
  including Horovod's, is pinned), or leaves them unpinned on a 1-core machine;
* ranks start from different random weights; after the step the weights are identical
  (broadcast from rank 0);
* the momentum buffer after one step is the gradient actually applied: it must equal the
  single-process gradient of the mean loss over the union of both ranks' batches (+ weight decay
  of rank 0's initial weights), and the weights must equal rank 0's start minus lr times it.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from engine_toy import ToyModel, toy_batch, toy_cfg, toy_data_fn  # noqa: E402
from tfmrcnn.distributed import init_horovod, pin_devices  # noqa: E402
from tfmrcnn.engine.trainer import Trainer  # noqa: E402

hvd = init_horovod()
assert hvd.size() == 2, f"hvd.size()={hvd.size()}, expected 2"
rank = hvd.rank()

before = sorted(os.sched_getaffinity(0))
pin_devices(hvd.local_rank(), 1, hvd.local_size(), pin_cpu_cores=True)
masks = {os.sched_getaffinity(int(tid)) == os.sched_getaffinity(0)
         for tid in os.listdir("/proc/self/task")}
assert masks == {True}, "a thread was left unpinned"
mine = np.zeros(max(before) + 1, np.int32)
mine[sorted(os.sched_getaffinity(0))] = 1
both = hvd.allgather(tf.constant(mine[None])).numpy()    # (2, cores) membership
if len(before) >= 2:
    assert both.sum(0).max() == 1 and both[0].sum() == both[1].sum() == len(before) // 2, both
else:
    assert sorted(os.sched_getaffinity(0)) == before
out = sys.argv[1]

cfg = toy_cfg(out, max_iter=1, checkpoint_period=0, batch=4, WEIGHT_DECAY=0.01, STEPS=(10,))
model = ToyModel(seed=rank)                       # different start on each rank
per_rank = 2
trainer = Trainer(cfg, model, hvd, toy_data_fn(per_rank, rank, 2))
trainer.resume_or_load(resume=False)
trainer.train()

# identical weights on both ranks
for v in model.variables:
    both = hvd.allgather(v[None]).numpy()
    np.testing.assert_array_equal(both[0], both[1], err_msg=v.name)

# single-process reference on the union of both batches, from rank 0's initial weights
ref = ToyModel(seed=0)
xs, ys = zip(*[toy_batch(r, cfg.SEED, per_rank) for r in range(2)])   # position 0 of each rank
with tf.GradientTape() as tape:
    losses = ref.compute_losses({"images": tf.constant(np.concatenate(xs)),
                                 "targets": tf.constant(np.concatenate(ys))})
    total = tf.add_n(list(losses.values()))
gw, gb, gg = tape.gradient(total, [ref.w, ref.b, ref.g])
slots = trainer.optimizer.named_slots()
expected = {"head.fc.weight": gw.numpy() + 0.01 * ref.w.numpy(),
            "head.fc.bias": gb.numpy() + cfg.SOLVER.WEIGHT_DECAY_BIAS * ref.b.numpy(),
            "head.norm.weight": gg.numpy()}
lr = cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR
for key, grad in expected.items():
    np.testing.assert_allclose(slots[f"momentum/{key}"].numpy(), grad, rtol=1e-5, atol=1e-6,
                               err_msg=key)
np.testing.assert_allclose(model.w.numpy(), ref.w.numpy() - lr * expected["head.fc.weight"],
                           rtol=1e-5, atol=1e-7)
print(f"OK rank={rank} size={hvd.size()}", flush=True)
