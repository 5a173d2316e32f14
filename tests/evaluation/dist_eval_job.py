"""Run under horovodrun with 2 processes: sharded inference + distributed COCO evaluation.

argv: json_file image_root output_dir metrics_out. Rank 0 writes its metrics (without timing)
to metrics_out; every rank prints "OK rank=<r> size=<s> calls=<n>".
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))
import horovod.tensorflow as hvd  # noqa: E402

import coco_toy_set as toy  # noqa: E402
from tfmrcnn.utils.file_io import to_jsonable  # noqa: E402

hvd.init()
assert hvd.size() == 2, f"hvd.size() = {hvd.size()}, expected 2"
json_path, image_root, output_dir, metrics_out = sys.argv[1:5]
metrics, calls = toy.run_fake_evaluation(json_path, image_root, output_dir)
if hvd.rank() == 0:
    metrics.pop("timing")
    with open(metrics_out, "w") as f:
        json.dump(to_jsonable(metrics), f)
else:
    assert metrics == {}, metrics
print(f"OK rank={hvd.rank()} size={hvd.size()} calls={calls}", flush=True)
