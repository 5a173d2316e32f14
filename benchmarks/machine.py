"""The machine line at the top of every benchmark run: CPU model, the ISA extensions that decide
which kernels oneDNN and our ops can use, the memory allocator in use, and the cores.

Figures are only comparable between runs on the same kind of machine: bfloat16 runs on native
instructions with AVX512-BF16 or AMX and is emulated on an AVX2-only host, and tcmalloc or
jemalloc (preloaded) change both the speed and the resident set of allocation-heavy steps.

Read from /proc (Linux); elsewhere the fields say "unknown". The allocator is found by
tfmrcnn.utils.launch (the one home of allocator choice and detection; no TensorFlow import).
"""
from __future__ import annotations

import os

# (label, the /proc/cpuinfo flags that must all be present), in the order printed
ISA_EXTENSIONS = (
    ("AVX2", ("avx2",)),
    ("AVX-512", ("avx512f",)),
    ("AVX512-BF16", ("avx512_bf16",)),
    ("AMX", ("amx_tile", "amx_bf16")),  # the tile unit with its bfloat16 multiply
)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _first_field(cpuinfo: str, key: str):
    """The value of the first ``key : value`` line of /proc/cpuinfo text (None if absent)."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


def cpu_model(cpuinfo: str) -> str:
    return _first_field(cpuinfo, "model name") or "unknown CPU"


def isa_support(cpuinfo: str) -> dict:
    """{label: bool} of ISA_EXTENSIONS from the first processor's "flags" line."""
    flags = set((_first_field(cpuinfo, "flags") or "").split())
    return {label: all(f in flags for f in needed) for label, needed in ISA_EXTENSIONS}


def allocator(maps_path: str = "/proc/self/maps") -> str:
    """The malloc replacement (tcmalloc, jemalloc) mapped into the process whose memory map is
    `maps_path`, as its library's file name; else glibc's malloc."""
    from tfmrcnn.utils.launch import loaded_allocator
    if not os.path.exists(maps_path):
        return "unknown"
    library = loaded_allocator(maps_path)
    return os.path.basename(library) if library else "glibc malloc"


def describe() -> str:
    """One line: ``# machine: <CPU> | ISA: has ...; lacks ... | allocator ... | cpus ...``."""
    cpuinfo = _read("/proc/cpuinfo")
    support = isa_support(cpuinfo)
    has = [k for k, v in support.items() if v]
    lacks = [k for k, v in support.items() if not v]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = "ISA unknown" if not cpuinfo else "ISA: has %s; lacks %s" % (
        ", ".join(has) or "none of them", ", ".join(lacks) or "none")
    return ("# machine: %s | %s | allocator: %s (this process; workers inherit LD_PRELOAD) | "
            "%d cpus online, %d usable by this process" % (
                cpu_model(cpuinfo), isa, allocator(), os.cpu_count(), usable))
