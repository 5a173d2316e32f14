"""COCO instance json -> detectron2-style dataset dicts.

One dict per image::

    {"file_name": str (image_root joined), "height": int, "width": int, "image_id": int,
     "annotations": [{"id": the json's annotation id (for messages),
                      "bbox": [x, y, w, h] (continuous px, no +1),
                      "category_id": int (contiguous 0..K-1, categories sorted by json id),
                      "segmentation": [[x0, y0, x1, y1, ...], ...] polygons, or an RLE dict
                                      {"size": [h, w], "counts": str | list},
                      "iscrowd": 0 | 1}, ...]}

Annotations with w or h <= 0 are dropped, as are polygons with fewer than 3 points (and an
annotation left without polygons); both are counted in the log.
"""

import contextlib
import io
import logging
import os

__all__ = ["load_coco_json", "filter_images_with_only_crowd_annotations", "category_maps",
           "open_coco", "CocoFormatError"]

logger = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """The json is not a readable COCO instances file."""


def category_maps(categories):
    """(thing_classes, {json id: contiguous id}, {contiguous id: json id}) sorted by json id."""
    cats = sorted(categories, key=lambda c: c["id"])
    to_contiguous = {c["id"]: i for i, c in enumerate(cats)}
    return ([c["name"] for c in cats], to_contiguous,
            {i: c["id"] for i, c in enumerate(cats)})


def open_coco(json_file):
    """pycocotools COCO of a json file, quietly; errors name the file (CocoFormatError)."""
    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            return COCO(json_file)
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError) as e:
        # json.JSONDecodeError is a ValueError; a json of the wrong shape gives the others.
        raise CocoFormatError(f"Cannot read COCO annotation file {json_file}: "
                              f"{type(e).__name__}: {e}") from None


def _clean_segmentation(segm):
    """(segmentation or None if nothing usable, number of polygons dropped)."""
    if isinstance(segm, dict):  # RLE
        return segm, 0
    if not isinstance(segm, list):
        return None, 0
    polygons = [p for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
    return (polygons or None), len(segm) - len(polygons)


def _convert_annotation(ann, to_contiguous):
    """A dataset annotation dict, or None (with a reason) for a degenerate one."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    if w <= 0 or h <= 0:
        return None, "empty box", 0
    if ann["category_id"] not in to_contiguous:
        raise CocoFormatError(f"annotation {ann.get('id')} has category_id "
                              f"{ann['category_id']} missing from 'categories'")
    out = {"id": ann.get("id"), "bbox": [x, y, w, h],
           "category_id": to_contiguous[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0))}
    dropped = 0
    if "segmentation" in ann:
        segm, dropped = _clean_segmentation(ann["segmentation"])
        if segm is None:
            return None, "no valid polygon", dropped
        out["segmentation"] = segm
    return out, None, dropped


def load_coco_json(json_file, image_root, metadata=None):
    """Dataset dicts of a COCO instances json (see module docstring), sorted by image id.

    With ``metadata`` (a catalog entry, ``MetadataCatalog.get(name)``: the catalog passes it in,
    this module never imports the catalog), it gets thing_classes,
    thing_dataset_id_to_contiguous_id, thing_contiguous_id_to_dataset_id, json_file,
    image_root and evaluator_type "coco".
    """
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image directory not found: {image_root} (images of {json_file})")
    coco = open_coco(json_file)
    try:
        thing_classes, to_contiguous, to_dataset = category_maps(coco.loadCats(coco.getCatIds()))
        image_ids = sorted(coco.imgs)
        dicts, dropped = [], {"empty box": [], "no valid polygon": [], "polygons": 0}
        for image_id in image_ids:
            img = coco.imgs[image_id]
            record = {"file_name": os.path.join(image_root, img["file_name"]),
                      "height": int(img["height"]), "width": int(img["width"]),
                      "image_id": image_id, "annotations": []}
            for ann in coco.imgToAnns.get(image_id, []):
                out, reason, bad_polygons = _convert_annotation(ann, to_contiguous)
                dropped["polygons"] += bad_polygons
                if out is None:
                    dropped[reason].append(ann.get("id"))
                else:
                    record["annotations"].append(out)
            dicts.append(record)
    except KeyError as e:
        raise CocoFormatError(f"COCO annotation file {json_file} lacks a field: {e}") from None
    except CocoFormatError as e:
        raise CocoFormatError(f"COCO annotation file {json_file}: {e}") from None

    logger.info("Loaded %d images, %d annotations from %s", len(dicts),
                sum(len(d["annotations"]) for d in dicts), json_file)
    if dropped["empty box"] or dropped["no valid polygon"] or dropped["polygons"]:
        logger.warning("%s: dropped %d annotations with an empty box%s, %d without a valid "
                       "polygon%s and %d polygons with < 3 points", json_file,
                       len(dropped["empty box"]), _some_ids(dropped["empty box"]),
                       len(dropped["no valid polygon"]), _some_ids(dropped["no valid polygon"]),
                       dropped["polygons"])
    if metadata is not None:
        metadata.set(
            thing_classes=thing_classes, thing_dataset_id_to_contiguous_id=to_contiguous,
            thing_contiguous_id_to_dataset_id=to_dataset, json_file=json_file,
            image_root=image_root, evaluator_type="coco")
    return dicts


def _some_ids(ids, limit=10):
    """' (ids 1, 2, ...)' naming up to ``limit`` annotation ids, '' for none."""
    if not ids:
        return ""
    more = f", ... {len(ids) - limit} more" if len(ids) > limit else ""
    return f" (ids {', '.join(str(i) for i in ids[:limit])}{more})"


def filter_images_with_only_crowd_annotations(dataset_dicts):
    """Images with at least one non-crowd annotation (images without any are removed too)."""
    kept = [d for d in dataset_dicts
            if any(a.get("iscrowd", 0) == 0 for a in d["annotations"])]
    logger.info("Removed %d images with no usable (non-crowd) annotations; %d left",
                len(dataset_dicts) - len(kept), len(kept))
    return kept

