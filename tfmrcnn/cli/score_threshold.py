"""``--score-threshold``, the same option in tfmrcnn-predict, tfmrcnn-eval and tfmrcnn-export.

It sets MODEL.ROI_HEADS.SCORE_THRESH_TEST (detections scoring below it are dropped before NMS,
as in detectron2); an explicit ``MODEL.ROI_HEADS.SCORE_THRESH_TEST=...`` override among the
KEY=VALUE arguments wins over it. Each command says which threshold it uses and where it comes
from. Defaults: predict 0.5 (detectron2's demo, pictures for people); eval and export the model's
config (0.05 in detectron2's configs: COCO AP counts low-scoring detections too).
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

__all__ = ["KEY", "add_score_threshold", "with_score_threshold", "describe_score_threshold"]

KEY = "MODEL.ROI_HEADS.SCORE_THRESH_TEST"


def add_score_threshold(parser: argparse.ArgumentParser, default: Optional[float]) -> None:
    """Add --score-threshold; default None keeps the model's config."""
    origin = f"default {default:g}" if default is not None else "default: the model's config"
    parser.add_argument("--score-threshold", type=float, default=default, metavar="S",
                        help=f"minimum detection score ({KEY}; {origin}; a KEY=VALUE override "
                             "of that key wins)")


def _explicit(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].strip() == KEY for o in overrides)


def with_score_threshold(value: Optional[float], overrides: Sequence[str]) -> List[str]:
    """The config overrides with --score-threshold's value first (so that an explicit override
    of the key, later in the list, wins)."""
    return list(overrides) if value is None else [f"{KEY}={value}", *overrides]


def describe_score_threshold(cfg, value: Optional[float], overrides: Sequence[str]) -> str:
    """'score threshold 0.5 (--score-threshold)': the threshold in use and where it comes from."""
    if _explicit(overrides):
        origin = f"the {KEY} override"
    elif value is not None:
        origin = "--score-threshold"
    else:
        origin = "the model's config"
    return f"score threshold {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST:g} ({origin})"
