"""inference_on_dataset end to end with a stand-in model."""
import json

import numpy as np
import pytest

import coco_toy_set as toy
from tfmrcnn.config import get_cfg
from tfmrcnn.evaluation.coco_evaluation import COCOEvaluator
from tfmrcnn.evaluation.inference import inference_on_dataset


@pytest.mark.parametrize("batch_size", [1, 3])
def test_inference_on_dataset_end_to_end(tmp_path, batch_size):
    json_path, root = toy.write_coco_set(str(tmp_path / "toy"), with_images=True)
    data = toy.build_coco_dict()
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 100
    cfg.INPUT.MAX_SIZE_TEST = 150
    model = toy.FakeModel(data)
    evaluator = COCOEvaluator((json_path, root), str(tmp_path / "out"), verbose=False)
    metrics = inference_on_dataset(model, (json_path, root), cfg, evaluator,
                                   batch_size=batch_size, progress=False)
    assert model.calls == -(-len(data["images"]) // batch_size)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    # all-ones masks paste to the boxes: close to the squares, not to triangles / octagons
    assert metrics["segm"]["AP-square"] > 85.0
    assert 0.0 < metrics["segm"]["AP"] < 100.0
    # boxes went to the resized image and back: the written results are the GT boxes
    with open(tmp_path / "out" / "coco_instances_results.json") as f:
        results = json.load(f)
    gt = {(a["image_id"], a["category_id"], tuple(a["bbox"])) for a in data["annotations"]
          if not a["iscrowd"]}
    assert len(results) == len(gt)
    for r in results:
        assert any(i == r["image_id"] and c == r["category_id"] and
                   np.allclose(b, r["bbox"], atol=1e-3) for i, c, b in gt)
    timing = metrics["timing"]
    assert timing["num_images"] == len(data["images"])
    assert {"data_s", "inference_s", "postprocess_s", "coco_eval_s"} <= set(timing)
    assert (tmp_path / "out" / "metrics.json").exists()
