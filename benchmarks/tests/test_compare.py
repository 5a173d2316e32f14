"""benchmarks/compare.py: ours next to the reference rows of the same run, and their ratio."""
import pytest

from benchmarks.compare import OURS_ROI_ALIGN, comparison_table


def _rows(reference=True):
    """Rows as the sections return them, the driver having added `section`."""
    rows = [
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 fp32",
         "stage": "end-to-end", "seconds": 1.25},
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 fp32",
         "stage": "rpn", "seconds": 0.1},
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 fp32 direct conv",
         "stage": "end-to-end", "seconds": 2.0},
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 fp32",
         "stage": "peak RSS MB", "seconds": None, "value": 2000.0},
        {"section": "model", "group": "train", "case": "R50-FPN 800x1333 fp32 batch 1",
         "stage": "train step", "seconds": 8.0},
        {"section": "model", "group": "train", "case": "demo 192x256 batch 1",
         "stage": "train step", "seconds": 0.3},
        {"section": "roi_align", "case": "7x7", "impl": OURS_ROI_ALIGN, "fwd s": 0.025,
         "fwd+bwd s": 0.05},
        {"section": "roi_align", "case": "7x7", "impl": "tensorpack c&r", "fwd s": 0.001,
         "fwd+bwd s": 0.001},
        {"section": "scaling", "case": "demo GN weak scaling", "processes": 2,
         "efficiency": 0.85},
    ]
    if reference:
        rows += [
            {"section": "reference", "group": "infer", "case": "detectron2 R50-FPN 800x1333 fp32",
             "stage": "end-to-end", "seconds": 3.0},
            {"section": "reference", "group": "infer", "case": "detectron2 R50-FPN 800x1333 fp32",
             "stage": "peak RSS MB", "seconds": None, "value": 1500.0},
            {"section": "reference", "group": "infer",
             "case": "torchvision maskrcnn_resnet50_fpn 800x1333 fp32", "stage": "end-to-end",
             "seconds": 2.5},
            {"section": "reference", "group": "train",
             "case": "detectron2 R50-FPN 800x1333 fp32 batch 1", "stage": "train step",
             "seconds": 6.0},
            {"section": "reference", "group": "roi_align", "case": "7x7",
             "impl": "torchvision roi_align", "fwd s": 0.5, "fwd+bwd s": 2.0},
        ]
    return rows


def _by_measure(table):
    return {(r["measure"], r["ours"]): r for r in table}


def test_each_of_our_modes_sits_next_to_detectron2_of_the_same_run_with_the_ratio():
    table = _by_measure(comparison_table(_rows()))
    fp32 = table[("inference end to end", "R50-FPN 800x1333 fp32")]
    assert fp32["reference"] == "detectron2 R50-FPN 800x1333 fp32"  # not torchvision's row
    assert (fp32["ours value"], fp32["reference value"], fp32["unit"]) == (1.25, 3.0, "s")
    assert fp32["reference / ours"] == pytest.approx(3.0 / 1.25)
    direct = table[("inference end to end", "R50-FPN 800x1333 fp32 direct conv")]
    assert direct["reference / ours"] == pytest.approx(1.5)
    train = table[("training step", "R50-FPN 800x1333 fp32 batch 1")]
    assert train["reference / ours"] == pytest.approx(0.75)  # slower than detectron2: below 1
    memory = table[("inference peak RSS", "R50-FPN 800x1333 fp32")]
    assert (memory["unit"], memory["reference / ours"]) == ("MB", pytest.approx(0.75))
    # the exact ROIAlign against torchvision's, not the approximate TF-only versions
    fwd = table[("ROIAlign 7x7 fwd", OURS_ROI_ALIGN)]
    assert fwd["reference"] == "torchvision roi_align"
    assert fwd["reference / ours"] == pytest.approx(20.0)
    assert table[("ROIAlign 7x7 fwd+bwd", OURS_ROI_ALIGN)]["reference / ours"] == pytest.approx(40)
    # stages, the demo and the scaling section have no reference row: not in the table
    assert len(table) == 6


def test_model_rows_pair_only_at_the_same_image_size():
    rows = [r for r in _rows() if r["section"] != "reference"] + [
        {"section": "reference", "group": "infer", "case": "detectron2 R50-FPN 320x512 fp32",
         "stage": "end-to-end", "seconds": 0.5}]
    assert comparison_table(rows) == []


def test_without_a_reference_there_is_nothing_to_compare():
    assert comparison_table(_rows(reference=False)) == []
    # a reference that failed (no value) pairs with nothing either
    rows = _rows()
    rows[-1] = dict(rows[-1], **{"fwd s": None, "fwd+bwd s": None})
    assert not [r for r in comparison_table(rows) if r["measure"].startswith("ROIAlign")]


def test_model_rows_pair_only_with_the_same_architecture():
    """X101-FPN pairs with detectron2's X101-FPN (listed first here), R50-FPN with its R50."""
    x101 = [{"section": "reference", "group": "infer", "case": "detectron2 X101-FPN 800x1333 fp32",
             "stage": "end-to-end", "seconds": 6.0},
            {"section": "model", "group": "infer", "case": "X101-FPN 800x1333 fp32",
             "stage": "end-to-end", "seconds": 4.0}]
    table = _by_measure(comparison_table(x101 + _rows()))
    assert table[("inference end to end", "X101-FPN 800x1333 fp32")]["reference / ours"] == 1.5
    assert table[("inference end to end", "R50-FPN 800x1333 fp32")]["reference value"] == 3.0
