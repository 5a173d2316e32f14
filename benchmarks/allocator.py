"""Benchmark section: what the memory allocator costs the demo training step, glibc's malloc next
to the allocator tfmrcnn runs under by default (tcmalloc, tfmrcnn/utils/launch.py), in one run.

Each allocator gets the same worker process (``python -m benchmarks.allocator --worker``)
started with its LD_PRELOAD (from ``launch.allocator_environment`` with TFMRCNN_ALLOCATOR set),
one after the other, 2 intra-op threads. The worker builds the shapes demo model
(configs/shapes_demo_cpu.yaml, R18-half, GN), warms its compiled training step up at batch 2
(192x256, 4 instances), then runs ``--steps`` steps. Rows, per allocator (``case``):

  train step         median wall seconds of a step; cpu_s: user + system CPU per step
  minor faults/step  page faults served without I/O per step (getrusage ru_minflt): memory
                     handed back to the kernel and touched again
  sys CPU share      system / (user + system) CPU time over the steps: the kernel's part

``note`` names the allocator library the worker found mapped (/proc/self/maps), so a row can
not claim an allocator that the loader did not take.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

from benchmarks import common

ALLOCATOR_CHOICES = ("glibc", "tcmalloc")


def usage_per_step(before, after, steps: int) -> dict:
    """Per-step figures between two ``resource.getrusage`` results over `steps` steps."""
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    return {"cpu_s": (user + system) / steps,
            "minor_faults": (after.ru_minflt - before.ru_minflt) / steps,
            "sys_share": system / (user + system) if user + system > 0 else 0.0}


def worker_environment(choice: str):
    """(environment of the worker for allocator `choice`, notice when it is not installed)."""
    from tfmrcnn.utils import launch

    env = common.worker_env(TF_CPP_MIN_LOG_LEVEL="2", **{launch.CHOICE_VARIABLE: choice})
    variables, notice = launch.allocator_environment(env)
    for key, value in variables.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env, notice


def group_step(opts):
    """The worker: the demo training step, timed with its faults and system time."""
    import tensorflow as tf

    from benchmarks.model import (DEMO_CONFIG, batch_signature, block, build_model, make_cfg,
                                  make_train_step)
    from tfmrcnn.utils.launch import loaded_allocator

    cfg = make_cfg(DEMO_CONFIG)
    model = build_model(cfg)
    batch = common.synthetic_batch(2, common.DEMO_HW, 4, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    step = make_train_step(model, cfg, batch_signature(batch))
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    for _ in range(opts.warmup):
        block(step(tensors))
    walls = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(opts.steps):
        t0 = time.perf_counter()
        block(step(tensors))
        walls.append(time.perf_counter() - t0)
    usage = usage_per_step(before, resource.getrusage(resource.RUSAGE_SELF), opts.steps)
    case = "demo train batch 2, " + opts.allocator
    note = "%s mapped, %d steps" % (loaded_allocator() or "glibc malloc", opts.steps)
    common.print_row(group="allocator", case=case, stage="train step",
                     seconds=statistics.median(walls), cpu_s=usage["cpu_s"], note=note)
    common.print_row(group="allocator", case=case, stage="minor faults/step", seconds=None,
                     value=usage["minor_faults"])
    common.print_row(group="allocator", case=case, stage="sys CPU share", seconds=None,
                     value=usage["sys_share"])


def worker_main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--allocator", choices=ALLOCATOR_CHOICES, required=True,
                        help="label of the rows (the environment chose the library)")
    parser.add_argument("--steps", type=int, default=20)
    opts = common.add_worker_arguments(parser).parse_args(argv)
    from benchmarks.model import setup_threads

    setup_threads(opts.threads, opts.inter_threads)
    group_step(opts)


def run(args):
    """The driver's entry point (python -m benchmarks allocator [--quick])."""
    steps = 5 if args.quick else 20
    rows = []
    for choice in ALLOCATOR_CHOICES:
        env, notice = worker_environment(choice)
        if notice:
            rows.append({"group": "allocator", "case": "demo train batch 2, " + choice,
                         "stage": "skipped", "note": notice})
            continue
        cmd = common.module_command("allocator", "--worker", "--allocator", choice, "--steps",
                                    steps, "--warmup", max(1, min(args.warmup, 3)))
        rows += common.run_worker(cmd, "allocator", env=env)
    return rows


if __name__ == "__main__":
    worker_main()
