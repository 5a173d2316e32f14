"""COCO evaluation: perfect predictions, perturbations against pycocotools, robustness cases."""
import contextlib
import io
import json
import math
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import coco_toy_set as toy
from tfmrcnn.evaluation.coco_evaluation import (
    COCOEvaluator, encode_masks, evaluate_coco_results, instances_to_coco_json, load_coco_gt)

NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LABEL_TO_ID = [c["id"] for c in sorted(toy.CATEGORIES, key=lambda c: c["id"])]


@pytest.fixture()
def toy_json(tmp_path):
    json_path, root = toy.write_coco_set(str(tmp_path / "toy"))
    return json_path, root, toy.build_coco_dict()


def _run_evaluator(json_path, root, data, outputs_by_image, output_dir=None, image_ids=None):
    evaluator = COCOEvaluator((json_path, root), output_dir, distributed=False, verbose=False)
    evaluator.reset()
    inputs = toy.dataset_inputs(data, image_ids)
    evaluator.process(inputs, [outputs_by_image[i["image_id"]] for i in inputs])
    return evaluator.evaluate()


def _reference_results(outputs_by_image, image_order):
    """COCO results written out by hand from the definition of the format."""
    results = []
    for image_id in image_order:
        out = outputs_by_image[image_id]
        for k in range(len(out["boxes"])):
            x0, y0, x1, y1 = (float(v) for v in out["boxes"][k])
            rle = mask_util.encode(np.asfortranarray(out["masks"][k].astype(np.uint8)))
            results.append({"image_id": image_id, "category_id": LABEL_TO_ID[out["classes"][k]],
                            "bbox": [x0, y0, float(np.float32(x1) - np.float32(x0)),
                                     float(np.float32(y1) - np.float32(y0))],
                            "score": float(out["scores"][k]),
                            "segmentation": {"size": rle["size"],
                                             "counts": rle["counts"].decode()}})
    return results


def _reference_metrics(json_path, results, iou_type, img_ids=None):
    """Stats x 100 and per-category AP computed with pycocotools directly."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_path)
        if iou_type == "segm":
            results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {n: ev.stats[i] * 100 if ev.stats[i] >= 0 else float("nan")
               for i, n in enumerate(NAMES)}
    for k, cat in enumerate(sorted(toy.CATEGORIES, key=lambda c: c["id"])):
        p = ev.eval["precision"][:, :, k, 0, -1]
        metrics["AP-" + cat["name"]] = p[p > -1].mean() * 100 if (p > -1).any() else float("nan")
    return metrics


def _assert_same(ours, ref):
    assert set(ref) <= set(ours)
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-9), key


def _perturbed_outputs(data, seed=0):
    rng = np.random.default_rng(seed)
    outputs = {}
    for img in data["images"]:
        out = toy.perfect_outputs(data, img["id"])
        h, w = img["height"], img["width"]
        d = len(out["boxes"])
        boxes = out["boxes"] + rng.uniform(-3, 3, (d, 4)).astype(np.float32)
        masks = np.roll(out["masks"], rng.integers(-2, 3, 2), axis=(1, 2)) if d else out["masks"]
        scores = rng.uniform(0.2, 1.0, d).astype(np.float32)
        classes = out["classes"].copy()
        # two false positives per image: random boxes, random (possibly GT-less) classes
        fp_xy = rng.uniform(0, [w - 8, h - 8], (2, 2))
        fp_boxes = np.concatenate([fp_xy, fp_xy + rng.uniform(4, 8, (2, 2))], 1).astype(np.float32)
        fp_masks = np.zeros((2, h, w), bool)
        for k, (x0, y0, x1, y1) in enumerate(fp_boxes.astype(int)):
            fp_masks[k, y0:y1, x0:x1] = True
        outputs[img["id"]] = {
            "boxes": np.concatenate([boxes, fp_boxes]),
            "scores": np.concatenate([scores, rng.uniform(0.05, 0.9, 2).astype(np.float32)]),
            "classes": np.concatenate([classes, rng.integers(0, 4, 2).astype(np.int32)]),
            "masks": np.concatenate([masks, fp_masks]),
        }
        order = np.argsort(-outputs[img["id"]]["scores"], kind="stable")
        outputs[img["id"]] = {k: v[order] for k, v in outputs[img["id"]].items()}
    return outputs


def test_perfect_predictions_give_ap_100(toy_json, tmp_path):
    json_path, root, data = toy_json
    outputs = {i["id"]: toy.perfect_outputs(data, i["id"]) for i in data["images"]}
    out_dir = str(tmp_path / "out")
    metrics = _run_evaluator(json_path, root, data, outputs, out_dir)
    for task in ("bbox", "segm"):
        assert metrics[task]["AP"] == pytest.approx(100.0)
        assert metrics[task]["AP50"] == pytest.approx(100.0)
        assert metrics[task]["AP75"] == pytest.approx(100.0)
        for name in ("APs", "APm", "APl"):   # 100 where the range has GT, NaN where it has none
            assert math.isnan(metrics[task][name]) or metrics[task][name] == pytest.approx(100.0)
        assert math.isnan(metrics[task]["AP-unused"])         # a class without GT
        assert metrics[task]["AP-square"] == pytest.approx(100.0)
    with open(os.path.join(out_dir, "metrics.json")) as f:
        written = json.load(f)
    assert set(written) == {"bbox", "segm"}
    assert written["segm"]["AP-unused"] is None              # NaN -> null
    assert written["bbox"]["AP"] == pytest.approx(100.0)
    with open(os.path.join(out_dir, "coco_instances_results.json")) as f:
        results = json.load(f)
    assert len(results) == sum(len(v["boxes"]) for v in outputs.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_perturbed_predictions_match_pycocotools(toy_json, seed):
    json_path, root, data = toy_json
    outputs = _perturbed_outputs(data, seed)
    metrics = _run_evaluator(json_path, root, data, outputs)
    results = _reference_results(outputs, [i["id"] for i in data["images"]])
    for task in ("bbox", "segm"):
        ref = _reference_metrics(json_path, results, task)
        assert 0 < ref["AP"] < 100
        _assert_same(metrics[task], ref)


def test_subset_of_images_is_scored_on_that_subset(toy_json):
    json_path, root, data = toy_json
    outputs = _perturbed_outputs(data, 2)
    subset = [11, 27]
    metrics = _run_evaluator(json_path, root, data, outputs, image_ids=subset)
    results = _reference_results(outputs, subset)
    for task in ("bbox", "segm"):
        _assert_same(metrics[task], _reference_metrics(json_path, results, task, img_ids=subset))


def test_images_without_detections(toy_json):
    json_path, root, data = toy_json
    outputs = {i["id"]: toy.perfect_outputs(data, i["id"]) for i in data["images"]}
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "classes": np.zeros(0, np.int32)}
    outputs[4] = dict(empty, masks=np.zeros((0, 64, 48), bool))
    metrics = _run_evaluator(json_path, root, data, outputs)
    results = _reference_results(outputs, [i["id"] for i in data["images"]])
    for task in ("bbox", "segm"):
        ref = _reference_metrics(json_path, results, task)
        assert ref["AP"] < 100                # image 4's objects are missed
        _assert_same(metrics[task], ref)


def test_empty_result_list_gives_zero_ap(toy_json, tmp_path):
    json_path, root, data = toy_json
    outputs = {i["id"]: {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                         "classes": np.zeros(0, np.int32),
                         "masks": np.zeros((0, i["height"], i["width"]), bool)}
               for i in data["images"]}
    metrics = _run_evaluator(json_path, root, data, outputs, str(tmp_path / "o"))
    for task in ("bbox", "segm"):
        assert metrics[task]["AP"] == 0.0 and metrics[task]["AP50"] == 0.0
    with open(tmp_path / "o" / "coco_instances_results.json") as f:
        assert json.load(f) == []


def test_crowd_region_detection_is_ignored_not_false_positive(toy_json):
    json_path, root, data = toy_json
    outputs = {i["id"]: toy.perfect_outputs(data, i["id"]) for i in data["images"]}
    # a detection of the crowd region (image 27, class "square") with the best score
    crowd_mask = np.zeros((1, 40, 40), bool)
    crowd_mask[0, 22:38, 24:38] = True
    out = outputs[27]
    square = toy.CONTIGUOUS[3]
    outputs[27] = {"boxes": np.concatenate([[[24, 22, 38, 38]], out["boxes"]]).astype(np.float32),
                   "scores": np.concatenate([[1.0], out["scores"]]).astype(np.float32),
                   "classes": np.concatenate([[square], out["classes"]]).astype(np.int32),
                   "masks": np.concatenate([crowd_mask, out["masks"]])}
    metrics = _run_evaluator(json_path, root, data, outputs)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)


def test_instances_to_coco_json_format():
    masks = np.zeros((2, 5, 7), bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    inst = {"boxes": np.array([[2, 1, 6, 3], [0.5, 4, 1, 5]], np.float32),
            "scores": np.array([0.9, 0.3], np.float32), "classes": np.array([2, 0], np.int32),
            "masks": masks}
    results = instances_to_coco_json(inst, 42, LABEL_TO_ID)
    assert [r["category_id"] for r in results] == [12, 3]
    assert results[0]["bbox"] == [2.0, 1.0, 4.0, 2.0] and results[1]["bbox"] == [0.5, 4.0, 0.5, 1.0]
    assert results[0]["image_id"] == 42 and results[0]["score"] == pytest.approx(0.9)
    json.dumps(results)                                   # serialisable: counts are str
    for r, m in zip(results, masks):
        assert isinstance(r["segmentation"]["counts"], str)
        decoded = mask_util.decode({"size": r["segmentation"]["size"],
                                    "counts": r["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), m)
    assert encode_masks(np.zeros((0, 5, 7), bool)) == []
    assert instances_to_coco_json({"boxes": np.zeros((0, 4)), "scores": [], "classes": []}, 1,
                                  LABEL_TO_ID) == []


def test_box_only_results_skip_segm(toy_json):
    json_path, _, data = toy_json
    outputs = {i["id"]: toy.perfect_outputs(data, i["id"]) for i in data["images"]}
    results = []
    for image_id, out in outputs.items():
        out = {k: v for k, v in out.items() if k != "masks"}
        results += instances_to_coco_json(out, image_id, LABEL_TO_ID)
    metrics = evaluate_coco_results(load_coco_gt(json_path), results, verbose=False)
    assert set(metrics) == {"bbox"} and metrics["bbox"]["AP"] == pytest.approx(100.0)


def _perfect_by_name(name, data, per_category):
    """Metrics and results of the evaluator reached by dataset name, fed the ground truth."""
    evaluator = COCOEvaluator(name, None, distributed=False, verbose=False,
                              per_category=per_category)
    evaluator.reset()
    inputs = toy.dataset_inputs(data)
    evaluator.process(inputs, [toy.perfect_outputs(data, i["image_id"]) for i in inputs])
    results = [r for p in evaluator._predictions for r in p["instances"]]
    return evaluator.evaluate(), results


def test_evaluator_uses_the_json_categories_not_the_metadata_table(toy_json):
    from tfmrcnn.data.catalog import MetadataCatalog

    json_path, root, data = toy_json
    name = f"toy_eval_{os.getpid()}_{id(data)}"
    # metadata with another table (as the 80-class COCO one of coco_2017_*): must not be used
    MetadataCatalog.get(name).set(json_file=json_path, image_root=root,
                                  thing_dataset_id_to_contiguous_id={12: 0, 3: 1, 7: 2, 20: 3})
    try:
        metrics, results = _perfect_by_name(name, data, per_category=True)
    finally:
        MetadataCatalog.remove(name)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert {r["category_id"] for r in results} == {3, 7, 12}


def test_custom_set_behind_the_coco_2017_name_keeps_its_categories(tmp_path, monkeypatch):
    """Issue 20: a custom json (category ids 1, 5, 90) at coco/annotations/instances_val2017.json
    was scored with COCO's 80-class table: KeyError 4, or results with ids 1/2/3 and low AP."""
    data = toy.build_coco_dict()
    ids = {3: 1, 7: 5, 12: 90, 20: 91}
    custom = json.loads(json.dumps(data))
    custom["categories"] = [dict(c, id=ids[c["id"]]) for c in data["categories"]]
    for ann in custom["annotations"]:
        ann["category_id"] = ids[ann["category_id"]]
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(custom))
    monkeypatch.setenv("TFMRCNN_DATASETS", str(tmp_path))
    # the toy's perfect outputs label its categories 3, 7, 12, 20 as 0..3: the same contiguous
    # labels as 1, 5, 90, 91 sorted
    for per_category in (True, False):
        metrics, results = _perfect_by_name("coco_2017_val", data, per_category)
        assert metrics["bbox"]["AP"] == pytest.approx(100.0)
        assert metrics["segm"]["AP"] == pytest.approx(100.0)
        assert {r["category_id"] for r in results} == {1, 5, 90}
        per_class = {k for k in metrics["bbox"] if k.startswith("AP-")}
        assert per_class == ({f"AP-{c['name']}" for c in toy.CATEGORIES} if per_category else set())


def test_ground_truth_is_scored_at_the_size_of_the_evaluated_image(tmp_path):
    """With DATASETS.TRUST_IMAGE_SIZE an image's json size is wrong and its file's is used:
    detections come at the file's size, so the json's polygons are rasterised at that size."""
    data = toy.build_coco_dict()
    wrong = json.loads(json.dumps(data))
    wrong["images"][0].update(height=30, width=31)       # image 11 really is 48 x 64
    json_path = tmp_path / "wrong.json"
    json_path.write_text(json.dumps(wrong))
    inputs = toy.dataset_inputs(data)                      # the images' true sizes
    evaluator = COCOEvaluator((str(json_path), str(tmp_path)), None, distributed=False,
                              verbose=False)
    evaluator.reset()
    evaluator.process(inputs, [toy.perfect_outputs(data, i["image_id"]) for i in inputs])
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
