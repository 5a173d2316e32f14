"""Ours next to the reference implementations measured in the same run, and their ratio.

The driver prints this table after its rows. Each line pairs a row of our sections with the row
of section `reference` (benchmarks/torch_reference.py) for the same problem:

  inference end to end     model infer "end-to-end", R50-FPN, each of our modes (fp32, fp32
                           direct conv, bf16), and X101-FPN fp32
                                                           vs detectron2's model(inputs)
  training step            model train "train step", R50-FPN batch 1, each mode
                                                           vs detectron2's step
  inference / training peak RSS of those worker processes  vs detectron2's processes
  ROIAlign 7x7 / 14x14     roi_align `OURS_ROI_ALIGN` (the exact ROIAlignV2), fwd and fwd+bwd
                           vs torchvision.ops.roi_align (the kernel detectron2's ROIAlign calls)

Model rows are paired only for the same architecture (the first word of our case name, after
"detectron2 " in theirs) and image size (the "HxW" of their case names). ratio =
reference / ours: above 1, ours takes less time (or memory). Only pairs measured in this run
appear: machines differ from day to day, so a figure from another run or another machine is not
compared with.

Section `architectures` (benchmarks/architectures.py) prints instead `architecture_table`: the
same pairing of end-to-end inference, one line per architecture of model.ARCHS.
"""
from __future__ import annotations

import re

OURS_ROI_ALIGN = "ours (sampling 0)"  # the label of section roi_align's exact ROIAlignV2 rows
# (group, stage, value column, unit, measure) of the model rows paired with detectron2's
MODEL_MEASURES = (
    ("infer", "end-to-end", "seconds", "s", "inference end to end"),
    ("train", "train step", "seconds", "s", "training step"),
    ("infer", "peak RSS MB", "value", "MB", "inference peak RSS"),
    ("train", "peak RSS MB", "value", "MB", "training peak RSS"),
)


def _image_size(case: str):
    """"R50-FPN 800x1333 fp32" -> "800x1333" (None without one)."""
    found = re.search(r"\d+x\d+", case)
    return found.group(0) if found else None


def _model_pairs(rows):
    """(measure, our row, reference row, value column, unit) of the model section."""
    for group, stage, column, unit, measure in MODEL_MEASURES:
        def matching(section, prefix):
            return [r for r in rows if r.get("section") == section and r.get("group") == group
                    and r.get("stage") == stage and r.get("case", "").startswith(prefix)]

        for ours in matching("model", ""):
            arch = ours["case"].split(" ", 1)[0]
            for ref in matching("reference", "detectron2 %s " % arch):
                if _image_size(ref["case"]) == _image_size(ours["case"]):
                    yield measure, ours, ref, column, unit
                    break


def _roi_align_pairs(rows):
    """(measure, our row, reference row, value column, unit) of the ROIAlign section."""
    for ref in rows:
        if ref.get("section") != "reference" or ref.get("group") != "roi_align":
            continue
        for ours in rows:
            if (ours.get("section") == "roi_align" and ours.get("case") == ref.get("case")
                    and ours.get("impl") == OURS_ROI_ALIGN):
                for column in ("fwd s", "fwd+bwd s"):
                    yield "ROIAlign %s %s" % (ref["case"], column[:-2]), ours, ref, column, "s"
                break


def comparison_table(rows):
    """Table rows: measure, ours, its value, the reference, its value, unit, reference / ours.
    Empty when the run measured no pair (e.g. without section `reference`)."""
    table = []
    pairs = list(_model_pairs(rows)) + list(_roi_align_pairs(rows))
    for measure, ours, ref, column, unit in pairs:
        mine, theirs = ours.get(column), ref.get(column)
        if mine is None or theirs is None:
            continue
        table.append({"measure": measure, "ours": _label(ours), "ours value": mine,
                      "reference": _label(ref), "reference value": theirs, "unit": unit,
                      "reference / ours": theirs / mine if mine else None})
    return table


def architecture_table(rows):
    """Section `architectures`' table: one line per architecture, ours s/image next to
    detectron2's (end to end, fp32, batch 1), their ratio and each side's detections.

    rows: the infer rows of both sides (section "model" for ours, "reference" for detectron2),
    each tagged with its "architecture" label (benchmarks/architectures.py), in the order run.
    Paired as comparison_table pairs them (same architecture and image size); an architecture
    without its pair keeps its line, the missing side empty and the failures in its note.
    """
    pairs = {id(ours): ref for measure, ours, ref, _, _ in _model_pairs(rows)
             if measure == "inference end to end"}
    table = []
    for arch in dict.fromkeys(r["architecture"] for r in rows):  # labels in the order run
        mine = [r for r in rows if r["architecture"] == arch]
        ours = _find(mine, "model", "end-to-end")
        ref = pairs.get(id(ours)) if ours else None
        seconds = (ours or {}).get("seconds"), (ref or {}).get("seconds")
        failures = ["%s %s: %s" % (r["section"], r["stage"], r.get("note", ""))
                    for r in mine if r.get("stage") == "FAILED"]
        table.append({
            "architecture": arch, "image": _image_size(ours["case"]) if ours else None,
            "ours s/image": seconds[0], "detectron2 s/image": seconds[1],
            "detectron2 / ours": seconds[1] / seconds[0] if None not in seconds else None,
            "detections ours / detectron2": "%s / %s" % (_detections(mine, ours),
                                                          _detections(mine, ref)),
            "note": "; ".join(failures) or None})
    return table


def _find(rows, section, stage):
    """The first row of `section` at `stage` (None if none)."""
    return next((r for r in rows if r.get("section") == section and r.get("stage") == stage),
                None)


def _detections(rows, end_to_end):
    """The detection count of the worker of row `end_to_end`, from the note of its paste row
    ("100 dets"); "-" without one."""
    paste = next((r for r in rows if end_to_end and r.get("stage") == "paste"
                  and r.get("case") == end_to_end["case"]), None)
    return paste["note"].split(" dets")[0] if paste and paste.get("note") else "-"


def _label(row):
    """What was measured: the implementation of a ROIAlign row, the case of a model row."""
    return row.get("impl") or row.get("case")
