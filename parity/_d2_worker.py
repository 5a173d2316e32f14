"""The detectron2 side of the parity harness; runs in .venv-reference (PyTorch, detectron2 0.5).

    python parity/_d2_worker.py shapes  --config CFG --output shapes.json [--d2-config-out cfg.yaml]
    python parity/_d2_worker.py predict --config CFG --weights W.pkl --images DIR --output d2.json
                                        [--resized-out resized.npz] [--threads 2]
    python parity/_d2_worker.py calibrate --config CFG --weights W.pkl --images DIR
                                          --modules NAME,... --output rms.json [--threads 2]

CFG: a model-zoo name (``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``) or a yaml file.
``shapes`` writes the state dict's names, shapes and dtypes of the model detectron2 builds from
CFG, with the few config values the weights and the driver need, and ``cfg.dump()`` (what
tfmrcnn-convert's ``--d2-config`` reads). ``predict`` runs ``DefaultPredictor`` on every .png of
DIR (sorted), after checking that every weight of the model came from W.pkl, and writes for
each image its size as resized for the model and its detections: box xyxy, score, contiguous
label, mask as COCO RLE and its area. With
``--resized-out`` it also saves each image as the predictor resized it (uint8, the model's
input before normalisation), to diagnose resize differences. ``calibrate`` runs the predictor
on DIR's first .png and writes the RMS of each named module's output (over all its calls).

Imports nothing from tfmrcnn (TensorFlow is not installed here).
"""
import argparse
import json
import os
import pickle
import sys

import numpy as np


def load_cfg(config):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    path = config if os.path.isfile(config) else model_zoo.get_config_file(config)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def cmd_shapes(args):
    from detectron2.modeling import build_model

    cfg = load_cfg(args.config)
    model = build_model(cfg)
    state = model.state_dict()
    out = {
        "config": args.config,
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in state.items()},
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
        "num_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        "mask_on": bool(cfg.MODEL.MASK_ON),
        "score_thresh_test": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
    }
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    if args.d2_config_out:
        with open(args.d2_config_out, "w") as f:
            f.write(cfg.dump())


def _check_loaded(model, weights_path):
    """Every parameter and persistent buffer of the model equals the file's tensor."""
    with open(weights_path, "rb") as f:
        ckpt = pickle.load(f)["model"]  # our own file, written by parity/weights.py
    state = model.state_dict()
    missing = [k for k in state if k not in ckpt]
    wrong = [k for k in state if k in ckpt
             and not np.array_equal(state[k].cpu().numpy(), np.asarray(ckpt[k]))]
    if missing or wrong:
        raise SystemExit(f"{weights_path}: detectron2 did not load {len(missing)} tensors "
                         f"{missing[:5]} and differs on {len(wrong)} {wrong[:5]}")


def _instances_to_dicts(instances):
    from pycocotools import mask as mask_util

    boxes = instances.pred_boxes.tensor.numpy().astype(float)
    scores = instances.scores.numpy().astype(float)
    labels = instances.pred_classes.numpy()
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    out = []
    for i in range(len(instances)):
        det = {"box": boxes[i].tolist(), "score": float(scores[i]), "label": int(labels[i])}
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            det["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
            det["area"] = int(masks[i].sum())
        out.append(det)
    return out


def _predictor(args):
    """(DefaultPredictor with args.weights, checked; the sorted .png names of args.images)."""
    import torch
    from detectron2.engine import DefaultPredictor

    torch.set_num_threads(args.threads)
    cfg = load_cfg(args.config)
    cfg.MODEL.WEIGHTS = args.weights
    predictor = DefaultPredictor(cfg)
    _check_loaded(predictor.model, args.weights)
    return predictor, sorted(n for n in os.listdir(args.images) if n.lower().endswith(".png"))


def cmd_calibrate(args):
    from detectron2.data.detection_utils import read_image

    predictor, names = _predictor(args)
    modules = dict(predictor.model.named_modules())
    wanted = args.modules.split(",")
    unknown = [n for n in wanted if n not in modules]
    if unknown:
        raise SystemExit(f"{args.config}: the model has no modules {unknown}")
    sums = {}

    def hook(name):
        def accumulate(module, inputs, output):
            total = sums.setdefault(name, [0.0, 0])
            total[0] += float(output.double().pow(2).sum())
            total[1] += output.numel()
        return accumulate

    for name in wanted:
        modules[name].register_forward_hook(hook(name))
    predictor(read_image(os.path.join(args.images, names[0]), format="BGR"))
    with open(args.output, "w") as f:
        json.dump({k: (s / n) ** 0.5 for k, (s, n) in sums.items() if n}, f, indent=1)


def cmd_predict(args):
    import time

    import torch
    from detectron2.data.detection_utils import read_image

    predictor, names = _predictor(args)
    results, resized = [], {}
    for name in names:
        image = read_image(os.path.join(args.images, name), format="BGR")  # what the demo reads
        start = time.perf_counter()
        with torch.no_grad():
            instances = predictor(image)["instances"].to("cpu")
        seconds = time.perf_counter() - start
        resize = predictor.aug.get_transform(image)  # DefaultPredictor's own preprocessing step
        results.append({"file_name": name, "height": image.shape[0], "width": image.shape[1],
                        "resized": [resize.new_h, resize.new_w], "seconds": seconds,
                        "detections": _instances_to_dicts(instances)})
        if args.resized_out:
            resized[name] = resize.apply_image(image)
        print(f"detectron2: {name} {len(instances)} detections {seconds:.1f} s", flush=True)
    with open(args.output, "w") as f:
        json.dump({"config": args.config, "images": results}, f)
    if args.resized_out:
        np.savez_compressed(args.resized_out, **resized)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shapes")
    s.add_argument("--config", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--d2-config-out")
    s = sub.add_parser("predict")
    s.add_argument("--config", required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--resized-out")
    s.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("calibrate")
    s.add_argument("--config", required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--modules", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    {"shapes": cmd_shapes, "predict": cmd_predict, "calibrate": cmd_calibrate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
