"""Benchmark section: 2-process Horovod weak scaling of the training step on the CPU.

The training step (tfmrcnn.engine.trainer.make_train_step: losses, Horovod-averaged gradients,
loss allreduce for the log, SGD) on the shapes demo config (configs/shapes_demo_cpu.yaml:
R18-half + FPN 64, 2 images of 192x256 per process), each process with 1 intra-op and 1
inter-op thread. Weak scaling: every process keeps its 2 images per step, so perfect scaling
doubles the images/s:

    efficiency = images/s (2 processes) / (2 x images/s (1 process)) = t_single / t_horovod

The driver also measures GN at LARGER_BATCH images per process: the gradients all-reduced per
step are the same 16 MB, so this shows how much of the loss is a per-step cost of Horovod.

Why one launch with interleaved phases: this VM's speed drifts by up to 2x within a minute
(the same single-process step read 0.32 s and 0.67 s in one run, session 4), so comparing a
1-process launch with a 2-process launch made a minute later measured the machine, not Horovod
(sessions 2 and 3 read 93.5 % and 77.7 % with the same code). Instead ONE ``horovodrun -np 2``
launch alternates four phases of STEPS_PER_PHASE steps (first step of each phase dropped),
ROUNDS times, in rotating order:

  horovod         both ranks run the real step (gradients and logged losses averaged by
                  Horovod), every thread free to run on both cores (the default);
  horovod pinned  the same with each rank pinned to its own core (TRAINER.PIN_CPU_CORES True);
  single          rank 0 runs the same step without any Horovod op (identity all-reduce) while
                  rank 1 waits in a barrier: the 1 process x 1 thread baseline, slightly
                  flattered (its side threads may use the idle core, and a 1-process Horovod
                  run would still pay its background thread);
  independent     both ranks run the step without Horovod at the same time: the machine's own
                  ceiling (shared caches, memory bandwidth, the host's other tenants), which no
                  communication setting can beat.

Each round gives t_single / t for the other phases; the table reports their median over rounds
with the spread. SyncBN's "single" and "independent" steps use BN (SyncBN on 1 rank computes the
same batch statistics) because SyncBN's all-reduce is inside the layers. Pinning is switched
for all threads of the process (tfmrcnn.distributed.set_process_affinity) around that phase.

Each worker prints its measurements; the driver side (`run`) starts horovodrun and reads them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks.common import DEMO_HW, module_command, synthetic_batch, worker_env
from benchmarks.model import (DEMO_CONFIG, batch_signature, block, build_model, make_cfg,
                              setup_threads)

MARKER = "SCALING_ROW "
IMAGES_PER_PROCESS = 2  # the demo's; the driver also measures GN at LARGER_BATCH
LARGER_BATCH = 4
# GN: the demo's norm (no communication in the forward pass); BN: per-process statistics;
# SyncBN: one allreduce per norm layer and direction
NORMS = ("GN", "BN", "SyncBN")
# extra config overrides for every worker ("KEY VALUE ..."), set by the driver's --opts
OPTS_ENV = "TFMRCNN_SCALING_OPTS"
PHASES = ("horovod", "horovod pinned", "single", "independent")
ROUNDS = 8
STEPS_PER_PHASE = 5


class _NoHorovod:
    """The part of ``horovod.tensorflow`` that make_train_step uses, for one process alone:
    the all-reduces are the identity and the tape is TensorFlow's own."""

    def __init__(self, hvd):
        self.Compression, self.Average = hvd.Compression, hvd.Average
        self.rank = hvd.rank  # keys the step's random draws (tfmrcnn.modeling.sampling)

    @staticmethod
    def DistributedGradientTape(tape, **kwargs):  # noqa: N802 - horovod's name
        return tape

    @staticmethod
    def allreduce(tensor, **kwargs):
        return tensor


def _build_step(tf, cfg, hvd, batch, seed):
    from tfmrcnn.engine.solver import WarmupMultiStepLR, build_optimizer
    from tfmrcnn.engine.trainer import make_train_step
    model = build_model(cfg, seed=seed)
    optimizer = build_optimizer(cfg, model)
    iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
    step = make_train_step(model, optimizer, WarmupMultiStepLR.from_config(cfg), cfg, hvd,
                           iteration, batch_signature(batch))
    return step, list(model.variables) + list(optimizer.slots)


def worker(opts):
    """One of the 2 Horovod ranks: build both steps, then the interleaved phases."""
    from tfmrcnn.distributed import cpu_cores_for_rank, init_horovod, set_process_affinity
    hvd = init_horovod(sync_bn=opts.norm == "SyncBN")
    rank = hvd.rank()
    all_cores = sorted(os.sched_getaffinity(0))
    my_cores = cpu_cores_for_rank(all_cores, hvd.local_rank(), hvd.local_size()) or all_cores
    tf = setup_threads(opts.threads, 1)
    extra = os.environ.get(OPTS_ENV, "").split()
    batch = synthetic_batch(opts.images, DEMO_HW, 4, 3, seed=rank)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    dist_cfg = make_cfg(DEMO_CONFIG, ["MODEL.RESNETS.NORM", opts.norm] + extra)
    alone_norm = "BN" if opts.norm == "SyncBN" else opts.norm
    alone_cfg = make_cfg(DEMO_CONFIG, ["MODEL.RESNETS.NORM", alone_norm] + extra)
    dist_step, dist_vars = _build_step(tf, dist_cfg, hvd, batch, seed=0)
    hvd.broadcast_variables(dist_vars, root_rank=0)
    alone_step, _ = _build_step(tf, alone_cfg, _NoHorovod(hvd), batch, seed=0)

    def barrier():
        hvd.allreduce(tf.zeros(()), name="scaling_barrier").numpy()

    def timed(step, n):
        walls, cpus = [], []
        for _ in range(n + 1):  # the first step after a phase switch is dropped
            w0, c0 = time.perf_counter(), time.process_time()
            block(step(tensors))
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        return statistics.median(walls[1:]), statistics.median(cpus[1:])

    for step in (dist_step, alone_step):  # trace and warm up
        for _ in range(opts.warmup):
            block(step(tensors))
        barrier()
    runs = {phase: [] for phase in PHASES}  # phase -> [(wall, cpu) per round]
    for r in range(opts.rounds):
        for phase in PHASES[r % len(PHASES):] + PHASES[:r % len(PHASES)]:
            barrier()
            if phase == "horovod pinned":
                set_process_affinity(my_cores)
            if phase.startswith("horovod"):
                runs[phase].append(timed(dist_step, opts.steps))
            elif phase == "independent" or rank == 0:
                runs[phase].append(timed(alone_step, opts.steps))
            set_process_affinity(all_cores)
            barrier()  # rank 1 waits here during rank 0's "single" phase
    print(MARKER + json.dumps({"rank": rank, "size": hvd.size(), "norm": opts.norm,
                               "cores": my_cores, "runs": runs}), flush=True)


def _horovodrun():
    here = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    return here if os.path.exists(here) else shutil.which("horovodrun")


def _measurements(stdout: str):
    """The workers' MARKER rows (horovodrun prefixes every line with [rank]<stdout>:)."""
    return [json.loads(line.split(MARKER, 1)[1]) for line in stdout.splitlines() if MARKER in line]


def launch(norm: str, rounds: int, steps: int, warmup: int, images: int = IMAGES_PER_PROCESS,
           timeout: int = 1800):
    """One ``horovodrun -np 2 --gloo`` launch; returns the two ranks' rows (or an error)."""
    cmd = [_horovodrun(), "-np", "2", "-H", "localhost:2", "--gloo"] + module_command(
        "scaling", "--worker", "--norm", norm, "--rounds", rounds, "--steps", steps,
        "--warmup", warmup, "--images", images)
    proc = subprocess.run(cmd, env=worker_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                          text=True, timeout=timeout)
    found = sorted(_measurements(proc.stdout), key=lambda r: r["rank"])
    if proc.returncode != 0 or len(found) != 2:
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    return found


def summarize(norm: str, ranks, images: int = IMAGES_PER_PROCESS):
    """Table rows from the two ranks' per-round (wall, cpu) medians."""
    label = f"demo {norm}" + ("" if images == IMAGES_PER_PROCESS else f" {images} images/process")
    r0, r1 = ranks[0]["runs"], ranks[1]["runs"]
    walls = {"single": [w for w, _ in r0["single"]]}   # phase -> per-round step time
    for phase in PHASES:
        if phase != "single":  # both ranks ran: the step is as slow as the slower rank
            walls[phase] = [max(a[0], b[0]) for a, b in zip(r0[phase], r1[phase])]
    rows = []
    for phase in PHASES:
        n = 1 if phase == "single" else 2
        step = statistics.median(walls[phase])
        rows.append({"case": f"{label} {phase}", "processes": n, "threads": 1,
                     "step_s": step, "cpu_s": statistics.median(c for _, c in r0[phase]),
                     "images_per_s": n * images / step,
                     "note": "median over rounds, each round's step_s: "
                             + " ".join(f"{w:.3f}" for w in walls[phase])})
    for phase, what in (("horovod", "weak scaling"),
                        ("horovod pinned", "weak scaling, ranks pinned to cores"),
                        ("independent", "ceiling (independent processes)")):
        ratios = sorted(s / o for s, o in zip(walls["single"], walls[phase]))
        rows.append({"case": f"{label} {what}", "processes": 2,
                     "efficiency": statistics.median(ratios),
                     "note": f"median of {len(ratios)} rounds' t_single/t; "
                             f"range {ratios[0]:.3f}-{ratios[-1]:.3f}"})
    return rows


def run(args):
    """The driver's entry point (python -m benchmarks scaling [--quick])."""
    if not _horovodrun():
        return [{"case": "horovod", "note": "horovodrun not found (scripts/setup.sh builds it)"}]
    rounds = 4 if args.quick else int(getattr(args, "rounds", None) or ROUNDS)
    steps = 2 if args.quick else STEPS_PER_PHASE
    warmup = 2 if args.quick else 3
    # the demo's batch for every norm; GN (the demo's norm) also at a larger per-process batch,
    # which shows how the per-step communication cost amortises (not in quick runs)
    cases = [(norm, IMAGES_PER_PROCESS) for norm in (getattr(args, "norms", None) or NORMS)]
    cases += [("GN", n) for n in (getattr(args, "larger_batches", None) or
                                  ([] if args.quick else [LARGER_BATCH]))
              if n != IMAGES_PER_PROCESS]
    rows = []
    for norm, images in cases:
        found = launch(norm, rounds, steps, warmup, images)
        if isinstance(found, dict):
            rows.append({"case": f"demo {norm}", "note": "FAILED " + found["error"]})
        else:
            rows.extend(summarize(norm, found, images))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--norm", default="GN")
    p.add_argument("--steps", type=int, default=STEPS_PER_PHASE, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--norms", nargs="*", default=None, help="driver: norms to measure")
    p.add_argument("--images", type=int, default=IMAGES_PER_PROCESS,
                   help="worker: images per process")
    p.add_argument("--larger-batches", type=int, nargs="*", default=None,
                   help="driver: images per process of the extra GN cases (default %d; none in "
                        "--quick)" % LARGER_BATCH)
    p.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of the four phases")
    p.add_argument("--quick", action="store_true", help="driver: 4 rounds of 2 steps (smoke test)")
    p.add_argument("--opts", nargs="*", default=[],
                   help="driver: config overrides for every worker, e.g. MODEL.WINOGRAD False")
    opts = p.parse_args(argv)
    if opts.worker:
        worker(opts)
    else:  # standalone: print the rows
        if opts.opts:
            os.environ[OPTS_ENV] = " ".join(opts.opts)  # inherited by every worker
        args = argparse.Namespace(quick=opts.quick, norms=opts.norms, rounds=opts.rounds,
                                  larger_batches=opts.larger_batches)
        for row in run(args):
            print(row)


if __name__ == "__main__":
    main()
