"""scripts/bench: the target table the driver prints after its rows, the shared problems, and
the reference section without a PyTorch environment. (The driver itself is run end to end by
tests/ops/test_custom_ops_build.py; speeds are never asserted.)"""
import importlib.util
import os

import numpy as np
import pytest

from conftest import ROOT

BENCH = ROOT / "scripts" / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location("bench_" + name, BENCH / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets = _load("_targets")
common = _load("_common")


def _rows(reference=True):
    """Rows as the sections return them, the driver having added `section`."""
    rows = [
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 fp32",
         "stage": "end-to-end", "seconds": 1.3},
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 fp32 direct conv",
         "stage": "end-to-end", "seconds": 1.9},
        {"section": "model", "group": "infer", "case": "R50-FPN 800x1333 bf16",
         "stage": "end-to-end", "seconds": 0.7},
        {"section": "model", "group": "train", "case": "R50-FPN 800x1333 fp32 batch 1",
         "stage": "train step", "seconds": 7.0},
        {"section": "model", "group": "train", "case": "R50-FPN 800x1333 fp32", "stage":
         "peak RSS MB", "seconds": None, "value": 4110.4},
        {"section": "roi_align", "case": "7x7", "impl": "ours (sampling 0)", "fwd s": 0.03,
         "fwd+bwd s": 0.05},
        {"section": "roi_align", "case": "7x7", "impl": "tensorpack c&r", "fwd s": 0.001,
         "fwd+bwd s": 0.001},
        {"section": "scaling", "case": "demo GN weak scaling", "processes": 2,
         "efficiency": 0.85},
        {"section": "scaling", "case": "demo GN ceiling (independent processes)",
         "processes": 2, "efficiency": 0.93},
    ]
    if reference:
        rows += [
            {"section": "reference", "group": "infer", "case": "detectron2 R50-FPN 800x1333 fp32",
             "stage": "end-to-end", "seconds": 3.0},
            {"section": "reference", "group": "train",
             "case": "detectron2 R50-FPN 800x1333 fp32 batch 1", "stage": "train step",
             "seconds": 9.09 * 0.9},
            {"section": "reference", "group": "roi_align", "case": "7x7",
             "impl": "torchvision roi_align", "fwd s": 0.35, "fwd+bwd s": 1.9},
        ]
    return rows


def _by_target(table):
    return {(r["target"], r["ours"]): r for r in table}


def test_targets_are_scaled_to_the_reference_measured_in_the_same_run():
    table = _by_target(targets.target_table(_rows()))
    infer = table[("inference R50-FPN 800x1333, end to end", "fp32")]
    # the issue: 2.3 s where detectron2 took 3.79 s; this run's detectron2: 3.0 s
    assert infer["target s (this run)"] == pytest.approx(3.0 * 2.3 / 3.79)
    assert infer["speed-up vs reference"] == pytest.approx(3.0 / 1.3)
    assert infer["met"] == "yes"
    assert table[("inference R50-FPN 800x1333, end to end", "bf16")]["ours s"] == 0.7
    # the direct-conv row is not one of the target's rows
    assert all(r.get("ours s") != 1.9 for r in table.values())
    train = table[("training step R50-FPN 800x1333, 1 image", "fp32")]
    # 7.0 s is under the issue's absolute 7.3 s but over 90 % of it, the scaled target
    assert train["target s (this run)"] == pytest.approx(7.3 * 0.9)
    assert train["met"] == "NO"
    fwd = table[("ROIAlign 512 ROIs 7x7 fwd", "exact")]
    assert fwd["ours s"] == 0.03  # ours, not the tensorpack row
    assert fwd["target s (this run)"] == pytest.approx(0.35 * 0.06 / 0.614)
    assert fwd["met"] == "yes"
    assert table[("ROIAlign 512 ROIs 7x7 fwd+bwd", "exact")]["reference s (this run)"] == 1.9
    # no 14x14 rows measured: none in the table
    assert not any("14x14" in target for target, _ in table)


def test_without_a_reference_the_issue_figures_are_the_targets():
    table = _by_target(targets.target_table(_rows(reference=False)))
    train = table[("training step R50-FPN 800x1333, 1 image", "fp32")]
    assert train["target s (this run)"] == 7.3 and train["met"] == "yes"
    assert train["reference s (this run)"] is None and "issue's figure" in train["note"]
    assert table[("ROIAlign 512 ROIs 7x7 fwd", "exact")]["target s (this run)"] == 0.06


def test_weak_scaling_and_memory_rows():
    table = targets.target_table(_rows())
    scaling = [r for r in table if r["target"].startswith("2-process weak scaling")]
    assert len(scaling) == 1
    assert scaling[0]["met"] == "NO"  # 85 % < 90 %
    assert "85.0 %" in scaling[0]["note"] and "93.0 %" in scaling[0]["note"]
    memory = [r for r in table if r["target"].startswith("peak RSS")]
    assert [r["note"] for r in memory] == ["4110 MB"]
    rows = _rows()
    rows[7]["efficiency"] = 0.91
    assert [r for r in targets.target_table(rows)
            if r["target"].startswith("2-process")][0]["met"] == "yes"


def test_no_issue_rows_no_table():
    assert targets.target_table([{"section": "paste", "impl": "ours", "seconds": 0.1}]) == []


def test_shared_problems_are_deterministic_and_shaped():
    f1, b1, scale = common.roi_align_problem(**common.ROI_ALIGN_QUICK)
    f2, b2, _ = common.roi_align_problem(**common.ROI_ALIGN_QUICK)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(f1, f2)
    assert f1.shape == (1, 50, 84, 32) and b1.shape == (64, 4) and scale == 0.25
    sides = b1[:, 2:] - b1[:, :2]
    assert sides.min() >= 16 - 1e-3 and sides.max() <= 400 + 1e-3
    assert common.roi_align_upstream(64, (7, 7), 32).shape == (64, 7, 7, 32)
    batch = common.synthetic_batch(2, (100, 130), 3, 80, seed=1)
    assert batch["images"].shape == (2, 128, 160, 3)  # padded to 32
    assert np.all(batch["images"][:, 100:] == 0) and np.all(batch["images"][:, :, 130:] == 0)
    assert batch["gt_masks"].shape == (2, 3, 128, 160)
    # each mask is its box's rectangle
    x0, y0, x1, y1 = batch["gt_boxes"][0, 0].astype(int)
    assert batch["gt_masks"][0, 0].sum() == (x1 - x0) * (y1 - y0)


def test_time_calls_counts_repeats_and_waits():
    calls, waited = [], []
    wall, cpu = common.time_calls(lambda: calls.append(1) or len(calls), repeats=3, warmup=2,
                                  wait=waited.append)
    assert len(calls) == 5 and waited == [1, 2, 3, 4, 5]
    assert wall >= 0 and cpu >= 0


def test_reference_section_without_pytorch_says_how_to_get_it(monkeypatch, tmp_path):
    reference = _load("reference")
    monkeypatch.setenv("TFMRCNN_REFERENCE_PYTHON", str(tmp_path / "no-such-python"))
    assert reference.reference_python() is None
    rows = reference.run(type("Args", (), {"repeats": 1, "warmup": 0, "quick": True})())
    assert len(rows) == 1 and "setup_reference.sh" in rows[0]["note"]
    monkeypatch.setenv("TFMRCNN_REFERENCE_PYTHON", os.devnull)  # exists
    assert reference.reference_python() == os.devnull


def test_scaling_summary_labels_the_larger_batch_and_counts_its_images():
    scaling = _load("scaling")
    rounds = 3

    def runs(walls):
        return {phase: [(w, w) for w in walls[phase]] for phase in scaling.PHASES}

    rank0 = {"horovod": [0.5, 0.6, 0.5], "horovod pinned": [0.5] * rounds,
             "single": [0.4, 0.45, 0.4], "independent": [0.42] * rounds}
    rank1 = dict(rank0, horovod=[0.55, 0.5, 0.5], single=[])
    ranks = [{"runs": runs(rank0)}, {"runs": runs(rank1)}]
    rows = {r["case"]: r for r in scaling.summarize("GN", ranks, images=4)}
    horovod = rows["demo GN 4 images/process horovod"]
    # each round's step is the slower rank's: 0.55, 0.6, 0.5 -> median 0.55
    assert horovod["step_s"] == pytest.approx(0.55)
    assert horovod["images_per_s"] == pytest.approx(2 * 4 / 0.55)
    assert rows["demo GN 4 images/process single"]["images_per_s"] == pytest.approx(4 / 0.4)
    eff = rows["demo GN 4 images/process weak scaling"]["efficiency"]
    assert eff == pytest.approx(sorted([0.4 / 0.55, 0.45 / 0.6, 0.4 / 0.5])[1])
    # the demo's own batch keeps the plain label that the target table reads
    assert "demo GN weak scaling" in {r["case"] for r in scaling.summarize("GN", ranks)}


def test_peak_rss_is_the_process_own_not_its_parents():
    """A child of a process holding ~300 MB must not report the parent's memory as its peak
    (getrusage's ru_maxrss does, after fork + exec)."""
    import subprocess
    import sys
    ballast = np.ones(300 * 2 ** 20, np.uint8)  # resident in this process
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('c', %r); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.peak_rss_mb())" % str(BENCH / "_common.py"))
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout)
    assert ballast.sum() == ballast.size
    assert child < 250, child  # numpy + the interpreter, far below the parent's 300 MB ballast
    assert common.peak_rss_mb() > 300  # this process holds the ballast
