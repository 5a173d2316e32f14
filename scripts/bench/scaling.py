"""Benchmark section: 2-process Horovod weak scaling of the training step on the CPU.

The same training loop (tfmrcnn.engine.trainer.make_train_step: losses, Horovod-averaged
gradients, loss allreduce for the log, SGD) on the shapes demo config (configs/
shapes_demo_cpu.yaml: R18-half + FPN 64, GN, 2 images of 192x256 per process) is launched
with ``horovodrun -np N -H localhost:N --gloo`` for N = 1 and N = 2, each process with 1
intra-op and 1 inter-op thread. Weak scaling: every process keeps its 2 images per step, so
perfect scaling doubles the images/s:

    efficiency = images/s (2 processes) / (2 x images/s (1 process))

images/s = N x 2 images / (median step wall time of rank 0 after warm-up; median over ROUNDS
launches, interleaved), for each backbone norm
in NORMS: GN (the demo's) and BN have no communication inside the forward and backward passes,
SyncBN adds one allreduce per norm layer and direction. A third run per norm starts 2
single-process workers side by side with no Horovod at all: the slower one's images/s against
2 x the single worker's is the ceiling this machine allows (both cores' shared caches and
memory bandwidth), so "weak scaling / ceiling" is the part that communication costs.
cpu_s is the CPU time of rank 0 per step: with a busy machine, the wall numbers measure the
other jobs as much as ours (2 processes need both cores to themselves).

Each worker prints its measurements; the driver side (`run`) starts horovodrun and reads them.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = "SCALING_ROW "
IMAGES_PER_PROCESS = 2
# GN: the demo's norm (no communication in the forward pass); BN: per-process statistics;
# SyncBN: one allreduce per norm layer and direction
NORMS = ("GN", "BN", "SyncBN")
# extra config overrides for every worker ("KEY VALUE ..."), set by the driver's --opts
OPTS_ENV = "TFMRCNN_SCALING_OPTS"
# launches per case: single runs of the same step varied by up to 1.6x on the 2 shared cores
ROUNDS = 3


def _bench_model():
    spec = importlib.util.spec_from_file_location(
        "tfmrcnn_bench_model_helpers", os.path.join(os.path.dirname(__file__), "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(opts):
    """One Horovod rank: build, broadcast, warm up, time `opts.steps` steps."""
    m = _bench_model()
    from tfmrcnn.engine.hvd_utils import init_horovod
    hvd = init_horovod(sync_bn=opts.norm == "SyncBN")
    tf = m.setup_threads(opts.threads, 1)
    from tfmrcnn.engine.solver import WarmupMultiStepLR, build_optimizer
    from tfmrcnn.engine.trainer import make_train_step
    cfg = m.make_cfg(m.DEMO_CONFIG, ["MODEL.RESNETS.NORM", opts.norm]
                     + os.environ.get(OPTS_ENV, "").split())
    model = m.build_model(cfg, seed=0)
    batch = m.synthetic_batch(IMAGES_PER_PROCESS, m.DEMO_HW, 4, 3, seed=hvd.rank())
    optimizer = build_optimizer(cfg, model)
    iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
    step = make_train_step(model, optimizer, WarmupMultiStepLR.from_config(cfg), cfg, hvd,
                           iteration, m.batch_signature(batch))
    hvd.broadcast_variables(list(model.variables) + list(optimizer.slots), root_rank=0)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    t0 = time.perf_counter()
    m.block(step(tensors))
    first = time.perf_counter() - t0
    for _ in range(opts.warmup):
        m.block(step(tensors))
    walls, cpus = [], []
    for _ in range(opts.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        m.block(step(tensors))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    print(MARKER + json.dumps({"rank": hvd.rank(), "size": hvd.size(), "norm": opts.norm,
                               "step_s": statistics.median(walls),
                               "cpu_s": statistics.median(cpus), "first_s": first}),
          flush=True)


def _horovodrun():
    here = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    return here if os.path.exists(here) else shutil.which("horovodrun")


def _worker_cmd(norm: str, steps: int, warmup: int):
    return [sys.executable, os.path.abspath(__file__), "--worker", "--norm", norm,
            "--steps", str(steps), "--warmup", str(warmup)]


def _worker_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def _measurements(stdout: str):
    """The workers' MARKER rows (horovodrun prefixes every line with [rank]<stdout>:)."""
    return [json.loads(line.split(MARKER, 1)[1]) for line in stdout.splitlines() if MARKER in line]


def launch(num_proc: int, norm: str, steps: int, warmup: int, timeout: int = 900):
    """Run `num_proc` ranks under horovodrun --gloo; returns rank 0's measurement (or error)."""
    cmd = [_horovodrun(), "-np", str(num_proc), "-H", f"localhost:{num_proc}", "--gloo",
           *_worker_cmd(norm, steps, warmup)]
    proc = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True,
                          timeout=timeout)
    found = _measurements(proc.stdout)
    rank0 = [r for r in found if r["rank"] == 0]
    if proc.returncode != 0 or not rank0:
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    out = rank0[0]
    out["slowest_rank_step_s"] = max(r["step_s"] for r in found)
    return out


def launch_independent(num_proc: int, norm: str, steps: int, warmup: int, timeout: int = 900):
    """`num_proc` single-process workers at the same time, no Horovod between them: the
    machine's own ceiling for weak scaling (shared caches, memory bandwidth, turbo), which no
    communication setting can beat. Returns the slowest worker's measurement."""
    procs = [subprocess.Popen(_worker_cmd(norm, steps, warmup), env=_worker_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(num_proc)]
    found, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        rows = _measurements(out)
        if proc.returncode == 0 and rows:
            found.extend(rows)
        else:
            errors.append(err[-300:])
    if errors:
        return {"error": errors[0].strip()}
    return max(found, key=lambda r: r["step_s"])


def run(args):
    """The driver's entry point (scripts/benchmark.py scaling [--quick])."""
    if not _horovodrun():
        return [{"case": "horovod", "note": "horovodrun not found (scripts/setup.sh builds it)"}]
    steps = 5 if args.quick else 20
    warmup = 2 if args.quick else 5
    rounds = 1 if args.quick else int(getattr(args, "rounds", None) or ROUNDS)
    rows = []
    for norm in args.norms if getattr(args, "norms", None) else NORMS:
        runs = {}  # (processes, how) -> [measurement per round]
        for _ in range(rounds):  # interleaved, so that a slow spell of the machine hits all
            for n, how in ((1, "horovod"), (2, "horovod"), (2, "independent")):
                r = (launch if how == "horovod" else launch_independent)(n, norm, steps, warmup)
                runs.setdefault((n, how), []).append(r)
        ips = {}
        for (n, how), results in runs.items():
            case = f"demo {norm} {IMAGES_PER_PROCESS} img/proc" + (
                ", 2 independent processes (no Horovod: the machine's ceiling)"
                if how == "independent" else "")
            good = [r for r in results if "error" not in r]
            if not good:
                rows.append({"case": case, "processes": n, "note": "FAILED " + results[0]["error"]})
                continue
            step = statistics.median(r["step_s"] for r in good)
            ips[(n, how)] = n * IMAGES_PER_PROCESS / step
            rows.append({"case": case, "processes": n, "threads": 1, "step_s": step,
                         "cpu_s": statistics.median(r["cpu_s"] for r in good),
                         "images_per_s": ips[(n, how)],
                         "note": f"median of {len(good)} runs, step_s each: "
                                 + " ".join(f"{r['step_s']:.3f}" for r in good)})
        one = ips.get((1, "horovod"))
        for key, label in (((2, "horovod"), "weak scaling"),
                           ((2, "independent"), "ceiling (independent processes)")):
            if one and key in ips:
                rows.append({"case": f"demo {norm} {label}", "processes": 2,
                             "efficiency": ips[key] / (2 * one)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--norm", default="SyncBN")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--norms", nargs="*", default=None, help="driver: norms to measure")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="driver: launches per case")
    p.add_argument("--opts", nargs="*", default=[],
                   help="driver: config overrides for every worker, e.g. MODEL.WINOGRAD False")
    opts = p.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if opts.worker:
        worker(opts)
    else:  # standalone: print the rows
        if opts.opts:
            os.environ[OPTS_ENV] = " ".join(opts.opts)  # inherited by every worker
        args = argparse.Namespace(quick=False, norms=opts.norms, rounds=opts.rounds)
        for row in run(args):
            print(row)


if __name__ == "__main__":
    main()
