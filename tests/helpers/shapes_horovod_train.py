"""tfmrcnn-train under `horovodrun -np 2 --gloo` on the shapes set, for the slow smoke tests of
new architectures: the demo config (configs/shapes_demo_cpu.yaml) with smaller images, fewer
proposals and samples, no evaluation, a log line per iteration, and the caller's overrides."""
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]

SMALL = ("SOLVER.WARMUP_ITERS=2", "SOLVER.STEPS=()", "SOLVER.CHECKPOINT_PERIOD=4",
         "TRAINER.LOG_PERIOD=1", "TRAINER.NUM_THREADS=1", "DATASETS.TEST=()",
         "INPUT.MIN_SIZE_TRAIN=(128,)", "INPUT.MAX_SIZE_TRAIN=192",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN=64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=32")


def horovod_train(out_dir, max_iter: int, *overrides, timeout: int = 900) -> str:
    """Trains (or resumes) in out_dir up to max_iter; returns out_dir/log.txt's text. The
    shapes set is generated once into a shared, file-locked folder."""
    bin_dir = pathlib.Path(sys.executable).parent
    cmd = [str(bin_dir / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
           str(bin_dir / "tfmrcnn-train"), "--config-file",
           str(ROOT / "configs" / "shapes_demo_cpu.yaml"), "--num-vis", "0",
           f"OUTPUT_DIR={out_dir}", f"SOLVER.MAX_ITER={max_iter}", *SMALL, *overrides]
    shapes = os.path.join(tempfile.gettempdir(), "tfmrcnn_test_shapes")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT),
               TFMRCNN_SHAPES_DIR=os.environ.get("TFMRCNN_SHAPES_DIR", shapes),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (pathlib.Path(out_dir) / "log.txt").read_text()


def logged(log_text: str):
    """{iteration: {name: logged value}} of the 'iter: N  name: value ... time:' lines."""
    out = {}
    for m in re.finditer(r"iter: (\d+)\s+(.*?)\s+time:", log_text):
        fields = m.group(2).split()
        out[int(m.group(1))] = {k.rstrip(":"): float(v) for k, v in zip(fields[::2], fields[1::2])}
    return out


# the losses every Mask R-CNN with standard heads logs
STANDARD_LOSSES = ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "total_loss")


def assert_trained(out_dir, log, iterations: int, losses) -> None:
    """What every smoke run shows: a log line per iteration, the named losses logged, all values
    finite, the checkpoint at iteration 3 (CHECKPOINT_PERIOD 4) and the final one written."""
    import numpy as np

    assert sorted(log) == list(range(iterations))
    assert set(losses) <= set(log[iterations - 1])
    assert all(np.isfinite(v) for values in log.values() for v in values.values())
    out_dir = pathlib.Path(out_dir)
    assert (out_dir / "model_0000003.npz").exists() and (out_dir / "model_final.npz").exists()


def assert_resumed(log_text: str, start: int, stop: int) -> None:
    """The second launch resumed at `start` and logged iterations start..stop-1 only."""
    assert "Resumed from" in log_text and f"at iteration {start}" in log_text
    assert sorted(logged(log_text.split("Resumed from")[1])) == list(range(start, stop))
