"""tfmrcnn-convert: detectron2 / Caffe2 checkpoint -> tfmrcnn model directory, and back.

    tfmrcnn-convert model_final_f10217.pkl --d2-config config.yaml --output OUTDIR
    tfmrcnn-convert R-50.pkl --output OUTDIR          # ImageNet backbone, architecture inferred
    tfmrcnn-convert detectron2://NAME                # a model-zoo file: downloaded, converted
      (NAME e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl)
    tfmrcnn-convert --to-detectron2 MODEL_DIR out.pkl   # our model -> detectron2 .pkl

OUTDIR (default ./<file name without extension>) then holds model_final.npz and config.yaml,
all that `tfmrcnn-predict --model OUTDIR` and `tfmrcnn-eval --model OUTDIR` need. A
``detectron2://`` name or an http(s) URL is downloaded into the cache first
(`tfmrcnn.converter.zoo`: ``$TFMRCNN_CACHE``, resumable, md5-checked for model-zoo files).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfmrcnn-convert",
        description="Convert a detectron2 model (.pkl, or .pth with torch installed) or a Caffe2/"
                    "MSRA ImageNet backbone (.pkl) to tfmrcnn's weights file and config; or, "
                    "with --to-detectron2, a tfmrcnn model to a detectron2 .pkl.")
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="checkpoint file (.pkl / .pth), detectron2://NAME (detectron2's model-zoo "
                        "names) or an http(s) URL")
    p.add_argument("--d2-config", metavar="CONFIG.yaml",
                   help="the detectron2 config the model was trained with (cfg.dump() output or a "
                        "model-zoo yaml with _BASE_ files next to it); without it the architecture "
                        "is inferred from the weights and test-time settings are assumed")
    p.add_argument("--output", "-o", metavar="OUTDIR",
                   help="directory for model_final.npz and config.yaml "
                        "(default: ./<MODEL's file name without extension>)")
    p.add_argument("--to-detectron2", nargs=2, metavar=("MODEL_DIR", "OUT.pkl"),
                   help="write a tfmrcnn model directory (config.yaml + model_final.npz, e.g. a "
                        "training OUTPUT_DIR; or a checkpoint .npz in one) as a detectron2 .pkl")
    return p


def _default_output(model: str) -> str:
    name = model.rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[0] or "converted"


class _Progress:
    """Prints a download's progress to stderr every 10 %."""

    def __init__(self):
        self.shown = -1

    def __call__(self, done: int, total: Optional[int]) -> None:
        if not total:
            return
        tenth = done * 10 // total
        if tenth > self.shown:
            self.shown = tenth
            print(f"  {done / total:4.0%}  {done / 2 ** 20:.1f} of {total / 2 ** 20:.1f} MiB",
                  file=sys.stderr)


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.to_detectron2 and (args.model or args.d2_config or args.output):
        parser.error("--to-detectron2 MODEL_DIR OUT.pkl takes no MODEL, --d2-config or --output")
    if not args.to_detectron2 and not args.model:
        parser.error("MODEL is required (or --to-detectron2 MODEL_DIR OUT.pkl)")
    # imported after parsing so that --help stays instant
    from tfmrcnn.config import ConfigError
    from tfmrcnn.converter.convert import ConversionError, convert_checkpoint, export_model_dir
    from tfmrcnn.converter.d2_config import cfg_from_d2_config
    from tfmrcnn.converter.safe_pickle import UnsafePickleError
    from tfmrcnn.converter.zoo import ZooError, fetch
    from tfmrcnn.checkpoint.weights_io import WeightsError
    try:
        if args.to_detectron2:
            export_model_dir(*args.to_detectron2)
            return 0
        if args.d2_config:  # a config tfmrcnn cannot run fails before any download
            cfg_from_d2_config(args.d2_config)
        local = fetch(args.model, log=_log, progress=_Progress())
        output = args.output or _default_output(args.model)
        convert_checkpoint(local, output, d2_config=args.d2_config)
    except (ConversionError, UnsafePickleError, ConfigError, ZooError, WeightsError, OSError) as e:
        print(f"tfmrcnn-convert: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
