"""tfmrcnn.utils.launch: allocator choice, the fallback notice, one restart at most."""
import os
import subprocess
import sys

import pytest

from tfmrcnn.utils import launch

TCMALLOC = launch.find_allocator("tcmalloc")


def _fake_library_dir(tmp_path, name="libtcmalloc_minimal.so.4"):
    (tmp_path / name).write_bytes(b"")
    return [str(tmp_path)]


def test_default_is_tcmalloc_and_other_preloads_are_kept(tmp_path):
    dirs = _fake_library_dir(tmp_path)
    env = {"LD_PRELOAD": "/opt/libhook.so /usr/lib/libjemalloc.so.2"}
    variables, notice = launch.allocator_environment(env, dirs)
    assert notice is None
    assert variables["LD_PRELOAD"].split() == ["/opt/libhook.so",
                                               str(tmp_path / "libtcmalloc_minimal.so.4")]


def test_glibc_override_removes_only_the_allocator(tmp_path):
    dirs = _fake_library_dir(tmp_path)
    env = {"TFMRCNN_ALLOCATOR": "glibc",
           "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/opt/libhook.so"}
    variables, notice = launch.allocator_environment(env, dirs)
    assert variables == {"LD_PRELOAD": "/opt/libhook.so"} and notice is None
    env["LD_PRELOAD"] = "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"
    assert launch.allocator_environment(env, dirs)[0] == {"LD_PRELOAD": None}


def test_missing_library_falls_back_to_glibc_with_a_one_line_notice(tmp_path):
    variables, notice = launch.allocator_environment({"TFMRCNN_ALLOCATOR": "jemalloc"},
                                                     [str(tmp_path)])
    assert variables == {"LD_PRELOAD": None}
    assert "\n" not in notice and "jemalloc not found" in notice and "libjemalloc2" in notice


def test_unknown_allocator_is_an_error_naming_the_choices():
    with pytest.raises(SystemExit, match="glibc, tcmalloc, jemalloc"):
        launch.allocator_environment({"TFMRCNN_ALLOCATOR": "mimalloc"})


def test_loaded_allocator_reads_the_process_maps(tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text("7f0000000000-7f0000001000 r-xp 00000000 08:01 42 %s\n"
                    "7f0000002000-7f0000003000 r-xp 00000000 08:01 43 /usr/lib/libc.so.6\n" % lib)
    assert launch.loaded_allocator(str(maps)) == str(lib)
    maps.write_text("7f0000002000-7f0000003000 r-xp 00000000 08:01 43 /usr/lib/libc.so.6\n")
    assert launch.loaded_allocator(str(maps)) is None


class _Exec:
    def __init__(self):
        self.calls = []

    def __call__(self, path, argv):
        self.calls.append((path, argv))


def test_restart_sets_preload_and_marks_the_second_start(tmp_path, monkeypatch):
    dirs = _fake_library_dir(tmp_path)
    monkeypatch.setattr(launch, "library_dirs", lambda: dirs)
    maps = tmp_path / "maps"
    maps.write_text("")
    env, execv = {}, _Exec()
    launch.reexec_with_allocator(None, env, execv, str(maps))
    assert execv.calls == [(sys.executable, list(sys.orig_argv))]
    assert env["LD_PRELOAD"] == str(tmp_path / "libtcmalloc_minimal.so.4")
    assert env["TFMRCNN_ALLOCATOR_REEXEC"] == "1"


def test_no_second_restart_when_the_loader_refused_the_library(tmp_path, monkeypatch, capsys):
    dirs = _fake_library_dir(tmp_path)
    monkeypatch.setattr(launch, "library_dirs", lambda: dirs)
    maps = tmp_path / "maps"
    maps.write_text("")
    env, execv = {"TFMRCNN_ALLOCATOR_REEXEC": "1"}, _Exec()
    launch.reexec_with_allocator(None, env, execv, str(maps))
    assert execv.calls == []
    assert "could not start with allocator" in capsys.readouterr().err
    assert "TFMRCNN_ALLOCATOR_REEXEC" not in env   # children decide afresh


def test_missing_library_prints_the_notice_and_does_not_restart(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "library_dirs", lambda: [str(tmp_path)])
    maps = tmp_path / "maps"
    maps.write_text("")
    execv = _Exec()
    launch.reexec_with_allocator(None, {}, execv, str(maps))
    assert execv.calls == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tcmalloc not found" in err
    # ranks other than 0 stay quiet
    launch.reexec_with_allocator(None, {"OMPI_COMM_WORLD_RANK": "3"}, execv, str(maps))
    assert capsys.readouterr().err == ""


def test_main_called_from_python_never_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "library_dirs", lambda: _fake_library_dir(tmp_path))
    execv = _Exec()
    launch.reexec_with_allocator(["--config-file", "x.yaml"], {}, execv)
    assert execv.calls == []


_PROBE = ("import os, sys; print('start', flush=True);"
          "from tfmrcnn.utils.launch import reexec_with_allocator, loaded_allocator;"
          "reexec_with_allocator();"
          "print('allocator', loaded_allocator());"
          "print('mark', os.environ.get('TFMRCNN_ALLOCATOR_REEXEC'))")


def _probe(**env):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    full = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "TFMRCNN_ALLOCATOR", "TFMRCNN_ALLOCATOR_REEXEC")}
    full.update(PYTHONPATH=root, **env)
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          env=full, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), proc.stderr


def test_a_real_process_restarts_once_under_tcmalloc_then_back_under_glibc():
    if TCMALLOC is None:
        pytest.fail("libtcmalloc-minimal4 is part of the tested stack (.ci/run installs it)")
    lines, _ = _probe()
    assert lines == ["start", "start", f"allocator {os.path.realpath(TCMALLOC)}", "mark None"]
    # inherited preload + glibc asked for: one restart without it
    lines, _ = _probe(LD_PRELOAD=TCMALLOC, TFMRCNN_ALLOCATOR="glibc")
    assert lines == ["start", "start", "allocator None", "mark None"]
    # already running under the chosen allocator: no restart
    lines, _ = _probe(LD_PRELOAD=TCMALLOC)
    assert lines == ["start", f"allocator {os.path.realpath(TCMALLOC)}", "mark None"]


def test_shell_env_command_exports_for_launch_scripts(tmp_path):
    assert launch.shell_exports({"LD_PRELOAD": "/a b/lib.so"}) == "export LD_PRELOAD='/a b/lib.so'"
    assert launch.shell_exports({"LD_PRELOAD": None}) == "unset LD_PRELOAD"
