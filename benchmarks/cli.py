"""tfmrcnn's benchmark driver: python -m benchmarks [SECTION ...] [--repeats N] [--quick].

``python scripts/benchmark.py ...`` is the same.

Each section is a module benchmarks/<section>.py (SECTIONS) exposing ``run(args) -> list of
rows``; a row is a dict {column: value} (str, int or float; floats print with 4 significant
digits) and the driver prints all rows of all sections as one table, prefixed by the section
name, under two header lines: the time, host, load average, TensorFlow version and thread
settings; and the machine (benchmarks/machine.py: CPU model, ISA extensions, allocator, cores).
No section given = all of them but those of ON_REQUEST (architectures: ours next to
detectron2 per architecture, benchmarks/architectures.py).

Sections time their work with ``args.time(fn)``: it calls fn() ``args.warmup`` times, then
``args.repeats`` times, waits for any returned tensors, and returns the median time in seconds:
wall time, or with ``--clock cpu`` the CPU time of the whole process (all threads), which is the
steadier number on a machine shared with other jobs. ``args.quick`` asks for smaller problem
sizes (for smoke tests). These are numbers to read, not timed tests: nothing here asserts a
speed.

After the table comes the comparison (benchmarks/compare.py): ours next to detectron2 (and
torchvision's ROIAlign, detectron2's kernel) measured in the same run by section `reference`
(which needs ``bash scripts/setup_reference.sh`` once), with their ratio.
"""
import argparse
import importlib
import os
import platform
import time

from benchmarks import machine
from benchmarks.common import time_calls
from benchmarks.compare import comparison_table

# the modules of benchmarks/ that are sections, in the order they run
SECTIONS = ("allocator", "architectures", "conv3x3", "input_pipeline", "model", "paste",
            "reference", "roi_align", "scaling", "small_images")
# sections run only when named: `architectures` repeats the model and reference sections' R50
# and X101 inference among its seven architectures, and takes about as long as the rest together
ON_REQUEST = ("architectures",)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ON_REQUEST)


def load_section(name):
    return importlib.import_module("benchmarks." + name)


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


CLOCKS = ("wall", "cpu")


def median_time(fn, repeats, warmup, clock="wall"):
    """Median seconds of fn() (waited for) on `clock` after `warmup` calls."""
    wall, cpu = time_calls(fn, repeats, warmup, wait=_block)
    return wall if clock == "wall" else cpu


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
    parser.add_argument("sections", nargs="*", help="default: all of %s; on request: %s" % (
        ", ".join(DEFAULT_SECTIONS), ", ".join(ON_REQUEST)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or CPU time of the process (all threads)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error("unknown section(s) %s; available: %s" % (", ".join(unknown),
                                                               ", ".join(SECTIONS)))
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (tfmrcnn/utils/launch.py)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # sections build many tf.functions: no retracing notes
    args.time = lambda fn: median_time(fn, args.repeats, args.warmup, args.clock)
    rows = []
    for name in args.sections or DEFAULT_SECTIONS:
        for row in load_section(name).run(args):
            rows.append(dict(section=name, **row))
    print(header())
    print(machine.describe())
    print("# seconds of %s time, median of %d repeats after %d warm-up calls"
          % (args.clock, args.repeats, args.warmup))
    print(format_table(rows))
    comparison = comparison_table(rows)
    if comparison:
        print("\n# ours next to the reference measured in this run (benchmarks/compare.py); "
              "reference / ours > 1: ours takes less" + (" -- QUICK SIZES" if args.quick else ""))
        print(format_table(comparison))
    return rows
