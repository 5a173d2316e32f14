"""--score-threshold: the same option and message in tfmrcnn-predict, -eval and -export."""
import pytest

from tfmrcnn.cli import eval as eval_cli
from tfmrcnn.cli import export as export_cli
from tfmrcnn.cli import predict as predict_cli
from tfmrcnn.cli.score_threshold import KEY, describe_score_threshold, with_score_threshold
from tfmrcnn.config import get_cfg


def _threshold(overrides):
    cfg = get_cfg()
    cfg.merge_from_list([item for o in overrides for item in o.split("=", 1)])
    return cfg


@pytest.mark.parametrize("module,default", [(predict_cli, 0.5), (eval_cli, None),
                                            (export_cli, None)])
def test_each_command_has_the_option(module, default):
    required = {predict_cli: ["--input", "x", "--output", "y"], export_cli: ["--output", "y"]}
    args = module.build_parser().parse_args(["--model", "m", *required.get(module, [])])
    assert args.score_threshold == default
    args = module.build_parser().parse_args(["--model", "m", *required.get(module, []),
                                             "--score-threshold", "0.3"])
    assert args.score_threshold == 0.3


def test_value_goes_first_so_an_explicit_override_wins():
    assert with_score_threshold(None, ["A=1"]) == ["A=1"]
    overrides = with_score_threshold(0.3, [f"{KEY}=0.7"])
    assert overrides == [f"{KEY}=0.3", f"{KEY}=0.7"]
    cfg = _threshold(overrides)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(0.7)
    assert describe_score_threshold(cfg, 0.3, [f"{KEY}=0.7"]) == \
        f"score threshold 0.7 (the {KEY} override)"


def test_message_names_the_source():
    cfg = _threshold(with_score_threshold(0.25, []))
    assert describe_score_threshold(cfg, 0.25, []) == "score threshold 0.25 (--score-threshold)"
    cfg = get_cfg()
    assert describe_score_threshold(cfg, None, []) == \
        f"score threshold {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST:g} (the model's config)"
