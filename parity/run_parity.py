"""End-to-end parity of tfmrcnn with detectron2 itself, for one detectron2 config.

    .venv/bin/python -m parity.run_parity --config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml

Steps (outputs under --workdir):
1. images/: seeded synthetic PNGs of several sizes (`parity.images`);
2. d2/: detectron2 builds the model from the config and lists its state dict
   (`parity/_d2_worker.py shapes`, run with --reference-python); `parity.weights` draws seeded
   random weights for those names and shapes (NumPy) into weights.pkl, calibrates the output
   layers' scales on the first image (`_d2_worker.py calibrate`, scales.json) and draws them
   again with those scales; DefaultPredictor runs on the images (`_d2_worker.py predict`).
   The d2/ step is reused when its files exist (same config, seed, sizes and parity code: the
   manifest is checked), --rerun-d2 redoes it;
3. gt.json: annotations derived from detectron2's detections (`parity.images`);
4. tfmrcnn: tfmrcnn-convert of weights.pkl with the dumped detectron2 config, then every path
   of --paths: tfmrcnn-eval (on gt.json), tfmrcnn-predict (on images/), the SavedModel of
   tfmrcnn-export (serving_default on each image, in this process), and d2input (tfmrcnn's
   Predictor on detectron2's resized images: parity without our pixel resize);
5. the match table (`parity.match`): fraction of detectron2's detections matched (same class,
   box IoU >= 0.99, score within 1e-3; "loose": IoU >= 0.9, score within 0.05), mean mask IoU
   of the matched pairs, box/mask AP (COCO AP 0.5:0.95, in points) of each side against gt.json;
   per image; with --save-resized, how our resize of each image differs from detectron2's
   (Pillow) input. Everything is also written to WORKDIR/parity.json.

Needs `bash scripts/setup_reference.sh` (.venv-reference) once. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

from parity import images as parity_images
from parity.match import LOOSE, STRICT, greedy_match, mask_iou
from parity.weights import (INPUT_SCALE, calibrated_layers, calibration_scales,
                            generate_d2_weights, write_d2_pkl)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "parity", "_d2_worker.py")
PATHS = ("eval", "predict", "savedmodel", "d2input")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True,
                   help="detectron2 model-zoo name or yaml file (as detectron2 reads it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and images")
    p.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in parity_images.DEFAULT_SIZES),
                   help="image sizes HxW, comma-separated")
    p.add_argument("--paths", default=",".join(PATHS[:3]),
                   help="tfmrcnn paths to compare, among: " + ", ".join(PATHS) + " (d2input: "
                   "tfmrcnn's Predictor on detectron2's resized images, which isolates resize "
                   "differences; implies --save-resized)")
    p.add_argument("--workdir", help="default: output/parity/<config name>_seed<seed>")
    p.add_argument("--reference-python", default=os.path.join(ROOT, ".venv-reference", "bin",
                                                              "python"))
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads of detectron2")
    p.add_argument("--rerun-d2", action="store_true", help="redo the detectron2 step")
    p.add_argument("--save-resized", action="store_true",
                   help="compare our resized images with detectron2's model inputs")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="tfmrcnn config overrides for eval/predict/export, e.g. MODEL.WINOGRAD=False")
    args = p.parse_args(argv)
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    args.paths = [s for s in args.paths.split(",") if s]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        p.error(f"unknown --paths {unknown}; choose from {PATHS}")
    args.save_resized = args.save_resized or "d2input" in args.paths
    if not args.workdir:
        stem = os.path.splitext(os.path.basename(args.config))[0]
        args.workdir = os.path.join(ROOT, "output", "parity", f"{stem}_seed{args.seed}")
    return args


class StepFailed(RuntimeError):
    """A command of the harness failed; the message ends with its log's tail."""


def run(cmd: List[str], log_path: str) -> float:
    """Run cmd with its output in log_path; seconds taken. Raises StepFailed with the log's
    tail."""
    start = time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise StepFailed(f"{' '.join(cmd)} failed ({code}); {log_path} ends with:\n{tail}")
    return time.perf_counter() - start


def _source_digest(*names: str) -> str:
    """SHA-256 of parity modules: detectron2's cached results are redone when they change."""
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(ROOT, "parity", name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _xywh_to_xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


# ------------------------------------------------------------------------------ detectron2
def detectron2_step(args, d2_dir: str, image_dir: str) -> None:
    """shapes.json, weights.pkl, d2_config.yaml, detections.json (reused when present)."""
    manifest = {"config": args.config, "seed": args.seed, "sizes": args.sizes,
                "code": _source_digest("weights.py", "images.py", "_d2_worker.py")}
    manifest_path = os.path.join(d2_dir, "manifest.json")
    det_path = os.path.join(d2_dir, "detections.json")
    resized_path = os.path.join(d2_dir, "resized.npz")
    if not args.rerun_d2 and os.path.isfile(det_path) and os.path.isfile(manifest_path) and \
            (os.path.isfile(resized_path) or not args.save_resized):
        with open(manifest_path) as f:
            if json.load(f) == json.loads(json.dumps(manifest)):
                print(f"reusing detectron2's results in {d2_dir} (--rerun-d2 to redo)")
                return
    os.makedirs(d2_dir, exist_ok=True)
    py = args.reference_python
    if not os.path.isfile(py):
        raise SystemExit(f"{py} not found: run `bash scripts/setup_reference.sh` first")
    shapes_path = os.path.join(d2_dir, "shapes.json")
    run([py, WORKER, "shapes", "--config", args.config, "--output", shapes_path,
         "--d2-config-out", os.path.join(d2_dir, "d2_config.yaml")],
        os.path.join(d2_dir, "shapes.log"))
    with open(shapes_path) as f:
        info = json.load(f)
    input_scale = INPUT_SCALE / float(np.mean(info["pixel_std"]))
    weights = os.path.join(d2_dir, "weights.pkl")
    write_d2_pkl(weights, generate_d2_weights(info["shapes"], args.seed, input_scale,
                                              info["dtypes"]))
    rms_path = os.path.join(d2_dir, "calibration_rms.json")
    modules = [n[:-len(".weight")] for n in calibrated_layers(info["shapes"])]
    run([py, WORKER, "calibrate", "--config", args.config, "--weights", weights, "--images",
         image_dir, "--modules", ",".join(modules), "--output", rms_path,
         "--threads", str(args.threads)], os.path.join(d2_dir, "calibrate.log"))
    with open(rms_path) as f:
        scales = calibration_scales(info["shapes"], json.load(f))
    parity_images.write_json(os.path.join(d2_dir, "scales.json"), scales)
    write_d2_pkl(weights, generate_d2_weights(info["shapes"], args.seed, input_scale,
                                              info["dtypes"], scales))
    cmd = [py, WORKER, "predict", "--config", args.config, "--weights", weights,
           "--images", image_dir, "--output", det_path, "--threads", str(args.threads)]
    if args.save_resized:
        cmd += ["--resized-out", resized_path]
    run(cmd, os.path.join(d2_dir, "predict.log"))
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)


def load_d2_detections(d2_dir: str, cats):
    """(file_name -> detections with dataset category ids (label k -> k-th category by id),
    detectron2's per-image records: resized (h, w), seconds)."""
    ids = [c["id"] for c in sorted(cats, key=lambda c: c["id"])]
    with open(os.path.join(d2_dir, "detections.json")) as f:
        data = json.load(f)
    dets = {im["file_name"]: [dict(d, category_id=ids[d["label"]]) for d in im["detections"]]
            for im in data["images"]}
    return dets, {im["file_name"]: im for im in data["images"]}


# ------------------------------------------------------------------------------ tfmrcnn
def tfmrcnn_eval(args, model_dir, gt_path, image_dir, out_dir, records):
    seconds = run([sys.executable, "-m", "tfmrcnn.cli.eval", "--model", model_dir, "--json",
                   gt_path, "--images", image_dir, "--output", out_dir, "--no-per-category",
                   *args.overrides], os.path.join(out_dir + ".log"))
    names = {r["id"]: r["file_name"] for r in records}
    with open(os.path.join(out_dir, "coco_instances_results.json")) as f:
        results = json.load(f)
    dets: Dict[str, List[Dict]] = {}
    for r in results:
        dets.setdefault(names[r["image_id"]], []).append(dict(r, box=_xywh_to_xyxy(r["bbox"])))
    return dets, seconds


def tfmrcnn_predict(args, model_dir, image_dir, out_dir, score_thresh):
    seconds = run([sys.executable, "-m", "tfmrcnn.cli.predict", "--model", model_dir,
                   "--input", image_dir, "--output", out_dir,
                   "--score-threshold", str(score_thresh), *args.overrides],
                  os.path.join(out_dir + ".log"))
    with open(os.path.join(out_dir, "predictions.json")) as f:
        results = json.load(f)
    dets: Dict[str, List[Dict]] = {}
    for r in results:
        dets.setdefault(r["file_name"], []).append(dict(r, box=_xywh_to_xyxy(r["bbox"])))
    return dets, seconds


def tfmrcnn_saved_model(args, model_dir, image_dir, out_dir, records, cats):
    """tfmrcnn-export, then serving_default on each image in this process."""
    seconds = run([sys.executable, "-m", "tfmrcnn.cli.export", "--model", model_dir,
                   "--output", out_dir, *args.overrides], os.path.join(out_dir + ".log"))
    import cv2
    import tensorflow as tf

    from tfmrcnn.export.saved_model import load_saved_model

    start = time.perf_counter()
    serve = load_saved_model(out_dir).signatures["serving_default"]
    dets = {}
    for r in records:
        out = serve(image=tf.constant(cv2.imread(os.path.join(image_dir, r["file_name"]))))
        dets[r["file_name"]] = _arrays_to_dets({k: v.numpy() for k, v in out.items()}, cats)
    return dets, seconds + time.perf_counter() - start


def tfmrcnn_on_d2_input(args, model_dir, d2_dir, records, cats):
    """tfmrcnn's Predictor on the images as detectron2 resized them (our shape rule maps those
    sizes to themselves, so nothing is resampled), rescaled to the original sizes: parity
    without our pixel resize."""
    from tfmrcnn.checkpoint.model_dir import load_model
    from tfmrcnn.inference.predictor import Predictor

    start = time.perf_counter()
    cfg, model = load_model(model_dir, args.overrides)
    predictor = Predictor(cfg, model)
    resized = np.load(os.path.join(d2_dir, "resized.npz"))
    dets = {}
    for r in records:
        image = resized[r["file_name"]]
        images, sizes = predictor.preprocess([image])
        if tuple(sizes[0]) != image.shape[:2]:
            raise StepFailed(f"d2input: tfmrcnn resizes {r['file_name']}'s {image.shape[:2]} "
                             f"input to {tuple(sizes[0])}")
        out = predictor.postprocess(predictor.run_model(images, sizes), sizes,
                                    [(r["height"], r["width"])])[0]
        dets[r["file_name"]] = _arrays_to_dets(out, cats)
    return dets, time.perf_counter() - start


def _arrays_to_dets(out, cats) -> List[Dict]:
    """boxes (D, 4), scores, classes (contiguous), optional masks (D, H, W) -> detections."""
    from pycocotools import mask as mask_util

    ids = [c["id"] for c in sorted(cats, key=lambda c: c["id"])]
    dets = []
    for i in range(len(out["boxes"])):
        det = {"box": np.asarray(out["boxes"][i]).tolist(), "score": float(out["scores"][i]),
               "category_id": ids[int(out["classes"][i])]}
        if out.get("masks") is not None:
            rle = mask_util.encode(np.asfortranarray(np.asarray(out["masks"][i], np.uint8)))
            det["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        dets.append(det)
    return dets


# ------------------------------------------------------------------------------ scoring
def _decode(rle):
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    return mask_util.decode({"size": rle["size"],
                             "counts": counts.encode() if isinstance(counts, str) else counts})


def coco_ap(gt: Dict, dets: Dict[str, List[Dict]], mask_on: bool) -> Dict[str, float]:
    """COCO AP (0.5:0.95, points) of detections against the gt dict, per iou type."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    results = [{"image_id": ids[name], "category_id": d["category_id"],
                "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0],
                         d["box"][3] - d["box"][1]], "score": d["score"],
                **({"segmentation": d["segmentation"]} if mask_on else {})}
               for name, ds in dets.items() for d in ds]
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        for iou_type in ("bbox", "segm") if mask_on else ("bbox",):
            if not results:
                out[iou_type] = 0.0
                continue
            ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = 100.0 * max(float(ev.stats[0]), 0.0)
    return out


def compare(ref: Dict[str, List[Dict]], ours: Dict[str, List[Dict]], mask_on: bool) -> Dict:
    """Match counts and mask IoUs, overall and per image."""
    per_image, mask_ious = {}, []
    total = strict = loose = 0
    for name, ref_dets in ref.items():
        cand = ours.get(name, [])
        pairs = greedy_match(ref_dets, cand, *STRICT)
        n_loose = len(greedy_match(ref_dets, cand, *LOOSE))
        if mask_on:
            mask_ious += [mask_iou(_decode(ref_dets[i]["segmentation"]),
                                   _decode(cand[j]["segmentation"])) for i, j in pairs]
        per_image[name] = {"d2": len(ref_dets), "ours": len(cand), "matched": len(pairs),
                           "loose": n_loose}
        total, strict, loose = total + len(ref_dets), strict + len(pairs), loose + n_loose
    return {"d2_detections": total, "our_detections": sum(len(v) for v in ours.values()),
            "matched": strict / max(total, 1), "matched_loose": loose / max(total, 1),
            "mask_iou": float(np.mean(mask_ious)) if mask_ious else None,
            "mask_iou_min": float(np.min(mask_ious)) if mask_ious else None,
            "per_image": per_image}


def resize_differences(d2_dir, image_dir, records):
    """Per image: tfmrcnn's pixel resize to detectron2's output size vs detectron2's model
    input: fraction of values that differ, largest difference in grey levels."""
    import cv2

    from tfmrcnn.data.resize import resize_image

    theirs = np.load(os.path.join(d2_dir, "resized.npz"))
    out = {}
    for r in records:
        ref = theirs[r["file_name"]]
        image = cv2.imread(os.path.join(image_dir, r["file_name"]))
        mine = resize_image(image, ref.shape[0], ref.shape[1])
        diff = np.abs(mine.astype(np.int32) - ref.astype(np.int32))
        out[r["file_name"]] = {"differ": float(np.mean(diff > 0)), "max_diff": int(diff.max())}
    return out


# ------------------------------------------------------------------------------ report
def print_report(report: Dict) -> None:
    d2 = report["d2"]
    print(f"\nconfig {report['config']}  seed {report['seed']}  {len(report['images'])} images  "
          f"detectron2: {d2['detections']} detections, scores p10/p50/p90 "
          + "/".join(f"{s:.3f}" for s in d2["score_percentiles"]))
    print("weights: output layers scaled by " + ", ".join(
        f"{name.replace('roi_heads.', '').replace('.weight', '')} {v:g}"
        for name, v in report["scales"].items()))
    print(f"matched: same class, box IoU >= {STRICT[0]}, |score diff| <= {STRICT[1]} "
          f"(loose: IoU >= {LOOSE[0]}, <= {LOOSE[1]}); AP: COCO 0.5:0.95 on gt.json, in points")
    header = (f"{'path':<11} {'dets':>5} {'matched':>8} {'loose':>7} {'maskIoU':>8} {'min':>6} "
              f"{'boxAP':>7} {'dBoxAP':>7} {'maskAP':>7} {'dMaskAP':>7}")
    print(header + "\n" + "-" * len(header))
    ap = d2["ap"]
    print(f"{'detectron2':<11} {d2['detections']:>5} {'':>8} {'':>7} {'':>8} {'':>6} "
          f"{ap['bbox']:>7.2f} {'':>7} {ap.get('segm', float('nan')):>7.2f}")
    paths = {name: r for name, r in report["paths"].items() if "error" not in r}
    for name, r in report["paths"].items():
        if "error" in r:
            print(f"{name:<11} FAILED: {r['error'].splitlines()[-1]}")
            continue
        miou = "-" if r["mask_iou"] is None else f"{r['mask_iou']:.4f}"
        min_iou = "-" if r["mask_iou_min"] is None else f"{r['mask_iou_min']:.3f}"
        segm = r["ap"].get("segm", float("nan"))
        print(f"{name:<11} {r['our_detections']:>5} {100 * r['matched']:>7.2f}% "
              f"{100 * r['matched_loose']:>6.1f}% {miou:>8} {min_iou:>6} {r['ap']['bbox']:>7.2f} "
              f"{r['ap']['bbox'] - ap['bbox']:>+7.2f} {segm:>7.2f} "
              f"{segm - ap.get('segm', float('nan')):>+7.2f}")
    print("\nper image: matched / detectron2's detections (loose)" +
          ("; resize vs detectron2's input: % values differing, max grey-level diff"
           if report.get("resize") else ""))
    for im in report["images"]:
        name = im["file_name"]
        cells = [f"{p}: {r['per_image'][name]['matched']}/{r['per_image'][name]['d2']} "
                 f"({r['per_image'][name]['loose']})" for p, r in paths.items()]
        line = f"  {name:<22} -> {im['resized'][0]}x{im['resized'][1]:<5} " + "  ".join(cells)
        rz = (report.get("resize") or {}).get(name)
        if rz:
            line += f"  resize: {100 * rz['differ']:.2f}% max {rz['max_diff']}"
        print(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.workdir
    image_dir, d2_dir, tf_dir = (os.path.join(work, s) for s in ("images", "d2", "tfmrcnn"))
    os.makedirs(tf_dir, exist_ok=True)
    records = parity_images.make_images(image_dir, args.sizes, args.seed)
    detectron2_step(args, d2_dir, image_dir)
    info = _read_json(os.path.join(d2_dir, "shapes.json"))
    mask_on = info["mask_on"]
    cats = parity_images.categories(info["num_classes"])
    ref, d2_images = load_d2_detections(d2_dir, cats)
    gt = parity_images.annotations_from_detections(records, ref, cats, args.seed)
    gt_path = parity_images.write_json(os.path.join(work, "gt.json"), gt)
    for r in records:
        r["resized"] = d2_images[r["file_name"]]["resized"]
    model_dir = os.path.join(tf_dir, "model")
    convert_s = run([sys.executable, "-m", "tfmrcnn.cli.convert", os.path.join(d2_dir,
                     "weights.pkl"), "--d2-config", os.path.join(d2_dir, "d2_config.yaml"),
                     "--output", model_dir], os.path.join(tf_dir, "convert.log"))
    print(f"converted in {convert_s:.0f} s")
    runners = {
        "eval": lambda: tfmrcnn_eval(args, model_dir, gt_path, image_dir,
                                     os.path.join(tf_dir, "eval"), gt["images"]),
        "predict": lambda: tfmrcnn_predict(args, model_dir, image_dir,
                                           os.path.join(tf_dir, "predict"),
                                           info["score_thresh_test"]),
        "savedmodel": lambda: tfmrcnn_saved_model(args, model_dir, image_dir,
                                                  os.path.join(tf_dir, "savedmodel"), gt["images"],
                                                  cats),
        "d2input": lambda: tfmrcnn_on_d2_input(args, model_dir, d2_dir, gt["images"], cats),
    }
    scores = [d["score"] for ds in ref.values() for d in ds]
    report = {
        "config": args.config, "seed": args.seed, "overrides": args.overrides,
        "images": [{k: r[k] for k in ("file_name", "height", "width", "resized")}
                   for r in records],
        "d2": {"detections": len(scores),
               "seconds": sum(im["seconds"] for im in d2_images.values()),
               "score_percentiles": (np.percentile(scores, [10, 50, 90]).tolist()
                                     if scores else [0.0] * 3),
               "ap": coco_ap(gt, ref, mask_on)},
        "scales": _read_json(os.path.join(d2_dir, "scales.json")),
        "paths": {},
    }
    if args.save_resized:
        report["resize"] = resize_differences(d2_dir, image_dir, records)
    for name in args.paths:
        try:
            dets, seconds = runners[name]()
        except StepFailed as e:
            print(f"{name}: {e}", file=sys.stderr)
            report["paths"][name] = {"error": str(e)}
            continue
        parity_images.write_json(os.path.join(tf_dir, f"{name}_detections.json"), dets)
        result = compare(ref, dets, mask_on)
        result.update(ap=coco_ap(gt, dets, mask_on), seconds=seconds)
        report["paths"][name] = result
        print(f"{name}: {100 * result['matched']:.2f}% matched in {seconds:.0f} s")
    with open(os.path.join(work, "parity.json"), "w") as f:
        json.dump(report, f, indent=1)
    print_report(report)
    print(f"\nwritten: {os.path.join(work, 'parity.json')}")
    return 1 if any("error" in r for r in report["paths"].values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StepFailed as e:
        sys.exit(f"run_parity: {e}")
