"""Benchmark section: what the memory allocator costs the demo training, glibc's malloc next to
the allocator tfmrcnn runs under by default (tcmalloc, tfmrcnn/utils/launch.py), in one run.

Each allocator gets the same child process: one rank of the CPU demo, i.e. ``tfmrcnn-train``
(``python -m tfmrcnn.cli.train``) with configs/shapes_demo_cpu.yaml at 2 images per step and
1 intra-op thread (what each of the demo's 2 Horovod processes does, without the all-reduce),
its real input pipeline on the shapes set (generated under $TFMRCNN_DATASETS on first use), no
evaluation. It starts with the allocator's LD_PRELOAD (``launch.allocator_environment`` with
TFMRCNN_ALLOCATOR set). The child logs every WARMUP_STEPS iterations; this process reads its
/proc/<pid>/stat when the log line of iteration WARMUP_STEPS - 1 appears and again at the last
one, so start-up, tracing and warm-up stay outside the figures. Rows, per allocator (``case``):

  train step         wall seconds per step; cpu_s: user + system CPU per step
  minor faults/step  page faults served without I/O per step: memory glibc handed back to the
                     kernel and touched again (the demo's images and masks change size every
                     step; a fixed-shape step shows little of it)
  sys CPU share      system / (user + system) CPU time over the steps: the kernel's part

``note`` names the allocator library found mapped in the child (/proc/<pid>/maps), so a row
cannot claim an allocator that the loader did not take.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import common

ALLOCATOR_CHOICES = ("glibc", "tcmalloc")
WARMUP_STEPS = 5
CASE = "demo rank (batch 2, 1 thread)"
_ITER_LINE = re.compile(r"\biter: (\d+)\b")


def read_stat(text: str) -> dict:
    """{"minflt", "utime", "stime"} (faults, seconds) of /proc/<pid>/stat `text`: the whole
    process, all its threads."""
    fields = text.rsplit(")", 1)[1].split()   # after "pid (comm)": field 3 (state) first
    ticks = os.sysconf("SC_CLK_TCK")
    return {"minflt": int(fields[7]), "utime": int(fields[11]) / ticks,
            "stime": int(fields[12]) / ticks}


def per_step(before: dict, after: dict, steps: int, wall: float) -> dict:
    """Per-step figures between two `read_stat` samples `wall` seconds apart."""
    user, system = after["utime"] - before["utime"], after["stime"] - before["stime"]
    return {"seconds": wall / steps, "cpu_s": (user + system) / steps,
            "minor_faults": (after["minflt"] - before["minflt"]) / steps,
            "sys_share": system / (user + system) if user + system > 0 else 0.0}


def worker_environment(choice: str):
    """(environment of the child for allocator `choice`, notice when it is not installed)."""
    from tfmrcnn.utils import launch

    env = common.worker_env(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                            **{launch.CHOICE_VARIABLE: choice})
    variables, notice = launch.allocator_environment(env)
    for key, value in variables.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env, notice


def train_command(output_dir: str, steps: int, python: str = sys.executable):
    """One demo rank's training, WARMUP_STEPS + `steps` iterations, logged every WARMUP_STEPS."""
    from benchmarks.model import DEMO_CONFIG

    return [python, "-m", "tfmrcnn.cli.train", "--config-file", DEMO_CONFIG, "--no-resume",
            f"OUTPUT_DIR={output_dir}", f"SOLVER.MAX_ITER={WARMUP_STEPS + steps}",
            "SOLVER.IMS_PER_BATCH=2", "TRAINER.NUM_THREADS=1",
            f"TRAINER.LOG_PERIOD={WARMUP_STEPS}", f"SOLVER.CHECKPOINT_PERIOD={10 ** 6}",
            "DATASETS.TEST=()"]


def measure(choice: str, steps: int) -> list:
    """Rows of one allocator: a demo-rank training child sampled between two log lines."""
    from tfmrcnn.utils.launch import loaded_allocator

    env, notice = worker_environment(choice)
    case = f"{CASE}, {choice}"
    if notice:
        return [{"group": "allocator", "case": case, "stage": "skipped", "note": notice}]
    first, last = WARMUP_STEPS - 1, WARMUP_STEPS + steps - 1
    samples, tail = {}, []
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen(train_command(out, steps), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        mapped = None
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            match = _ITER_LINE.search(line)
            if match and int(match.group(1)) in (first, last):
                with open(f"/proc/{proc.pid}/stat") as f:
                    samples[int(match.group(1))] = (time.perf_counter(), read_stat(f.read()))
                if mapped is None:
                    mapped = loaded_allocator(f"/proc/{proc.pid}/maps")
        proc.wait()
    if proc.returncode != 0 or len(samples) != 2:
        return [{"group": "allocator", "case": case, "stage": "FAILED",
                 "note": "".join(tail).strip()[-300:]}]
    (t0, before), (t1, after) = samples[first], samples[last]
    figures = per_step(before, after, steps, t1 - t0)
    note = "%s mapped, %d steps after %d" % (mapped or "glibc malloc", steps, WARMUP_STEPS)
    return [{"group": "allocator", "case": case, "stage": "train step",
             "seconds": figures["seconds"], "cpu_s": figures["cpu_s"], "note": note},
            {"group": "allocator", "case": case, "stage": "minor faults/step", "seconds": None,
             "value": figures["minor_faults"]},
            {"group": "allocator", "case": case, "stage": "sys CPU share", "seconds": None,
             "value": figures["sys_share"]}]


def run(args):
    """The driver's entry point (python -m benchmarks allocator [--quick])."""
    steps = 5 if args.quick else 20
    rows = []
    for choice in ALLOCATOR_CHOICES:
        rows += measure(choice, steps)
    return rows
