#!/usr/bin/env python
"""tfmrcnn's benchmark driver: ``python scripts/benchmark.py [SECTION ...] [--repeats N]``.

Each section is a module scripts/bench/<section>.py exposing ``run(args) -> list of rows``; a row
is a dict {column: value} (str, int or float; floats print with 4 significant digits) and the
driver prints all rows of all sections as one table, prefixed by the section name, under a
header with the machine's load average, TensorFlow version and thread settings. No section
given = every module in scripts/bench/ whose name does not start with "_".

Sections time their work with ``args.time(fn)``: it calls fn() ``args.warmup`` times, then
``args.repeats`` times, waits for any returned tensors, and returns the median time in seconds:
wall time, or with ``--clock cpu`` the CPU time of the whole process (all threads), which is the
steadier number on a machine shared with other jobs. ``args.quick`` asks for smaller problem sizes (for smoke tests). These are numbers to
read, not timed tests: nothing here asserts a speed.

After the table comes the issue's target table (scripts/bench/_targets.py), filled from the rows
of the sections that ran: ours next to detectron2 / torchvision measured in the same run
(section `reference`, which needs ``bash scripts/setup_reference.sh`` once).
"""
import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available_sections():
    return sorted(f[:-3] for f in os.listdir(BENCH_DIR)
                  if f.endswith(".py") and not f.startswith("_"))


def load_section(name):
    path = os.path.join(BENCH_DIR, name + ".py")
    if not os.path.exists(path):
        sys.exit("unknown section %r; available: %s" % (name, ", ".join(available_sections())))
    spec = importlib.util.spec_from_file_location("tfmrcnn_bench_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(result):
    """Wait for (nested) tensors so that asynchronous execution is inside the timing.

    Reads one element of each tensor: that waits for the op that produced it, while `.numpy()`
    of the whole tensor would add a host copy that is not the op's time (for the (512, 14, 14,
    256) ROIAlign output, 103 MB: ~50 ms on top of a ~45 ms op, measured in session 2).
    """
    import tensorflow as tf
    for t in tf.nest.flatten(result):
        if isinstance(t, tf.Tensor):
            tf.reshape(t, [-1])[:1].numpy()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_time(fn, repeats, warmup, clock="wall"):
    now = CLOCKS[clock]
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(repeats):
        start = now()
        _block(fn())
        times.append(now() - start)
    return statistics.median(times)


def _fmt(v):
    if isinstance(v, float):
        return "%.4g" % v
    return "" if v is None else str(v)


def format_table(rows):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [columns] + [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def header():
    import tensorflow as tf
    thr = tf.config.threading
    return ("# %s | %s, %d cpus, load average %s | TF %s | intra-op threads %s, inter-op %s "
            "(0 = TF default)" % (
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), platform.node(),
                os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg()), tf.__version__,
                thr.get_intra_op_parallelism_threads(), thr.get_inter_op_parallelism_threads()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help="default: all of %s" % available_sections())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or CPU time of the process (all threads)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # sections build many tf.functions: no retracing notes
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    args.time = lambda fn: median_time(fn, args.repeats, args.warmup, args.clock)
    rows = []
    for name in args.sections or available_sections():
        for row in load_section(name).run(args):
            rows.append(dict(section=name, **row))
    print(header())
    print("# seconds of %s time, median of %d repeats after %d warm-up calls"
          % (args.clock, args.repeats, args.warmup))
    print(format_table(rows))
    targets = load_section("_targets").target_table(rows)
    if targets:
        print("\n# the performance issue's targets, from the rows above (scripts/bench/_targets.py:"
              " each target is also scaled to this run's detectron2 / torchvision figure)"
              + (" -- QUICK SIZES, not the issue's problems" if args.quick else ""))
        print(format_table(targets))
    return rows


if __name__ == "__main__":
    main()
