"""The performance issue's target table, filled from one driver run's rows.

The issue wrote its targets as seconds on its machine next to detectron2's seconds there
(e.g. inference 2.3 s where detectron2 took 3.79 s). Machines differ from day to day, so each
target is also given as the same fraction of the reference measured in this run (section
`reference`): "target, this run" = this run's reference x issue target / issue reference. A row
is met when ours is at or below that (or, without a reference in the run, the issue's own
figure). Weak scaling has an absolute target; peak memory is reported.
"""
from __future__ import annotations

# row -> (reference seconds on the issue's machine, target seconds there)
ISSUE = {
    "inference R50-FPN 800x1333, end to end": (3.79, 2.3),
    "training step R50-FPN 800x1333, 1 image": (9.09, 7.3),
    "ROIAlign 512 ROIs 7x7 fwd": (0.614, 0.06),
    "ROIAlign 512 ROIs 7x7 fwd+bwd": (2.067, 0.2),
    "ROIAlign 512 ROIs 14x14 fwd": (0.803, 0.08),
    "ROIAlign 512 ROIs 14x14 fwd+bwd": (2.622, 0.26),
}
WEAK_SCALING_TARGET = 0.90
OURS_ROI_ALIGN = "ours (sampling 0)"  # roi_align.OURS (that module imports TensorFlow)


def _find(rows, **match):
    """The first row whose values start with the given strings (or equal non-strings)."""
    for row in rows:
        if all(isinstance(row.get(k), str) and row[k].startswith(v) if isinstance(v, str)
               else row.get(k) == v for k, v in match.items()):
            return row
    return None


def _value(row, key="seconds"):
    return None if row is None else row.get(key)


def _ours(rows, group, stage, suffix):
    """Seconds of our R50-FPN row of `group`/`stage` whose case ends with `suffix` (the case
    names end with the mode: "... fp32", "... fp32 direct conv", "... bf16")."""
    for r in rows:
        if (r.get("section") == "model" and r.get("group") == group and r.get("stage") == stage
                and r.get("case", "").startswith("R50-FPN") and r["case"].endswith(suffix)):
            return r.get("seconds")
    return None


def _measurements(rows):
    """row name -> (reference seconds or None, [(our label, seconds or None)])."""
    out = {}
    ref = _find(rows, section="reference", group="infer", case="detectron2", stage="end-to-end")
    out["inference R50-FPN 800x1333, end to end"] = (_value(ref), [
        ("fp32", _ours(rows, "infer", "end-to-end", " fp32")),
        ("bf16", _ours(rows, "infer", "end-to-end", " bf16"))])
    ref = _find(rows, section="reference", group="train", case="detectron2", stage="train step")
    out["training step R50-FPN 800x1333, 1 image"] = (_value(ref), [
        ("fp32", _ours(rows, "train", "train step", " fp32 batch 1")),
        ("AMP bf16", _ours(rows, "train", "train step", " AMP bf16 batch 1"))])
    for size in ("7x7", "14x14"):
        ref = _find(rows, section="reference", group="roi_align", case=size)
        mine = _find(rows, section="roi_align", case=size, impl=OURS_ROI_ALIGN)
        for key in ("fwd", "fwd+bwd"):
            out["ROIAlign 512 ROIs %s %s" % (size, key)] = (
                _value(ref, key + " s"), [("exact", _value(mine, key + " s"))])
    return out


def target_table(rows):
    """Rows of the target table (empty if the run measured none of the issue's rows)."""
    table = []
    for name, (ref, ours) in _measurements(rows).items():
        issue_ref, issue_target = ISSUE[name]
        target = ref * issue_target / issue_ref if ref is not None else issue_target
        for label, seconds in ours:
            if seconds is None:
                continue
            table.append({
                "target": name, "ours": label, "ours s": seconds,
                "reference s (this run)": ref,
                "target s (this run)": target,
                "issue: reference / target s": "%g / %g" % (issue_ref, issue_target),
                "speed-up vs reference": ref / seconds if ref else None,
                "met": "yes" if seconds <= target else "NO",
                "note": "" if ref is not None else "no reference in this run: issue's figure",
            })
    scaling = _find(rows, section="scaling", case="demo GN weak scaling")
    if scaling is not None and scaling.get("efficiency") is not None:
        eff = scaling["efficiency"]
        ceiling = _value(_find(rows, section="scaling", case="demo GN ceiling"), "efficiency")
        table.append({"target": "2-process weak scaling (demo, GN)", "ours": "Horovod",
                      "ours s": None, "target s (this run)": None,
                      "met": "yes" if eff >= WEAK_SCALING_TARGET else "NO",
                      "note": "efficiency %.1f %% (target %.0f %%; independent processes, the "
                              "machine's ceiling: %s)" % (
                                  100 * eff, 100 * WEAK_SCALING_TARGET,
                                  "%.1f %%" % (100 * ceiling) if ceiling else "n/a")})
    for row in rows:
        if row.get("stage") == "peak RSS MB" and row.get("value") is not None:
            table.append({"target": "peak RSS MB (reported)",
                          "ours": "%s %s: %s" % (row.get("section"), row.get("group"),
                                                 row.get("case")),
                          "note": "%.0f MB" % row["value"]})
    return table
