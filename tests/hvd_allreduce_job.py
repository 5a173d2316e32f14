"""Run under a launcher with 2 processes: checks rank/size and an allreduce across them."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import horovod.tensorflow as hvd  # noqa: E402
import tensorflow as tf  # noqa: E402

hvd.init()
expected = int(sys.argv[1])
assert hvd.size() == expected, f"hvd.size()={hvd.size()} but {expected} processes were launched"
total = hvd.allreduce(tf.constant([float(hvd.rank() + 1)]), op=hvd.Sum)
mean = hvd.allreduce(tf.constant([float(hvd.rank() + 1)]), op=hvd.Average)
want_total = expected * (expected + 1) / 2
assert abs(float(total[0]) - want_total) < 1e-6, (float(total[0]), want_total)
assert abs(float(mean[0]) - want_total / expected) < 1e-6
print(f"OK rank={hvd.rank()} size={hvd.size()} sum={float(total[0])} "
      f"mpi_enabled={hvd.mpi_enabled()} gloo_enabled={hvd.gloo_enabled()}", flush=True)
