"""The one atomic writer: old file kept on failure, umask respected, stale leftovers removed."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tfmrcnn.utils import file_io
from tfmrcnn.utils.file_io import (STALE_AFTER_S, STALE_OTHER_HOST_AFTER_S, atomic_write,
                                   read_json, remove_stale_temp_files, write_json)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "w.bin")
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["w.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    """Checkpoints and config.yaml used to be 0600 whatever the umask (mkstemp's mode)."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        atomic_write(str(tmp_path / "atomic"), lambda f: f.write(b"x"))
        write_json(str(tmp_path / "j.json"), {"a": 1})
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("plain", "atomic", "j.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == want, name


def test_write_json_replaces_nan_by_null(tmp_path):
    path = str(tmp_path / "m.json")
    write_json(path, {"AP": float("nan"), "n": [1.5, float("inf")]})
    assert read_json(path) == {"AP": None, "n": [1.5, None]}
    assert json.loads(open(path).read()) == {"AP": None, "n": [1.5, None]}


_KILLED_MID_WRITE = """
import os, signal, sys
from tfmrcnn.utils.file_io import atomic_write

def write(f):
    f.write(b"half of a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)   # like a machine failure: no clean-up at all

atomic_write(sys.argv[1], write)
"""


def _age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_leftover_of_a_killed_writer_is_removed_by_the_next_writer(tmp_path, repo_root):
    folder = tmp_path / "out"
    folder.mkdir()
    out = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(folder / "model.npz")],
                         env=dict(os.environ, PYTHONPATH=str(repo_root)), timeout=120)
    assert out.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(folder) if n.startswith(file_io.TEMP_PREFIX)]
    assert len(leftovers) == 1 and not (folder / "model.npz").exists()
    # a recent leftover could belong to a writer that is still running: kept
    assert remove_stale_temp_files(str(folder)) == []
    _age(folder / leftovers[0], STALE_AFTER_S + 1)
    # the next writer of this folder (first write of this process there) cleans up
    atomic_write(str(folder / "config.yaml"), lambda f: f.write(b"a: 1\n"))
    assert sorted(os.listdir(folder)) == ["config.yaml"]


def test_only_our_dead_writers_files_are_stale(tmp_path):
    host = socket.gethostname()
    alive = f".tmp-{host}-{os.getpid()}-0123abcd-model.npz"            # this very process
    other_host_recent = ".tmp-elsewhere-7-0123abcd-model.npz"           # cannot tell: keep
    other_host_old = ".tmp-elsewhere-8-89abcdef-model.npz"
    not_ours = ".tmp-notes.txt"
    dead_pid = _a_dead_pid()
    dead = f".tmp-{host}-{dead_pid}-deadbeef-last_checkpoint"
    for name in (alive, other_host_recent, other_host_old, not_ours, dead):
        (tmp_path / name).write_bytes(b"x")
        _age(tmp_path / name, STALE_AFTER_S + 1)
    _age(tmp_path / other_host_old, STALE_OTHER_HOST_AFTER_S + 1)
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted([other_host_old, dead])
    assert sorted(os.listdir(tmp_path)) == sorted([alive, other_host_recent, not_ours])


def _a_dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
