"""Benchmark section: end-to-end fp32 inference of every architecture, ours next to detectron2's,
measured in the same run (``python -m benchmarks architectures``; run only when named).

For each entry of benchmarks/model.py's ARCHS (R50-FPN, R101-FPN, X101-FPN, Cascade R50-FPN,
R50-C4, R50-DC5, Faster R50-FPN), built from our configs/ file, and the entry of the same key in
benchmarks/torch_reference.py's ARCHS, built from detectron2's model-zoo yaml of the same name:
the infer worker of each side (the model and reference sections' workers, the same options:
2 intra-op and 1 inter-op threads, random weights with calibrated FrozenBN, SCORE_THRESH_TEST 0,
one image of benchmarks/common.py's problem, 800x1333 or --quick 320x512, our first, tracing
call outside the timing). Ours and detectron2's worker alternate, architecture by architecture,
so that both sides of a line see the same load on a shared machine.

The section returns compare.architecture_table's lines (architecture, image, ours s/image,
detectron2 s/image, detectron2 / ours, the detections of each side), not the workers' stage
rows. Without the PyTorch environment the detectron2 side is empty and the note says why.
"""
from benchmarks import model, reference
from benchmarks.compare import architecture_table


def run(args):
    python = reference.reference_python()
    rows = []
    for arch, (_, label) in model.ARCHS.items():
        rows += [dict(r, section="model", architecture=label) for r in model.run_infer(arch, args)]
        if python is None:
            rows.append({"section": "reference", "architecture": label, "stage": "FAILED",
                         "note": reference.NOT_MEASURED})
            continue
        rows += [dict(r, section="reference", architecture=label)
                 for r in reference.run_group(python, "infer", args, extra=("--arch", arch))]
    return architecture_table(rows)
