"""scripts/train_8gpu.sh --dry-run: the exact launch command and what it forwards to the ranks."""
import os
import pathlib
import shlex
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_8gpu.sh"


def _dry_run(*args, **env):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("NCCL_", "HOROVOD_", "TFMRCNN_")) and k != "LD_PRELOAD"}
    full.update(env)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True,
                          text=True, env=full, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    exports = dict(line[len("export "):].split("=", 1) for line in lines[:-1])
    return exports, shlex.split(lines[-1])


def _forwarded(cmd):
    return [cmd[i + 1] for i, word in enumerate(cmd) if word == "-x"]


def test_mpirun_command_forwards_nccl_horovod_and_allocator_settings():
    exports, cmd = _dry_run("configs/mask_rcnn_R_50_FPN_1x.yaml", "OUTPUT_DIR=out/r50",
                            TFMRCNN_ALLOCATOR="glibc", NCCL_SOCKET_IFNAME="eth0",
                            NCCL_IB_DISABLE="1")
    assert cmd[:5] == ["mpirun", "-np", "8", "-H", "localhost:8"]
    assert cmd[-4:] == ["tfmrcnn-train", "--config-file", "configs/mask_rcnn_R_50_FPN_1x.yaml",
                        "OUTPUT_DIR=out/r50"]
    assert "-bind-to" in cmd and cmd[cmd.index("-bind-to") + 1] == "none"
    forwarded = _forwarded(cmd)
    for var in ("PATH", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_DEBUG",
                "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME", "TFMRCNN_ALLOCATOR"):
        assert var in forwarded, var
    assert exports["NCCL_DEBUG"] == "INFO" and exports["NCCL_SOCKET_IFNAME"] == "eth0"
    assert "LD_PRELOAD" not in forwarded        # glibc asked for: no preload to pass on


def test_allocator_preload_reaches_the_ranks(tmp_path):
    from tfmrcnn.utils import launch

    library = launch.find_allocator("tcmalloc")
    exports, cmd = _dry_run("configs/x.yaml", NP="2", NCCL_DEBUG="WARN")
    assert cmd[:5] == ["mpirun", "-np", "2", "-H", "localhost:2"]
    assert exports["NCCL_DEBUG"] == "WARN"      # the user's setting wins
    if library is None:
        assert "LD_PRELOAD" not in _forwarded(cmd)
    else:
        assert "LD_PRELOAD" in _forwarded(cmd) and exports["LD_PRELOAD"] == library


def test_horovodrun_launcher_and_hosts():
    exports, cmd = _dry_run("configs/x.yaml", "SOLVER.MAX_ITER=10", LAUNCHER="horovodrun",
                            NP="16", HOSTS="node1:8,node2:8")
    assert cmd == ["horovodrun", "-np", "16", "-H", "node1:8,node2:8", "tfmrcnn-train",
                   "--config-file", "configs/x.yaml", "SOLVER.MAX_ITER=10"]
    assert exports["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == "600"
