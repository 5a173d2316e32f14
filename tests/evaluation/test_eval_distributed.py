"""2-process Horovod evaluation (horovodrun --gloo) equals the single-process evaluation."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import coco_toy_set as toy
from tfmrcnn.utils.file_io import to_jsonable

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.slow
def test_two_process_evaluation_equals_single_process(tmp_path):
    json_path, root = toy.write_coco_set(str(tmp_path / "toy"), with_images=True)
    single, single_calls = toy.run_fake_evaluation(json_path, root, str(tmp_path / "single"))
    single.pop("timing")
    assert 0 < single["bbox"]["AP"] < 100          # jittered: a non-trivial result

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    metrics_out = tmp_path / "dist_metrics.json"
    cmd = [str(pathlib.Path(sys.executable).parent / "horovodrun"), "-np", "2",
           "-H", "localhost:2", "--gloo", sys.executable, str(HERE / "dist_eval_job.py"),
           json_path, root, str(tmp_path / "dist"), str(metrics_out)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("OK rank=") == 2 and out.stdout.count("size=2") == 2, out.stdout
    # 5 images, batch 2: rank 0 gets 3 images (2 calls), rank 1 gets 2 (1 call)
    assert "calls=2" in out.stdout and "calls=1" in out.stdout

    with open(metrics_out) as f:
        assert json.load(f) == to_jsonable(single)
    with open(tmp_path / "dist" / "coco_instances_results.json") as f:
        dist_results = json.load(f)
    with open(tmp_path / "single" / "coco_instances_results.json") as f:
        assert dist_results == json.load(f)
    assert not os.listdir(tmp_path / "dist" / ".eval_shards")   # shards merged and removed
