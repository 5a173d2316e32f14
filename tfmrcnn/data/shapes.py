"""A deterministic synthetic instance-segmentation set in COCO format: circles, squares, triangles.

Every object is a regular polygon (circle = 32-gon, square = 4-gon, triangle = 3-gon) with a
random circumradius, rotation and flat colour, on a noisy background. Objects never overlap
(rejection sampling on gap-separated bounding boxes), so each polygon is exactly the visible
region of its object and COCO polygons are exact ground truth.

Coordinates are COCO's continuous ones: pixel (i, j) covers [j, j+1] x [i, i+1]; polygon
vertices are rounded to 1/100 px and the stored polygon is the one rendered. ``bbox`` is the
polygon's extent [x, y, w, h] (no +1), ``area`` the polygon's (shoelace) area.

Layout written under ``root``::

    root/train/000001.png ...           images (BGR noise + shapes, PNG)
    root/val/000001.png ...
    root/annotations/instances_train.json, instances_val.json
    root/.tfmrcnn-shapes                owner marker; written first (see claim_directory)
    root/STAMP.json                     generation parameters; written last (see ensure_...)

Ownership: the generator writes only into a folder it created or an empty one, and marks it
before writing anything else. A folder that exists, is not empty and has no marker (and no
stamp of an earlier generator version) is someone else's: ``ForeignDirectoryError`` names it
and nothing is written, renamed or deleted. Replacing a set deletes only the files that set's
stamp says the generator wrote.

Determinism: image ``k`` of a split is drawn from ``SeedSequence([seed, split, k])``, so the
same seed gives byte-identical files, and an image does not depend on how many were asked for.
"""

import contextlib
import fcntl
import json
import logging
import os

import cv2
import numpy as np

__all__ = [
    "CATEGORIES", "DEFAULT_SIZE_RANGE", "SPLITS", "generate_shapes_dataset",
    "ensure_shapes_dataset", "shapes_paths", "render_polygon", "claim_directory",
    "ForeignDirectoryError", "OWNER_MARKER",
]

logger = logging.getLogger(__name__)

# COCO category id, name, number of polygon vertices.
CATEGORIES = ({"id": 1, "name": "circle", "vertices": 32},
              {"id": 2, "name": "square", "vertices": 4},
              {"id": 3, "name": "triangle", "vertices": 3})
SPLITS = ("train", "val")
DEFAULT_SIZE_RANGE = (192, 320)  # image sides drawn uniformly (inclusive) per image and axis
GENERATOR_VERSION = 1  # bump when the drawing changes, so old stamped sets are regenerated
OWNER_MARKER = ".tfmrcnn-shapes"  # in a folder the generator created or adopted empty
STAMP_FILE = "STAMP.json"

_MAX_OBJECTS = 4
_PLACEMENT_TRIES = 50
_GAP = 2.0  # px between object boxes, so anti-aliasing-free rasters cannot touch either
_BG_NOISE_STD = 12.0
_MIN_COLOUR_DISTANCE = 80.0  # L1 / 3 between object and background colour
_COORD_DECIMALS = 2
_SUPERSAMPLE = 8  # sub-pixels per pixel side when rasterising polygons


def render_polygon(mask, polygon, value=1):
    """Set the pixels of ``mask`` (H, W) that the continuous polygon [x0, y0, x1, y1, ...]
    covers by at least half to ``value``, in place; returns mask.

    cv2 puts integer coordinates at pixel centres, while continuous coordinate x is at cv2
    coordinate x - 0.5 (pixel j spans [j, j+1]). cv2.fillPoly also fills every pixel whose
    centre is within about half a pixel outside the outline, which alone would fatten a shape by
    ~0.5 px all round. So the polygon is filled at _SUPERSAMPLE x resolution (where that bias is
    1/16 px) and each pixel keeps the shape if at least half of its sub-pixels are filled: an
    almost unbiased coverage rule, agreeing with pycocotools' rasteriser up to boundary pixels.
    """
    pts = np.asarray(polygon, np.float64).reshape(-1, 2)  # (V, 2) continuous xy
    height, width = mask.shape[:2]
    x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int), [width, height])
    if x1 <= x0 or y1 <= y0:
        return mask
    s = _SUPERSAMPLE
    fine = np.zeros(((y1 - y0) * s, (x1 - x0) * s), np.uint8)
    fine_pts = (pts - [x0, y0]) * s - 0.5  # cv2 pixel-centre coordinates of the fine grid
    fine_pts = np.round(fine_pts * 256.0).astype(np.int32)  # 8 fractional bits for cv2
    cv2.fillPoly(fine, [fine_pts], color=1, lineType=cv2.LINE_8, shift=8)
    coverage = fine.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))  # (h, w) in [0, 1]
    mask[y0:y1, x0:x1][coverage >= 0.5] = value
    return mask


def _regular_polygon(cx, cy, radius, vertices, angle):
    """(V, 2) vertices of a regular polygon, rounded to the stored precision."""
    theta = angle + 2.0 * np.pi * np.arange(vertices) / vertices
    pts = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
    return np.round(pts, _COORD_DECIMALS)


def _polygon_area(pts):
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _boxes_apart(a, b):
    """xyxy boxes separated by at least _GAP on some axis."""
    return (a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or
            a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1])


def _draw_colour(rng, background):
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).mean() >= _MIN_COLOUR_DISTANCE:
            return colour


def _sample_objects(rng, height, width):
    """[(category dict, (V, 2) polygon)] of 1.._MAX_OBJECTS non-overlapping shapes."""
    short = min(height, width)
    r_min, r_max = max(8.0, 0.05 * short), 0.22 * short  # circumradius in px
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        for _ in range(_PLACEMENT_TRIES):
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            radius = rng.uniform(r_min, r_max)
            angle = rng.uniform(0.0, 2.0 * np.pi) if cat["vertices"] < 32 else 0.0
            cx = rng.uniform(radius + 1.0, width - radius - 1.0)
            cy = rng.uniform(radius + 1.0, height - radius - 1.0)
            pts = _regular_polygon(cx, cy, radius, cat["vertices"], angle)
            box = (*pts.min(axis=0), *pts.max(axis=0))
            if all(_boxes_apart(box, other) for other in boxes):
                objects.append((cat, pts))
                boxes.append(box)
                break
    return objects


def _make_image(seed, split_index, image_index, size, size_range):
    """(BGR uint8 image, [(category dict, polygon)]) of one image, from its own seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, image_index]))
    if size is not None:
        height, width = size
    else:
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0.0, _BG_NOISE_STD, size=(height, width, 3))
    image = np.clip(background + noise, 0, 255).astype(np.uint8)  # (H, W, 3) BGR
    objects = _sample_objects(rng, height, width)
    for cat, pts in objects:
        colour = _draw_colour(rng, background)
        mask = render_polygon(np.zeros((height, width), np.uint8), pts.ravel())
        image[mask.astype(bool)] = colour.astype(np.uint8)
    return image, objects


def _write_split(root, split, split_index, num_images, seed, size, size_range):
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for k in range(num_images):
        image, objects = _make_image(seed, split_index, k, size, size_range)
        file_name = f"{k + 1:06d}.png"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image):
            raise OSError(f"cv2 could not write {os.path.join(image_dir, file_name)}")
        image_id = k + 1
        images.append({"id": image_id, "file_name": file_name,
                       "height": image.shape[0], "width": image.shape[1]})
        for cat, pts in objects:
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat["id"],
                "segmentation": [[float(v) for v in pts.ravel()]],
                "area": round(_polygon_area(pts), 4),
                "bbox": [float(x0), float(y0), round(float(x1 - x0), 4),
                         round(float(y1 - y0), 4)],
                "iscrowd": 0,
            })
    dataset = {
        "info": {"description": f"tfmrcnn synthetic shapes ({split})", "version": "1.0",
                 "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c["id"], "name": c["name"], "supercategory": "shape"}
                       for c in CATEGORIES],
    }
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(dataset, f, separators=(",", ":"))


def shapes_paths(root, split):
    """(json_file, image_root) of a split of the set under ``root``."""
    return (os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split))


def _generated_files(params):
    """Paths (relative to the root) of every file a set with these parameters consists of."""
    files = []
    for split, num in zip(SPLITS, (params["num_train"], params["num_val"])):
        files += [os.path.join(split, f"{k + 1:06d}.png") for k in range(num)]
        files.append(os.path.join("annotations", f"instances_{split}.json"))
    return files


class ForeignDirectoryError(FileExistsError):
    """The output folder exists with content the generator did not write."""


def claim_directory(root):
    """Make sure ``root`` is the generator's folder; returns the path of its owner marker.

    ``root`` is created if missing; an existing empty folder is adopted; a folder holding a
    stamp of any generator version is ours from before markers existed. Any other existing
    folder raises ForeignDirectoryError naming it, before anything is written. The marker is
    the first file written, so a folder the generator is filling is always recognisably ours.
    """
    marker = os.path.join(root, OWNER_MARKER)
    try:
        os.makedirs(root)
    except FileExistsError:
        if not os.path.isdir(root):
            raise ForeignDirectoryError(
                f"Shapes data set path {root} exists and is not a folder; choose another "
                f"path") from None
        if not os.path.exists(marker) and os.listdir(root) and _read_stamp(root) is None:
            raise ForeignDirectoryError(
                f"Refusing to write the shapes data set into {root}: the folder exists, is "
                f"not empty and was not made by the shapes generator (no {OWNER_MARKER} "
                f"file). Nothing was changed. Choose a new or empty folder (--output, "
                f"$TFMRCNN_SHAPES_DIR or $TFMRCNN_DATASETS), or move that folder away.") from None
    with open(marker, "a"):
        pass
    return marker


def _write_set(root, num_train, num_val, seed, image_size, size_range):
    for split_index, (split, num) in enumerate(zip(SPLITS, (num_train, num_val))):
        _write_split(root, split, split_index, num, seed, image_size, size_range)


def generate_shapes_dataset(root, num_train=1000, num_val=100, seed=0, image_size=None,
                            size_range=DEFAULT_SIZE_RANGE):
    """Write the set under ``root`` (see claim_directory: a foreign folder is refused; the
    set's own files are overwritten), without a stamp.

    image_size: (H, W) for every image, or None to draw each side from ``size_range``.
    Returns the parameters dict that ensure_shapes_dataset stamps.
    """
    claim_directory(root)
    _write_set(root, num_train, num_val, seed, image_size, size_range)
    return _params(num_train, num_val, seed, image_size, size_range)


def _params(num_train, num_val, seed, image_size, size_range):
    return {"version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "seed": int(seed), "image_size": list(image_size) if image_size else None,
            "size_range": list(size_range)}


def _read_stamp(root):
    """The stamp's parameters dict, or None when there is no readable stamp."""
    try:
        with open(os.path.join(root, STAMP_FILE)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or not {"version", "num_train", "num_val"} <= set(stamp):
        return None
    return stamp


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive lock between processes (several Horovod ranks may ask for the set at once)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_generated(root, stamp):
    """Delete the files (and then-empty folders) that the stamped set consists of; nothing else."""
    os.remove(os.path.join(root, STAMP_FILE))  # first: a half-removed set must not look complete
    if stamp is None:
        return
    try:
        files = _generated_files(stamp)
    except (KeyError, TypeError, ValueError):
        return
    for rel in files:
        path = os.path.join(root, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
    for folder in (*SPLITS, "annotations"):
        with contextlib.suppress(OSError):  # not empty (someone else's files) or absent
            os.rmdir(os.path.join(root, folder))


def ensure_shapes_dataset(root, num_train=1000, num_val=100, seed=0, image_size=None,
                          size_range=DEFAULT_SIZE_RANGE):
    """Generate the set under ``root`` unless a complete one with these parameters is there.

    ``root`` must be the generator's folder (see claim_directory). Under a lock on its owner
    marker: a set with other parameters is removed file by file (its stamp first), the new one
    written, and ``STAMP.json`` written last (atomically), so a crash never leaves a stamped set
    with missing files. Returns ``root`` (absolute).
    """
    root = os.path.abspath(root)
    params = _params(num_train, num_val, seed, image_size, size_range)
    if _read_stamp(root) == params:
        return root
    marker = claim_directory(root)
    with _file_lock(marker):
        old = _read_stamp(root)
        if old == params:  # another process made it while we waited
            return root
        if os.path.exists(os.path.join(root, STAMP_FILE)):
            _remove_generated(root, old)
        logger.info("Generating shapes dataset under %s: %s", root, params)
        _write_set(root, num_train, num_val, seed, image_size, size_range)
        tmp = os.path.join(root, f".{STAMP_FILE}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(params, f, indent=1)
        os.replace(tmp, os.path.join(root, STAMP_FILE))
    return root
