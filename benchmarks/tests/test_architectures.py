"""Section `architectures`: both sides' ARCHS name the same models, and compare.architecture_table
pairs fabricated worker rows per architecture (nothing is run or timed)."""
import os

import pytest

from benchmarks import model, torch_reference
from benchmarks.compare import architecture_table


def test_both_sides_build_the_same_architectures_from_files_of_the_same_name():
    assert list(model.ARCHS) == list(torch_reference.ARCHS)
    for arch, (config_file, label) in model.ARCHS.items():
        zoo_yaml, d2_label = torch_reference.ARCHS[arch]
        assert label == d2_label and " " not in label, arch  # one word: compare pairs by it
        assert os.path.isfile(config_file), config_file
        assert os.path.basename(config_file) == os.path.basename(zoo_yaml), arch
    labels = [label for _, label in model.ARCHS.values()]
    assert len(set(labels)) == len(labels)


def _worker_rows(section, arch, seconds, dets="100", hw="800x1333"):
    """An infer worker's rows as the section tags them (stages, paste, end-to-end, memory)."""
    case = ("detectron2 %s %s fp32" if section == "reference" else "%s %s fp32") % (arch, hw)
    row = dict(section=section, architecture=arch, group="infer", case=case)
    return [dict(row, stage="rpn", seconds=seconds / 10),
            dict(row, stage="paste", seconds=0.1, note="%s dets" % dets),
            dict(row, stage="end-to-end", seconds=seconds, note="first trace+run 30 s"),
            dict(row, stage="peak RSS MB", seconds=None, value=2000.0)]


def test_each_architecture_is_one_line_with_both_sides_and_their_ratio():
    rows = (_worker_rows("model", "R50-FPN", 1.25) + _worker_rows("reference", "R50-FPN", 3.0)
            + _worker_rows("model", "R50-C4", 8.0, dets="97")
            + _worker_rows("reference", "R50-C4", 6.0, dets="100"))
    # detectron2's R50 worker also times torchvision's model: never paired
    rows.append(dict(section="reference", architecture="R50-FPN", group="infer",
                     case="torchvision maskrcnn_resnet50_fpn 800x1333 fp32", stage="end-to-end",
                     seconds=0.5))
    table = architecture_table(rows)
    assert [line["architecture"] for line in table] == ["R50-FPN", "R50-C4"]  # the order run
    r50, c4 = table
    assert (r50["image"], r50["ours s/image"], r50["detectron2 s/image"]) == ("800x1333", 1.25, 3.0)
    assert r50["detectron2 / ours"] == pytest.approx(2.4)
    assert c4["detectron2 / ours"] == pytest.approx(0.75)  # slower than detectron2: below 1
    assert c4["detections ours / detectron2"] == "97 / 100"
    assert r50["note"] is None and c4["note"] is None


def test_a_failed_side_keeps_its_line_with_the_failure():
    failed = {"section": "reference", "architecture": "R50-DC5", "group": "infer",
              "stage": "FAILED", "note": "KeyError: 'DC5'"}
    rows = _worker_rows("model", "R50-DC5", 2.0) + [failed]
    rows += _worker_rows("model", "R101-FPN", 2.0)
    rows += _worker_rows("reference", "R101-FPN", 0.5, hw="320x512")  # another size: no pair
    dc5, r101 = architecture_table(rows)
    assert (dc5["ours s/image"], dc5["detectron2 s/image"], dc5["detectron2 / ours"]) == (
        2.0, None, None)
    assert dc5["note"] == "reference FAILED: KeyError: 'DC5'"
    assert dc5["detections ours / detectron2"] == "100 / -"
    assert r101["detectron2 s/image"] is None
    assert r101["detections ours / detectron2"] == "100 / -"
    ours_failed = [dict(failed, section="model")] + _worker_rows("reference", "R50-DC5", 3.0)
    line, = architecture_table(ours_failed)
    assert (line["image"], line["ours s/image"], line["detectron2 / ours"]) == (None, None, None)
    assert line["note"].startswith("model FAILED")
