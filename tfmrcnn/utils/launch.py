"""The memory allocator every tfmrcnn process runs with, chosen before the process starts.

Why: on CPU hosts glibc's malloc returns TensorFlow's large, short-lived step buffers to the
kernel and faults them back in on the next step. Measured by a user on a 2-core AMD EPYC (60 demo
iterations): glibc 218.9 s wall, 59 s sys, 15.1 M minor page faults; tcmalloc 136.2 s, 3.0 s
sys, 0.29 M. So tcmalloc (Debian's ``libtcmalloc-minimal4``, which scripts/setup.sh and .ci/run
install) is the default wherever it is found; without it a one-line notice says so and glibc is
used. ``TFMRCNN_ALLOCATOR=glibc|tcmalloc|jemalloc`` overrides (jemalloc: ``libjemalloc2``).

An allocator can only replace malloc from the start of a process (``LD_PRELOAD``), so:

* the console entry points (``tfmrcnn-*``) call ``reexec_with_allocator()`` first in ``main``:
  when the process does not already run with the chosen allocator, it replaces itself once
  (``os.execv``, same PID, so launchers do not notice) with ``LD_PRELOAD`` set;
  ``TFMRCNN_ALLOCATOR_REEXEC=1`` marks the second start, which never execs again (and drops
  the mark, so that its own children decide afresh);
* launch scripts (scripts/demo.sh, scripts/train_8gpu.sh) export the same ``LD_PRELOAD`` from
  ``python -m tfmrcnn.utils.launch env`` and pass it to the ranks (``mpirun -x LD_PRELOAD``;
  horovodrun forwards the whole environment), so that ranks start with it and need no exec;
* anything else (the benchmark's worker processes) gets the variables from
  ``allocator_environment()``.

Other ``LD_PRELOAD`` entries are kept; only known allocator libraries are replaced.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import sysconfig
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

CHOICE_VARIABLE = "TFMRCNN_ALLOCATOR"
REEXEC_VARIABLE = "TFMRCNN_ALLOCATOR_REEXEC"
DEFAULT_ALLOCATOR = "tcmalloc"
# Shared libraries of each allocator, preferred first, and the Debian package that ships them.
ALLOCATOR_LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
DEBIAN_PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}
CHOICES = ("glibc",) + tuple(ALLOCATOR_LIBRARIES)
# Launcher variables that give a process's rank: only rank 0 prints the fallback notice.
RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def library_dirs() -> List[str]:
    """Where the dynamic loader's usual libraries are (Debian multiarch first)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/usr/lib",
            "/usr/local/lib", os.path.join(sys.prefix, "lib")]
    return list(dict.fromkeys(dirs))


def find_allocator(name: str, dirs: Optional[Iterable[str]] = None) -> Optional[str]:
    """Path of allocator `name`'s shared library, or None when it is not installed."""
    for directory in (library_dirs() if dirs is None else dirs):
        for library in ALLOCATOR_LIBRARIES[name]:
            path = os.path.join(directory, library)
            if os.path.exists(path):
                return path
    return None


def _is_allocator_library(path: str) -> bool:
    base = os.path.basename(path)
    return any(base.startswith(lib.split(".so")[0] + ".so")
               for libs in ALLOCATOR_LIBRARIES.values() for lib in libs)


def requested_allocator(environ: Mapping[str, str]) -> str:
    """The allocator asked for: ``$TFMRCNN_ALLOCATOR``, else the default."""
    choice = environ.get(CHOICE_VARIABLE, "").strip().lower() or DEFAULT_ALLOCATOR
    if choice not in CHOICES:
        raise SystemExit(f"{CHOICE_VARIABLE}={environ[CHOICE_VARIABLE]!r}: expected one of "
                         + ", ".join(CHOICES))
    return choice


def allocator_environment(environ: Mapping[str, str] = os.environ,
                          dirs: Optional[Iterable[str]] = None
                          ) -> Tuple[Dict[str, Optional[str]], Optional[str]]:
    """(variables, notice): the ``LD_PRELOAD`` a process should start with (None: unset it),
    and a one-line notice when the requested allocator is missing and glibc is used instead."""
    choice = requested_allocator(environ)
    kept = [p for p in environ.get("LD_PRELOAD", "").replace(":", " ").split()
            if not _is_allocator_library(p)]
    notice = None
    library = None
    if choice != "glibc":
        library = find_allocator(choice, dirs)
        if library is None:
            notice = (f"tfmrcnn: {choice} not found (apt-get install "
                      f"{DEBIAN_PACKAGES[choice]}); using glibc malloc, which is much slower "
                      f"for TensorFlow on CPU. {CHOICE_VARIABLE}=glibc silences this.")
    preload = kept + ([library] if library else [])
    return {"LD_PRELOAD": " ".join(preload) if preload else None}, notice


def loaded_allocator(maps_path: str = "/proc/self/maps") -> Optional[str]:
    """Real path of the allocator library mapped into this process, or None (glibc)."""
    try:
        with open(maps_path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and _is_allocator_library(fields[-1]):
                    return os.path.realpath(fields[-1])
    except OSError:
        pass
    return None


def _wanted_library(variables: Mapping[str, Optional[str]]) -> Optional[str]:
    preload = (variables.get("LD_PRELOAD") or "").split()
    found = [p for p in preload if _is_allocator_library(p)]
    return os.path.realpath(found[-1]) if found else None


def _is_rank_zero(environ: Mapping[str, str]) -> bool:
    return all(environ.get(v, "0") == "0" for v in RANK_VARIABLES)


def reexec_with_allocator(argv: Optional[List[str]] = None, environ=None, execv=os.execv,
                          maps_path: str = "/proc/self/maps") -> None:
    """Restart this process once under the chosen allocator (see the module docstring).

    `argv` is the entry point's own argument: a ``main(argv)`` called from Python (a test,
    another program) passes a list and is never restarted; only a command-line start
    (``argv`` None) is, with exactly its original command line (``sys.orig_argv``).
    """
    if argv is not None:
        return
    environ = os.environ if environ is None else environ
    variables, notice = allocator_environment(environ)
    wanted, loaded = _wanted_library(variables), loaded_allocator(maps_path)
    # read and drop the mark: this process's children decide afresh (and restart at most once)
    restarted = environ.pop(REEXEC_VARIABLE, None) == "1"
    if notice and not restarted and _is_rank_zero(environ):
        print(notice, file=sys.stderr, flush=True)
    if wanted == loaded:
        return
    if restarted:   # the loader refused the library: say so once, never exec again
        if _is_rank_zero(environ):
            print(f"tfmrcnn: could not start with allocator {wanted or 'glibc'} (running with "
                  f"{loaded or 'glibc'}); continuing", file=sys.stderr, flush=True)
        return
    for key, value in variables.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    environ[REEXEC_VARIABLE] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, list(sys.orig_argv))


def shell_exports(variables: Mapping[str, Optional[str]]) -> str:
    """``export``/``unset`` lines for a shell's eval."""
    return "\n".join(f"unset {k}" if v is None else f"export {k}={shlex.quote(v)}"
                     for k, v in variables.items())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Allocator environment for launch scripts: `eval \"$(python -m "
                    "tfmrcnn.utils.launch env)\"` exports LD_PRELOAD.")
    parser.add_argument("command", choices=["env", "which"],
                        help="env: shell lines that export the variables; which: the library "
                             "path, or 'glibc'")
    args = parser.parse_args(argv)
    variables, notice = allocator_environment()
    if notice:
        print(notice, file=sys.stderr)
    if args.command == "env":
        print(shell_exports(variables))
    else:
        print(_wanted_library(variables) or "glibc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
