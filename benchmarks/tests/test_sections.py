"""The driver's section list, the reference section without PyTorch, the PyTorch worker's
imports and the scaling section's summary (no section is run: nothing is timed here)."""
import importlib.util
import os
import subprocess
import sys

import pytest

from benchmarks import cli, common, reference, scaling


def test_every_section_is_a_module_and_unknown_ones_are_refused(capsys):
    for name in cli.SECTIONS:
        assert importlib.util.find_spec("benchmarks." + name) is not None, name
    with pytest.raises(SystemExit):
        cli.main(["roi_align", "no_such_section"])
    assert "no_such_section" in capsys.readouterr().err


def test_reference_section_without_pytorch_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TFMRCNN_REFERENCE_PYTHON", str(tmp_path / "no-such-python"))
    assert reference.reference_python() is None
    rows = reference.run(type("Args", (), {"repeats": 1, "warmup": 0, "quick": True})())
    assert len(rows) == 1 and "setup_reference.sh" in rows[0]["note"]
    monkeypatch.setenv("TFMRCNN_REFERENCE_PYTHON", os.devnull)  # exists
    assert reference.reference_python() == os.devnull


@pytest.mark.parametrize("module", ["torch_reference", "small_images"])
def test_the_pytorch_workers_import_nothing_of_tensorflow_or_tfmrcnn(module):
    """benchmarks.torch_reference and benchmarks.small_images (its detectron2 worker) run in
    .venv-reference (no TensorFlow, no tfmrcnn)."""
    code = (f"import sys, benchmarks.{module}; print(' '.join(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('tensorflow', 'tfmrcnn', 'keras', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], env=common.worker_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_scaling_summary_labels_the_larger_batch_and_counts_its_images():
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
    # the demo's own batch keeps the plain label
    assert "demo GN weak scaling" in {r["case"] for r in scaling.summarize("GN", ranks)}
