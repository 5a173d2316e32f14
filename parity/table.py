"""The parity table of NOTES.md from the harness's results: one row per detectron2 config.

    .venv/bin/python -m parity.table [output/parity/*/parity.json ...]

Reads every ``parity.json`` given (default: all under output/parity/) and prints a markdown
table: config, images, paths compared, detections (detectron2 / ours, per path the smallest
count), matched (the worst path), mask IoU of the matched pairs (mean / min, worst path), and
box / mask AP of detectron2 and the largest difference of any path. A config run more than once
(different work folders) gives the row of the newest file.
"""
import glob
import json
import os
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _short(config: str) -> str:
    """The config's zoo name without .yaml (folder kept: LVIS and COCO share file names)."""
    return os.path.splitext(config)[0]


def row(report: Dict) -> str:
    """One markdown row of a parity report (`parity.run_parity`'s parity.json)."""
    paths = report["paths"]
    d2 = report["d2"]
    mask_on = "segm" in d2["ap"]
    worst = min(paths.values(), key=lambda p: p["matched"])
    ious = [p["mask_iou"] for p in paths.values() if p.get("mask_iou") is not None]
    mins = [p["mask_iou_min"] for p in paths.values() if p.get("mask_iou_min") is not None]
    ap_diff = {task: max(abs(p["ap"][task] - d2["ap"][task]) for p in paths.values())
               for task in d2["ap"]}
    iou = (f"{min(ious):.4f}" + (f" / {min(mins):.3f}" if mins else "")) if mask_on and ious \
        else "-"
    ap = " / ".join(f"{d2['ap'][t]:.2f}" for t in ("bbox", "segm") if t in d2["ap"])
    diff = " / ".join(f"{ap_diff[t]:.2f}" for t in ("bbox", "segm") if t in ap_diff)
    dets = min(p["our_detections"] for p in paths.values())
    return (f"| {_short(report['config'])} | {len(report['images'])} | {', '.join(paths)} | "
            f"{d2['detections']} / {dets} | {100 * worst['matched']:.2f} % | {iou} | "
            f"{ap} | {diff} |")


HEADER = ("| detectron2 config | images | paths | detections d2 / ours | matched | "
          "mask IoU mean / min | box / mask AP d2 | largest AP difference |\n"
          "|---|---|---|---|---|---|---|---|")


def table(files: List[str]) -> str:
    newest = {}
    for f in sorted(files, key=os.path.getmtime):
        with open(f) as fh:
            report = json.load(fh)
        newest[report["config"]] = report
    return "\n".join([HEADER] + [row(newest[c]) for c in sorted(newest, key=_short)])


def main(argv=None) -> int:
    files = (argv if argv is not None else sys.argv[1:]) or glob.glob(
        os.path.join(ROOT, "output", "parity", "*", "parity.json"))
    if not files:
        print("no parity.json found; run `python -m parity.run_parity --config ...` first")
        return 1
    print(table(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
