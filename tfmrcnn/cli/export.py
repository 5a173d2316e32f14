"""tfmrcnn-export: a model directory -> a TensorFlow SavedModel with the whole test-time pipeline.

    tfmrcnn-export --model DIR --output SAVEDMODEL_DIR [KEY=VALUE ...]

Signatures (see `tfmrcnn.export.saved_model`):
  serving_default(image: (H, W, 3) uint8, BGR channel order)
  serve_encoded(image_bytes: scalar string, encoded JPEG/PNG; decoded as RGB, swapped to BGR)
Both return boxes (D, 4) xyxy in original-image pixels, scores (D,), classes (D,) contiguous
labels, masks (D, H, W) uint8 pasted at the original size, num_detections ().
assets.extra/class_names.txt and category_ids.txt give each label's name and dataset category
id (from DIR/classes.json, see `tfmrcnn.checkpoint.model_dir`).

The graph has standard convolutions: the model is built with MODEL.WINOGRAD=False whatever the
config or the overrides say (Winograd is a run-time CPU choice, never baked into an artefact), so
the SavedModel runs on CPUs and GPUs and its detections equal tfmrcnn-predict's with
MODEL.WINOGRAD=False. It needs one custom op, RoiAlign (listed in assets.extra/custom_ops.txt);
the command prints how to load it. In Python, load the library before loading the SavedModel,

    import tensorflow as tf, tfmrcnn.ops
    tfmrcnn.ops.load_library()
    detector = tf.saved_model.load(SAVEDMODEL_DIR)
    out = detector.signatures["serving_default"](image=tf.constant(cv2.imread("a.jpg")))

(or `tfmrcnn.export.saved_model.load_saved_model(SAVEDMODEL_DIR)`, which does both). TF
Serving: see `tfmrcnn.export.saved_model`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

PROG = "tfmrcnn-export"


def build_parser() -> argparse.ArgumentParser:
    from tfmrcnn.cli.score_threshold import add_score_threshold

    p = argparse.ArgumentParser(prog=PROG, description="Export a tfmrcnn model directory as a "
                                "TensorFlow SavedModel (resize, model, rescale, mask paste).")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="directory with config.yaml and model_final.npz")
    p.add_argument("--output", "-o", required=True, metavar="SAVEDMODEL_DIR",
                   help="directory the SavedModel is written to")
    p.add_argument("--class-names", metavar="FILE",
                   help="class names, one per line, stored as assets.extra/class_names.txt")
    add_score_threshold(p, default=None)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides baked into the graph, e.g. INPUT.MIN_SIZE_TEST=600 "
                        "(MODEL.WINOGRAD is always False in an export)")
    return p


def _loading_note(custom_ops: List[str]) -> str:
    if not custom_ops:
        return "Standard convolutions; no custom op needed."
    return (f"Standard convolutions; custom ops needed: {', '.join(custom_ops)}. Load them before "
            f"the SavedModel: in Python tfmrcnn.ops.load_library() (or tf.load_op_library of "
            f"'custom_ops/build.py --out roi_align_ops.so --sources roi_align_op.cc'); for TF "
            f"Serving link custom_ops/roi_align_op.cc into tensorflow_model_server (see "
            f"tfmrcnn.export.saved_model).")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (utils/launch.py)
    # imported after parsing so that --help stays instant
    from tfmrcnn.cli.score_threshold import describe_score_threshold, with_score_threshold
    from tfmrcnn.config import ConfigError
    from tfmrcnn.checkpoint.model_dir import (ModelDirError, label_to_category_id, load_model,
                                              resolve_class_names)
    from tfmrcnn.export.saved_model import custom_ops_needed, export_saved_model

    try:
        # standard convolutions only: Winograd is a run-time choice of the CPU
        overrides = with_score_threshold(args.score_threshold, args.overrides)
        cfg, model = load_model(args.model, [*overrides, "MODEL.WINOGRAD=False"])
        class_names = resolve_class_names(cfg, args.model, args.class_names)
        category_ids = label_to_category_id(cfg, args.model)
    except (ModelDirError, ConfigError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    export_saved_model(cfg, model, args.output, class_names=class_names,
                       category_ids=category_ids)
    print(f"SavedModel written to {args.output} (signatures: serving_default, serve_encoded); "
          f"{describe_score_threshold(cfg, args.score_threshold, args.overrides)}")
    print(_loading_note(custom_ops_needed(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
