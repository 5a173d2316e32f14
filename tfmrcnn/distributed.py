"""Everything Horovod: init, the handle, rank/size, a barrier, device pinning, the world-size
check, a hang watchdog. Used by training (engine), evaluation and the SyncBN norm.

One process per GPU (or per CPU slot), each pinned to its local rank's GPU. Only plain
``tf.Variable`` lists are given to Horovod (its Keras-3 integration is broken, see NOTES.md).

What happens when a rank dies (documented behaviour, relied upon):
* ``mpirun``: a process exiting non-zero makes Open MPI abort the whole job.
* ``horovodrun`` (gloo): the driver kills the other ranks when one exits non-zero; the peers
  waiting in an allreduce also get a gloo connection error.
* A rank that hangs (or a peer stuck in a collective that never completes): Horovod's stall
  inspector (``HOROVOD_STALL_CHECK_TIME_SECONDS``, and ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS``
  which we default to 600 s) shuts the job down, and our ``Watchdog`` thread ends the process
  with exit code 3 when no training step finished for ``TFMRCNN_WATCHDOG_SECONDS`` (default
  1800 s), printing which iteration it was stuck after.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

__all__ = ["init_horovod", "all_reduce_library", "horovod", "horovod_if_distributed", "world",
           "barrier", "launcher_world_size", "check_world_size", "pin_devices",
           "cpu_cores_for_rank", "set_process_affinity", "Watchdog",
           "LAUNCHER_SIZE_VARIABLES"]

logger = logging.getLogger(__name__)

# Environment variables through which launchers announce the number of processes.
LAUNCHER_SIZE_VARIABLES = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                           "MV2_COMM_WORLD_SIZE")


def launcher_world_size(environ=None):
    """Number of processes the launcher started (None when not under a launcher)."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name)
        if value and value.strip().isdigit():
            return int(value)
    return None


def check_world_size(hvd_size: int, environ=None) -> None:
    """Stop with a clear message when Horovod sees fewer processes than the launcher started.

    The classic case: a Horovod built with Gloo only, run under ``mpirun``, makes every process
    rank 0 of a world of size 1: N independent trainings, no error.
    """
    expected = launcher_world_size(environ)
    if expected is not None and expected != hvd_size:
        raise SystemExit(
            f"Horovod reports {hvd_size} process(es) but the launcher started {expected}. "
            "Horovod was probably built without MPI support and started with mpirun: use "
            "`horovodrun --gloo ...`, or rebuild Horovod with HOROVOD_WITH_MPI=1 "
            "(scripts/setup.sh does it when Open MPI is installed); check with "
            "`horovodrun --check-build`.")


# Horovod cycle on CPU-only hosts (ms): see init_horovod
CPU_CYCLE_TIME_MS = 20
CPU_CYCLE_TIME_MS_SYNCBN = 5


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def init_horovod(sync_bn: bool = False):
    """``hvd.init()`` with our stall and cycle defaults, then the world-size check.

    On CPU-only hosts Horovod's background thread negotiates over Gloo/TCP every cycle
    (default 1 ms) even when idle: measured on 2 cores, each of 2 idle processes spent 2.2 s of
    CPU per 8 s (27 % of a core) doing it, against 0.35 s with a 20 ms cycle. A step whose only
    collectives are the gradient (and logged-loss) all-reduces loses little to a long cycle:
    on the 2-process GN demo step, 0.62 s at 5 ms vs 0.57 s at 20 ms (one process: 0.49 vs
    0.46 s), and a lone 16 MB all-reduce of 140 tensors took 80 ms at 5 ms vs 52 ms at 20 ms
    (fewer, larger fusion rounds). With SyncBN (``sync_bn``) each of the ~40 per-step
    statistics all-reduces waits for a cycle, so 5 ms is kept there (SyncBN demo step 2.5 s at
    1 ms -> 1.8 s at 5 ms). GPU hosts keep Horovod's default; the user's setting always wins.
    """
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "600")
    if not _has_gpu():
        cycle = CPU_CYCLE_TIME_MS_SYNCBN if sync_bn else CPU_CYCLE_TIME_MS
        os.environ.setdefault("HOROVOD_CYCLE_TIME", str(cycle))
    try:
        import horovod.tensorflow as hvd
    except ImportError as e:  # pragma: no cover - depends on the installation
        if (launcher_world_size() or 1) > 1:
            raise SystemExit(f"Started by a multi-process launcher but Horovod is missing: {e}")
        raise SystemExit("Horovod is required (scripts/setup.sh builds it): " + str(e))
    hvd.init()
    check_world_size(hvd.size())
    if _has_gpu() and all_reduce_library(hvd, gpu=True) != "NCCL":
        logger.warning("GPU host, but this Horovod was built without NCCL: every all-reduce "
                       "copies the gradients to host memory. Rebuild it on this host with "
                       "`bash scripts/setup.sh` (HOROVOD_GPU_OPERATIONS=NCCL).")
    return hvd


def all_reduce_library(hvd, gpu: bool) -> str:
    """Which library carries the all-reduces: NCCL for the GPU tensors of a GPU host when
    Horovod was built with it (Horovod then picks it by itself for GPU tensors), else Horovod's
    CPU path, MPI or Gloo, whichever the launcher started."""
    if gpu and hvd.nccl_built():
        return "NCCL"
    return "MPI" if hvd.mpi_enabled() else "Gloo"


def horovod():
    """horovod.tensorflow if it was imported and initialised (`init_horovod`), else None.

    Looking in sys.modules avoids importing Horovod (slow, optional) just to learn that a
    single-process run never initialised it.
    """
    hvd = sys.modules.get("horovod.tensorflow")
    if hvd is None:
        return None
    try:
        return hvd if hvd.is_initialized() else None
    except Exception:  # noqa: BLE001 - a half-initialised Horovod counts as absent
        return None


def horovod_if_distributed():
    """horovod.tensorflow when it is initialised with more than one rank, else None."""
    hvd = horovod()
    try:
        return hvd if hvd is not None and hvd.size() > 1 else None
    except (ValueError, AttributeError):
        return None


def world():
    """(rank, size) of this process; (0, 1) without an initialised Horovod."""
    hvd = horovod()
    return (hvd.rank(), hvd.size()) if hvd is not None else (0, 1)


def barrier(name: str) -> None:
    """Block until every rank reaches the barrier of this name (no-op for a single process)."""
    hvd = horovod_if_distributed()
    if hvd is None:
        return
    import tensorflow as tf

    # The returned sum is read on the host, so the collective has completed on every rank.
    hvd.allreduce(tf.constant([1.0]), op=hvd.Sum, name=name).numpy()


def cpu_cores_for_rank(allowed, local_rank: int, local_size: int):
    """This local rank's equal, disjoint share of the `allowed` CPU cores (sorted list), or None
    when there is nothing to split (one local process, or fewer cores than processes)."""
    allowed = sorted(allowed)
    if local_size <= 1 or len(allowed) < local_size:
        return None
    per_rank = len(allowed) // local_size
    return allowed[local_rank * per_rank:(local_rank + 1) * per_rank]


def set_process_affinity(cores) -> None:
    """Pin every thread of this process to `cores`; threads started later inherit it from the
    thread that starts them. (``os.sched_setaffinity(0, ...)`` alone would pin only the
    calling thread, not the threads Horovod or TensorFlow already started.)"""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def pin_devices(local_rank: int, num_threads: int = 0, local_size: int = 1,
                pin_cpu_cores: bool = False) -> str:
    """Make only this process's GPU visible (memory growth on), or, on a CPU-only host, set
    the thread counts and give each local process its own cores.

    Core pinning (``pin_cpu_cores``, TRAINER.PIN_CPU_CORES, off by default): with
    ``local_size`` processes on one host, local rank r runs on the r-th equal share of the cores
    it may use (its affinity mask, so a launcher's binding is split, never widened). Measured on
    2 cores, paired in one launch (``python scripts/bench/scaling.py``, NOTES.md): no gain for
    the GN/BN demo step, a loss for SyncBN (its Horovod thread must answer ~40 all-reduces a
    step from the core that computes). It is there for larger CPU hosts, where keeping a rank
    on its own cores (and NUMA node) matters. Must run before TensorFlow creates its devices.
    Returns a description for the log.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[local_rank % len(gpus)]
        tf.config.set_visible_devices(gpu, "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
        return f"GPU {gpu.name}"
    where = "CPU"
    cores = None
    if pin_cpu_cores and hasattr(os, "sched_getaffinity"):
        cores = cpu_cores_for_rank(os.sched_getaffinity(0), local_rank, local_size)
    if cores:
        set_process_affinity(cores)
        where = f"CPU cores {','.join(map(str, cores))}"
    if num_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, num_threads)))
        return f"{where}, {num_threads} intra-op threads"
    return f"{where}, TensorFlow's default threads"


class Watchdog:
    """Ends the process when no ``beat()`` came for ``timeout`` seconds (a hang, not a crash).

    A rank blocked forever in a collective (a peer died without the launcher noticing) would
    otherwise hang the job. ``pause()`` is a context manager for legitimately long phases
    (evaluation). The exit is ``os._exit(3)`` because a thread cannot interrupt a blocked op.
    """

    def __init__(self, timeout: float, rank: int = 0, poll: float = 5.0):
        self.timeout, self.rank, self.poll = float(timeout), rank, poll
        self.last = time.monotonic()
        self.iteration = -1
        self.paused = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self.timeout > 0 and self._thread is None:
            self.last = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="tfmrcnn-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, iteration: int):
        self.iteration, self.last = iteration, time.monotonic()

    def stop(self):
        self._stop.set()

    def pause(self):
        watchdog = self

        class _Pause:
            def __enter__(self):
                watchdog.paused += 1

            def __exit__(self, *exc):
                watchdog.paused -= 1
                watchdog.last = time.monotonic()

        return _Pause()

    def _run(self):
        while not self._stop.wait(min(self.poll, self.timeout)):
            if self.paused:
                continue
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                msg = (f"[rank {self.rank}] watchdog: no training step finished for {idle:.0f} s "
                       f"(after iteration {self.iteration}); a peer process probably died or "
                       "hangs. Exiting so that the launcher ends the job.")
                logger.error(msg)
                print(msg, file=sys.stderr, flush=True)
                os._exit(3)

    @classmethod
    def from_env(cls, rank: int):
        return cls(float(os.environ.get("TFMRCNN_WATCHDOG_SECONDS", "1800")), rank)
