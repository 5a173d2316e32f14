"""tfmrcnn-convert: detectron2 / Caffe2 checkpoint -> tfmrcnn weights file + config.

    tfmrcnn-convert model_final_f10217.pkl --d2-config config.yaml --output OUTDIR
    tfmrcnn-convert R-50.pkl --output OUTDIR          # ImageNet backbone, architecture inferred

OUTDIR then holds model_final.npz and config.yaml, all that `tfmrcnn-predict --model OUTDIR`
and `tfmrcnn-eval --model OUTDIR` need.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfmrcnn-convert",
        description="Convert a detectron2 model (.pkl, or .pth with torch installed) or a Caffe2/"
                    "MSRA ImageNet backbone (.pkl) to tfmrcnn's weights file and config.")
    p.add_argument("model", metavar="MODEL", help="checkpoint file (.pkl / .pth)")
    p.add_argument("--d2-config", metavar="CONFIG.yaml",
                   help="the detectron2 config the model was trained with (cfg.dump() output or a "
                        "model-zoo yaml with _BASE_ files next to it); without it the architecture "
                        "is inferred from the weights and test-time settings are assumed")
    p.add_argument("--output", "-o", required=True, metavar="OUTDIR",
                   help="directory for model_final.npz and config.yaml")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (utils/launch.py)
    # imported after parsing so that --help stays instant
    from tfmrcnn.converter.convert import ConversionError, convert_checkpoint
    from tfmrcnn.converter.safe_pickle import UnsafePickleError
    from tfmrcnn.config import ConfigError
    try:
        convert_checkpoint(args.model, args.output, d2_config=args.d2_config)
    except (ConversionError, UnsafePickleError, ConfigError, OSError) as e:
        print(f"tfmrcnn-convert: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
