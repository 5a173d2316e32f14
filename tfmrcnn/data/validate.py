"""Checking a data set before training or evaluation start their long work.

A problem found hours into a run (a missing image, a malformed RLE, a json whose image sizes
are wrong) used to crash it or, worse, change its result without a word. ``check_training_set``
and ``check_evaluation_set`` look at every record first and list every problem, each naming
the file, image id and annotation id.

What is checked (records are the dataset dicts of `tfmrcnn.data.coco`)
---------------------------------------------------------------------
* image: the file exists and is complete, and its size (`tfmrcnn.data.image_io.image_size`,
  from the header, EXIF orientation applied) equals the record's ``height``/``width``. A
  mismatch is an error, as detectron2's ``SizeMismatchError``; with ``trust_image_size`` the
  record takes the file's size instead (its annotations are then taken to be in the file's
  pixels, which is how training already scaled them).
* RLE segmentations: ``size`` and ``counts`` present, ``size`` equal to the image's, counts
  not negative and summing to height x width (pycocotools decodes a wrong sum into garbage or
  out-of-bounds writes instead of failing).
* categories: every label below the model's ``NUM_CLASSES``; for evaluation the json has
  exactly ``NUM_CLASSES`` categories (labels are mapped to the json's categories sorted by id).
* evaluation only, the ground-truth json as pycocotools scores it: every annotation's
  segmentation can be rasterised (``[]`` or a bbox-like polygon crashes pycocotools' ``annToRLE``
  after all inference) and its RLEs pass the check above.
* training only: an image is usable when it has at least one non-crowd box with both sides
  > EMPTY_BOX_THRESHOLD after clipping to the image; the others (no annotations, crowd only,
  every box outside the image) are dropped and counted, as the input pipeline would drop them
  on every visit.

Policies: evaluation never skips (its AP would be of another set): any problem stops it. Training
stops too, unless ``skip_bad_images``: then images with problems are left out and counted. If
no usable training image remains, training stops at once with the counts. Category problems
always stop. Errors are ``DatasetError`` (a ValueError) whose message is the report.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfmrcnn.data.image_io import ImageReadError, image_size

__all__ = ["Problem", "DatasetError", "DataCheck", "check_training_set", "check_evaluation_set",
           "ground_truth_problems", "rle_counts", "rle_problem", "apply_check"]

logger = logging.getLogger(__name__)

EMPTY_BOX_THRESHOLD = 1e-5  # detectron2 Boxes.nonempty, as tfmrcnn.data.transforms
MAX_REPORTED = 50           # problem lines in a report; the rest are counted by kind
_CHECK_THREADS = 8          # file checks are I/O: a few threads hide the latency

UNREADABLE = "unreadable image"
SIZE_MISMATCH = "size mismatch"
BAD_RLE = "bad RLE"
BAD_SEGMENTATION = "bad segmentation"
BAD_CATEGORY = "category"


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    image_id: object
    detail: str
    annotation_id: object = None

    def __str__(self):
        where = f"image {self.image_id}"
        if self.annotation_id is not None:
            where += f", annotation {self.annotation_id}"
        return f"{self.file} ({where}): {self.kind}: {self.detail}"


class DatasetError(ValueError):
    """A data set cannot be used as it is; the message lists the problems."""


def format_problems(problems: Sequence[Problem]) -> str:
    """Up to MAX_REPORTED problem lines, then counts by kind of the others."""
    lines = [f"  {p}" for p in problems[:MAX_REPORTED]]
    rest = problems[MAX_REPORTED:]
    if rest:
        kinds = collections.Counter(p.kind for p in rest)
        lines.append(f"  ... and {len(rest)} more: " +
                     ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
    return "\n".join(lines)


@dataclass
class DataCheck:
    """The outcome of a check: small enough to broadcast from rank 0 to the others.

    keep: indices of the records to use, in order; sizes: {index: (height, width)} that
    replace a record's size (trust_image_size); error: the report when the command must stop;
    notes: lines to log (what was skipped and why).
    """
    keep: List[int]
    sizes: Dict[int, Tuple[int, int]]
    error: Optional[str] = None
    notes: Tuple[str, ...] = ()


def apply_check(records: Sequence[dict], check: DataCheck) -> List[dict]:
    """The records a check kept, with trusted sizes applied; raises DatasetError on its error."""
    for line in check.notes:
        logger.warning("%s", line)
    if check.error:
        raise DatasetError(check.error)
    out = []
    for i in check.keep:
        record = records[i]
        if i in check.sizes:
            record = dict(record, height=check.sizes[i][0], width=check.sizes[i][1])
        out.append(record)
    return out


# ---------------------------------------------------------------------------- RLE
def rle_counts(counts) -> List[int]:
    """Run lengths of an RLE ``counts``: a list of ints, or pycocotools' compressed string.

    The string form (pycocotools ``maskApi.c: rleFrString``): each count is written in 5-bit
    groups, least significant first, as characters 48 + value; bit 0x20 says another group
    follows, bit 0x10 of the last group is the sign; from the fourth count on, each is stored
    as the difference to the count two places before. Raises ValueError when malformed.
    """
    if isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise ValueError("uncompressed counts must be integers")
        return [int(c) for c in counts]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str):
        raise ValueError(f"counts is a {type(counts).__name__}, not a string or a list")
    out, value, shift = [], 0, 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64:
            raise ValueError(f"character {char!r} cannot occur in compressed counts")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("compressed counts end inside a number")
    return out


def rle_problem(segm: dict, height: int, width: int) -> Optional[str]:
    """Why an RLE dict cannot be decoded as an (height, width) mask, or None if it can."""
    size = segm.get("size")
    if "counts" not in segm:
        return "no 'counts'"
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or
            not all(isinstance(v, (int, np.integer)) for v in size)):
        return f"'size' is {size!r}, not [height, width]"
    if list(size) != [height, width]:
        return f"size {list(size)} differs from the image's [{height}, {width}]"
    try:
        counts = rle_counts(segm["counts"])
    except ValueError as e:
        return f"malformed counts: {e}"
    if any(c < 0 for c in counts):
        return "negative run length in counts"
    if sum(counts) != height * width:
        return (f"counts cover {sum(counts)} pixels, size {list(size)} has "
                f"{height * width}")
    return None


# ---------------------------------------------------------------------------- images
def _image_problem(record: dict, trust_image_size: bool):
    """(Problem or None, the file's (h, w) or None when unreadable) of one record's file."""
    path = record["file_name"]
    try:
        h, w = image_size(path)
    except ImageReadError as e:
        return Problem(UNREADABLE, path, record.get("image_id"), str(e)), None
    want = (record.get("height", h), record.get("width", w))
    if (h, w) == want or trust_image_size:
        return None, (h, w)
    return Problem(SIZE_MISMATCH, path, record.get("image_id"),
                   f"the file is {h}x{w} (HxW), the json says {want[0]}x{want[1]}; fix the "
                   f"json, or set DATASETS.TRUST_IMAGE_SIZE True to use the file's size "
                   f"with the json's coordinates"), (h, w)


def _check_files(records: Sequence[dict], trust_image_size: bool):
    """({index: [Problem]}, {index: (h, w) of the file}) of every record's image file."""
    with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
        results = list(pool.map(lambda r: _image_problem(r, trust_image_size), records))
    problems = {i: [p] for i, (p, _) in enumerate(results) if p is not None}
    sizes = {i: s for i, (_, s) in enumerate(results) if s is not None}
    return problems, sizes


def _size_fixes(records: Sequence[dict], sizes: Dict[int, Tuple[int, int]], keep):
    """{index: file size} of the kept records whose height/width must change (or are absent)."""
    return {i: sizes[i] for i in keep
            if (records[i].get("height"), records[i].get("width")) != sizes[i]}


def _annotation_problems(record: dict, size: Tuple[int, int]) -> List[Problem]:
    """RLEs of the non-crowd annotations (the ones training decodes) that cannot be decoded."""
    out = []
    for ann in record.get("annotations", []):
        segm = ann.get("segmentation")
        if isinstance(segm, dict) and not ann.get("iscrowd", 0):
            why = rle_problem(segm, *size)
            if why:
                out.append(Problem(BAD_RLE, record["file_name"], record.get("image_id"), why,
                                   ann.get("id")))
    return out


def _category_problems(records: Sequence[dict], num_classes: int) -> List[Problem]:
    out = []
    for record in records:
        for ann in record.get("annotations", []):
            label = ann.get("category_id")
            if not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
                out.append(Problem(
                    BAD_CATEGORY, record["file_name"], record.get("image_id"),
                    f"label {label} outside the model's MODEL.ROI_HEADS.NUM_CLASSES = "
                    f"{num_classes} (the data set has more categories than the model)",
                    ann.get("id")))
    return out


def _usable(record: dict, size: Tuple[int, int]) -> bool:
    """Whether some non-crowd box keeps both sides > EMPTY_BOX_THRESHOLD inside the image."""
    h, w = size
    for ann in record.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        if (min(x + bw, w) - max(x, 0.0) > EMPTY_BOX_THRESHOLD and
                min(y + bh, h) - max(y, 0.0) > EMPTY_BOX_THRESHOLD):
            return True
    return False


# ---------------------------------------------------------------------------- entry points
def check_training_set(records: Sequence[dict], num_classes: int, *,
                       trust_image_size: bool = False, skip_bad_images: bool = False,
                       with_masks: bool = True, name: str = "the training set") -> DataCheck:
    """The check of a training set (see the module docstring); reads every image header."""
    problems, sizes = _check_files(records, trust_image_size)
    if with_masks:
        for i, record in enumerate(records):
            if i not in problems:
                found = _annotation_problems(record, sizes[i])
                if found:
                    problems[i] = found
    listed = [p for i in sorted(problems) for p in problems[i]]
    categories = _category_problems(records, num_classes)
    if categories:
        return DataCheck([], {}, f"{name}: {len(categories)} annotations have a category the "
                                 f"model cannot predict:\n{format_problems(categories + listed)}")
    if listed and not skip_bad_images:
        return DataCheck([], {}, (
            f"{name}: {len(listed)} problems in {len(problems)} of {len(records)} images; "
            f"fix them, or set DATASETS.SKIP_BAD_IMAGES True to train without those images:"
            f"\n{format_problems(listed)}"))
    notes = []
    if listed:
        notes.append(f"{name}: leaving out {len(problems)} of {len(records)} images with "
                     f"problems (DATASETS.SKIP_BAD_IMAGES):\n{format_problems(listed)}")
    keep = [i for i in range(len(records)) if i not in problems and _usable(records[i], sizes[i])]
    empty = len(records) - len(problems) - len(keep)
    if empty:
        notes.append(f"{name}: leaving out {empty} images without a usable instance (no "
                     f"annotations, crowd regions only, or every box outside the image)")
    if not keep:
        kinds = collections.Counter(p.kind for i in problems for p in problems[i][:1])
        counts = ", ".join([f"{k}: {n}" for k, n in sorted(kinds.items())] +
                           [f"without a usable instance: {empty}"])
        return DataCheck([], {}, f"{name}: no usable training image among {len(records)} "
                                 f"({counts})", tuple(notes))
    return DataCheck(keep, _size_fixes(records, sizes, keep), None, tuple(notes))


def ground_truth_problems(coco_gt) -> List[Problem]:
    """Annotations of a pycocotools COCO object that its evaluation cannot rasterise."""
    import pycocotools.mask as mask_util

    out = []
    for ann in coco_gt.dataset.get("annotations", []):
        img = coco_gt.imgs.get(ann.get("image_id"), {})
        h, w = img.get("height"), img.get("width")
        segm = ann.get("segmentation")
        file = img.get("file_name", "?")
        if segm is None:
            continue  # box-only ground truth: segm is not scored against it
        if isinstance(segm, dict):
            why = rle_problem(segm, h, w)
        elif isinstance(segm, list):
            try:  # exactly what COCO.annToRLE does with polygons
                mask_util.merge(mask_util.frPyObjects(segm, h, w))
                why = None
            except Exception as e:  # noqa: BLE001 - pycocotools raises anything here
                why = f"polygons {str(segm)[:60]} cannot be rasterised ({type(e).__name__})"
        else:
            why = f"a {type(segm).__name__}, not polygons or an RLE"
        if why:
            kind = BAD_RLE if isinstance(segm, dict) else BAD_SEGMENTATION
            out.append(Problem(kind, file, ann.get("image_id"), why, ann.get("id")))
    return out


def check_evaluation_set(records: Sequence[dict], num_classes: int, coco_gt=None, *,
                         trust_image_size: bool = False, name: str = "the evaluation set",
                         with_masks: bool = True) -> DataCheck:
    """The check of an evaluation set (see the module docstring): no problem is skipped.

    coco_gt: the pycocotools COCO object of its json (its categories and, when masks are
    scored, its segmentations are checked).
    """
    if not records:
        return DataCheck([], {}, f"{name}: no images to evaluate")
    problems, sizes = _check_files(records, trust_image_size)
    listed = [p for i in sorted(problems) for p in problems[i]]
    if coco_gt is not None:
        num_categories = len(coco_gt.getCatIds())
        if num_categories != num_classes:
            return DataCheck([], {}, (
                f"{name}: its json has {num_categories} categories, the model predicts "
                f"MODEL.ROI_HEADS.NUM_CLASSES = {num_classes}; labels could not be mapped to "
                f"the json's category ids"))
        if with_masks:
            listed += ground_truth_problems(coco_gt)
    if listed:
        return DataCheck([], {}, (
            f"{name}: {len(listed)} problems; evaluation scores every image and annotation, "
            f"so fix them first:\n{format_problems(listed)}"))
    keep = list(range(len(records)))
    return DataCheck(keep, _size_fixes(records, sizes, keep))


# ---------------------------------------------------------------------------- commands
def _on_rank0(fn):
    """fn() run on rank 0 only, its result (or its error, as DatasetError) on every rank.

    One process reads the files, and every rank takes the same decision (a rank that stopped
    alone would leave the others waiting in a collective).
    """
    from tfmrcnn.distributed import horovod_if_distributed

    hvd = horovod_if_distributed()
    if hvd is None:
        return fn()
    outcome = None
    if hvd.rank() == 0:
        try:
            outcome = (fn(), None)
        except (OSError, ValueError) as e:
            outcome = (None, str(e))
    result, error = hvd.broadcast_object(outcome, root_rank=0)
    if error is not None:
        raise DatasetError(error)
    return result


def checked_training_records(cfg, records: Sequence[dict]) -> List[dict]:
    """The usable records of DATASETS.TRAIN (already loaded); raises DatasetError."""
    check = _on_rank0(lambda: check_training_set(
        records, int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        trust_image_size=bool(cfg.DATASETS.TRUST_IMAGE_SIZE),
        skip_bad_images=bool(cfg.DATASETS.SKIP_BAD_IMAGES), with_masks=bool(cfg.MODEL.MASK_ON),
        name="DATASETS.TRAIN " + ", ".join(cfg.DATASETS.TRAIN)))
    return apply_check(records, check)


def _evaluation_source(dataset):
    """(records, json_file, display name) of a registered name or a (json, image root) pair."""
    from tfmrcnn.data.catalog import DatasetCatalog, MetadataCatalog
    from tfmrcnn.data.coco import load_coco_json

    if isinstance(dataset, str):
        records = DatasetCatalog.get(dataset)
        return records, MetadataCatalog.get(dataset).json_file, dataset
    json_file, image_root = dataset
    return load_coco_json(json_file, image_root), json_file, json_file


def checked_evaluation_records(cfg, dataset) -> List[dict]:
    """The records to evaluate of a dataset name or (json, image root) pair, checked against
    its json and the model's NUM_CLASSES; raises DatasetError (or the loader's errors)."""
    from tfmrcnn.data.coco import open_coco

    records, json_file, name = _evaluation_source(dataset)
    check = _on_rank0(lambda: check_evaluation_set(
        records, int(cfg.MODEL.ROI_HEADS.NUM_CLASSES), open_coco(json_file),
        trust_image_size=bool(cfg.DATASETS.TRUST_IMAGE_SIZE), name=name,
        with_masks=bool(cfg.MODEL.MASK_ON)))
    return apply_check(records, check)
