"""tfmrcnn-predict: run a model on an image or a folder, write pictures and COCO results.

    tfmrcnn-predict --model DIR --input photo.jpg --output OUT
    tfmrcnn-predict --model DIR --input images/ --output OUT --score-threshold 0.3 --batch-size 4
    tfmrcnn-predict --model DIR --input images/ --output OUT INPUT.MIN_SIZE_TEST=600

DIR holds config.yaml and model_final.npz (training's OUTPUT_DIR or `tfmrcnn-convert`'s output).
A folder is read non-recursively: its .jpg / .jpeg / .png files, sorted by name. For each
image OUT/<name>.png shows the detections; OUT/predictions.json lists them all in COCO results
format with two extra keys::

    {"file_name": "a.jpg", "image_id": 0, "category_id": 1, "bbox": [x, y, w, h],
     "score": 0.98, "segmentation": {"size": [H, W], "counts": "..."}}

``image_id`` is the image's index in the sorted input list; ``category_id`` is the dataset id of
the contiguous label (DIR/classes.json, written by training, else the training dataset's map,
the COCO ids for an 80-class model, otherwise label + 1), see `tfmrcnn.checkpoint.model_dir`.
Boxes and masks are in original-image pixels.

``--score-threshold`` (default 0.5, as detectron2's demo) sets MODEL.ROI_HEADS.SCORE_THRESH_TEST
like tfmrcnn-eval's and tfmrcnn-export's (`tfmrcnn.cli.score_threshold`; an explicit KEY=VALUE
override of that key wins); the command prints the threshold it uses. An unreadable image
prints an error line and is skipped; the exit status is 0 when at least one image was processed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PREDICTIONS_FILE = "predictions.json"
PROG = "tfmrcnn-predict"


def build_parser() -> argparse.ArgumentParser:
    from tfmrcnn.cli.score_threshold import add_score_threshold

    p = argparse.ArgumentParser(prog=PROG, description="Predict instances on images with a "
                                "tfmrcnn model; writes pictures and COCO-format predictions.")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="directory with config.yaml and model_final.npz")
    p.add_argument("--input", required=True, metavar="IMG_OR_DIR",
                   help="an image file, or a folder of .jpg/.jpeg/.png images")
    p.add_argument("--output", "-o", required=True, metavar="OUTDIR",
                   help="folder for <name>.png pictures and predictions.json")
    add_score_threshold(p, default=0.5)
    p.add_argument("--batch-size", type=int, default=1, help="images per model call")
    p.add_argument("--class-names", metavar="FILE",
                   help="class names, one per line in label order (default: DIR/class_names.txt, "
                        "DIR/classes.json, the training dataset's names, or COCO's for an "
                        "80-class model)")
    p.add_argument("--eager", action="store_true",
                   help="run the model eagerly instead of tracing it: faster start, slower per image")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. INPUT.MIN_SIZE_TEST=600")
    return p


def list_images(path: str) -> List[str]:
    """[path] for a file; the folder's .jpg/.jpeg/.png files (any case), sorted, for a folder."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path)
                       if n.lower().endswith(IMAGE_EXTENSIONS) and
                       os.path.isfile(os.path.join(path, n)))
        return [os.path.join(path, n) for n in names]
    if os.path.isfile(path):
        return [path]
    raise FileNotFoundError(f"--input {path} does not exist")


def picture_names(paths: List[str]) -> List[str]:
    """<stem>.png per input; inputs sharing a stem (a.jpg, a.png) keep their extension too."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [(s if stems.count(s) == 1 else os.path.basename(p)) + ".png"
            for s, p in zip(stems, paths)]


def _error(message: str) -> None:
    from tqdm import tqdm

    # through tqdm so that the line does not break a progress bar being drawn
    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)


def _read_batch(paths):
    """[(index in paths, image)] of the readable images; an error line for each other one."""
    from tfmrcnn.data.image_io import read_image

    good = []
    for i, path in enumerate(paths):
        try:
            good.append((i, read_image(path)))
        except (OSError, ValueError) as e:
            _error(f"{e}; skipped")
    return good


def run(args) -> int:
    import cv2

    from tfmrcnn.config import ConfigError
    from tfmrcnn.evaluation.coco_evaluation import instances_to_coco_json
    from tfmrcnn.checkpoint.model_dir import (ModelDirError, label_to_category_id, load_model,
                                          resolve_class_names)
    from tfmrcnn.cli.score_threshold import describe_score_threshold, with_score_threshold
    from tfmrcnn.inference.predictor import Predictor
    from tfmrcnn.utils.visualize import draw_instances
    from tqdm import tqdm

    try:
        paths = list_images(args.input)
        cfg, model = load_model(args.model, with_score_threshold(args.score_threshold,
                                                                 args.overrides))
        class_names = resolve_class_names(cfg, args.model, args.class_names)
        category_ids = label_to_category_id(cfg, args.model)
    except (ModelDirError, FileNotFoundError, ConfigError, ValueError) as e:
        _error(str(e))
        return 1
    if not paths:
        _error(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {args.input}")
        return 1
    os.makedirs(args.output, exist_ok=True)
    print(describe_score_threshold(cfg, args.score_threshold, args.overrides))
    predictor = Predictor(cfg, model, compile=not args.eager)
    pictures = picture_names(paths)
    results, num_done = [], 0
    batch_size = max(1, args.batch_size)
    with tqdm(total=len(paths), unit="img", disable=len(paths) == 1, dynamic_ncols=True) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            good = _read_batch([paths[i] for i in chunk])
            instances = predictor([image for _, image in good])
            for (k, image), inst in zip(good, instances):
                index = chunk[k]
                picture = draw_instances(image, inst["boxes"], inst["classes"], inst["scores"],
                                         inst.get("masks"), class_names)
                cv2.imwrite(os.path.join(args.output, pictures[index]), picture)
                for r in instances_to_coco_json(inst, index, category_ids):
                    results.append({"file_name": os.path.basename(paths[index]), **r})
                num_done += 1
            bar.update(len(chunk))
    with open(os.path.join(args.output, PREDICTIONS_FILE), "w") as f:
        json.dump(results, f)
    print(f"{num_done}/{len(paths)} images, {len(results)} detections -> {args.output}")
    return 0 if num_done else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (utils/launch.py)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
