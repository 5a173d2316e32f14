"""Write the synthetic shapes set (COCO format) to a directory.

    python -m tfmrcnn.cli.shapes --output DIR --num-train 1000 --num-val 100 --seed 0
    python -m tfmrcnn.cli.shapes --output DIR --image-size 256 256   # fixed size

Without --image-size each image side is drawn from --size-range (default 192 320).
DIR must be new, empty, or a folder this command wrote before (it holds a .tfmrcnn-shapes
marker): any other folder is refused with an error and left untouched.
"""

import argparse
import logging

from tfmrcnn.data.shapes import (DEFAULT_SIZE_RANGE, SPLITS, ForeignDirectoryError,
                                  ensure_shapes_dataset, shapes_paths)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="directory the set is written to")
    p.add_argument("--num-train", type=int, default=1000, help="training images")
    p.add_argument("--num-val", type=int, default=100, help="validation images")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="fixed image size; default: each side drawn from --size-range")
    p.add_argument("--size-range", type=int, nargs=2, metavar=("LO", "HI"),
                   default=list(DEFAULT_SIZE_RANGE), help="inclusive range of image sides")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfmrcnn.utils.launch import reexec_with_allocator

    reexec_with_allocator(argv)  # tcmalloc from the process start (utils/launch.py)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if min(args.num_train, args.num_val) < 0:
        raise SystemExit("--num-train and --num-val must be >= 0")
    if args.size_range[0] < 32 or args.size_range[0] > args.size_range[1]:
        raise SystemExit("--size-range needs 32 <= LO <= HI")
    try:
        root = ensure_shapes_dataset(args.output, args.num_train, args.num_val, args.seed,
                                     image_size=args.image_size, size_range=args.size_range)
    except ForeignDirectoryError as e:
        raise SystemExit(f"tfmrcnn-shapes: error: {e}") from None
    for split in SPLITS:
        json_file, image_root = shapes_paths(root, split)
        print(f"{split}: {json_file}  images: {image_root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
