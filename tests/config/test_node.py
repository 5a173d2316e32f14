"""tfmrcnn.config.node: _BASE_ files, overrides, type checks, key errors, freezing, dumping."""

import os
import pathlib
import pickle

import pytest
import yaml

from tfmrcnn.config import (
    CfgNode, ConfigError, ConfigFrozenError, ConfigKeyError, ConfigTypeError, decode_value,
    get_cfg, load_config, load_yaml_with_base)

CONFIG_DIR = str(pathlib.Path(__file__).resolve().parents[2] / "configs")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_base_inheritance_is_recursive_and_relative(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    _write(tmp_path, "root.yaml", "SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\nSEED: 1\n")
    _write(sub, "mid.yaml", '_BASE_: "../root.yaml"\nSOLVER:\n  MAX_ITER: 20\n')
    leaf = _write(sub, "leaf.yaml", '_BASE_: "mid.yaml"\nSEED: 3\n')
    cfg = load_config(leaf)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SEED) == (0.5, 20, 3)
    # keys no file mentions keep their defaults
    assert cfg.SOLVER.MOMENTUM == 0.9


def test_circular_base_is_an_error(tmp_path):
    _write(tmp_path, "a.yaml", '_BASE_: "b.yaml"\n')
    b = _write(tmp_path, "b.yaml", '_BASE_: "a.yaml"\n')
    with pytest.raises(ConfigError, match="Circular"):
        load_config(b)


@pytest.mark.parametrize("base", ['["a.yaml", "b.yaml"]', "3", "{x: 1}"])
def test_base_that_is_not_one_path_is_an_error(tmp_path, base):
    """Issue 20: `_BASE_: [list]` gave a raw TypeError traceback."""
    path = _write(tmp_path, "c.yaml", f"_BASE_: {base}\nSEED: 1\n")
    with pytest.raises(ConfigError, match=f"_BASE_ in config file {path} must be one file path"):
        load_config(path)


def test_tensorpack_and_detectron2_override_styles():
    tp = load_config(overrides=["SOLVER.BASE_LR=0.01", "INPUT.MIN_SIZE_TRAIN=[600, 700]",
                                "MODEL.MASK_ON=false", "OUTPUT_DIR=/tmp/x=y"])
    d2 = load_config(overrides=["SOLVER.BASE_LR", "0.01", "INPUT.MIN_SIZE_TRAIN", "(600, 700)",
                                "MODEL.MASK_ON", "False", "OUTPUT_DIR", "/tmp/x=y"])
    for cfg in (tp, d2):
        assert cfg.SOLVER.BASE_LR == 0.01
        assert cfg.INPUT.MIN_SIZE_TRAIN == (600, 700)  # stored as the default's tuple type
        assert cfg.MODEL.MASK_ON is False
        assert cfg.OUTPUT_DIR == "/tmp/x=y"
    mixed = load_config(overrides=["SEED=5", "SOLVER.MAX_ITER", "7"])
    assert (mixed.SEED, mixed.SOLVER.MAX_ITER) == (5, 7)


def test_overrides_apply_after_file(tmp_path):
    path = _write(tmp_path, "c.yaml", "SOLVER:\n  BASE_LR: 0.5\n")
    assert load_config(path, ["SOLVER.BASE_LR=0.25"]).SOLVER.BASE_LR == 0.25


def test_int_accepted_for_float_and_string_literals_evaluated(tmp_path):
    path = _write(tmp_path, "c.yaml", 'SOLVER:\n  BASE_LR: 1\n  STEPS: "(5, 6)"\n')
    cfg = load_config(path)
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    assert cfg.SOLVER.STEPS == (5, 6)


@pytest.mark.parametrize("override", ["SOLVER.BASE_LR=abc", "SOLVER.MAX_ITER=1.5",
                                      "MODEL.MASK_ON=1", "SOLVER.STEPS=3",
                                      "TRAINER.LOG_PERIOD=[1]"])
def test_type_errors_name_the_key(override):
    with pytest.raises(ConfigTypeError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(overrides=[override])


def test_string_keys_take_override_text_verbatim_but_files_are_checked(tmp_path):
    assert load_config(overrides=["MODEL.WEIGHTS=[1]"]).MODEL.WEIGHTS == "[1]"
    path = _write(tmp_path, "c.yaml", "INPUT:\n  FORMAT: [1]\n")
    with pytest.raises(ConfigTypeError, match=r"INPUT\.FORMAT"):
        load_config(path)


def test_type_error_on_attribute_set():
    cfg = get_cfg()
    with pytest.raises(ConfigTypeError, match="SOLVER.MAX_ITER"):
        cfg.SOLVER.MAX_ITER = "many"


def test_misspelt_key_read_suggests_closest():
    cfg = load_config()
    with pytest.raises(ConfigKeyError) as err:
        cfg.MODEL.RPN.NMS_THRES
    assert "MODEL.RPN.NMS_THRES'" in str(err.value)
    assert "Did you mean 'MODEL.RPN.NMS_THRESH'?" in str(err.value)
    assert not hasattr(cfg.SOLVER, "BASE_LRR")


def test_misspelt_key_set_on_frozen_and_mutable():
    for cfg in (load_config(), get_cfg()):
        with pytest.raises(ConfigKeyError, match="Did you mean 'SOLVER.BASE_LR'"):
            cfg.SOLVER.BASE_LRR = 0.1


def test_misspelt_key_in_overrides_and_files(tmp_path):
    with pytest.raises(ConfigKeyError, match="'MODEL.RPNN.NMS_THRESH'.*'MODEL.RPN.NMS_THRESH'"):
        load_config(overrides=["MODEL.RPNN.NMS_THRESH=0.5"])
    path = _write(tmp_path, "c.yaml", "MODEL:\n  ROI_HEADS:\n    NUM_CLASSSES: 3\n")
    with pytest.raises(ConfigKeyError, match="'MODEL.ROI_HEADS.NUM_CLASSSES'.*NUM_CLASSES'"):
        load_config(path)


def test_frozen_tree_rejects_changes_and_clone_defrost():
    cfg = load_config()
    assert cfg.is_frozen()
    with pytest.raises(ConfigFrozenError, match="SOLVER.BASE_LR"):
        cfg.SOLVER.BASE_LR = 0.1
    copy = cfg.clone()
    assert copy.is_frozen()
    copy.defrost()
    copy.SOLVER.BASE_LR = 0.1
    assert cfg.SOLVER.BASE_LR == 0.02  # the clone is deep
    assert get_cfg().SOLVER.BASE_LR == 0.02  # get_cfg gives a fresh tree each time


def test_dump_round_trips(tmp_path):
    cfg = load_config(os.path.join(CONFIG_DIR, "shapes_demo_cpu.yaml"))
    text = cfg.dump()
    assert yaml.safe_load(text)["MODEL"]["RESNETS"]["DEPTH"] == 18
    path = _write(tmp_path, "dumped.yaml", text)
    assert load_config(path).to_dict() == cfg.to_dict()


def test_pickle_keeps_values_and_frozen_state():
    cfg = load_config(overrides=["SEED=9"])
    back = pickle.loads(pickle.dumps(cfg))
    assert back.to_dict() == cfg.to_dict() and back.is_frozen()
    with pytest.raises(ConfigKeyError, match="'SOLVER.MAX_ITERS'"):
        back.SOLVER.MAX_ITERS


def test_bad_files_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)
    broken = _write(tmp_path, "broken.yaml", "SOLVER: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="SEED"):
        load_config(overrides=["SEED"])


def test_dict_methods_cannot_bypass_the_checks():
    cfg = load_config()
    with pytest.raises(ConfigFrozenError):
        cfg.SOLVER.update(BASE_LR=0.1)
    with pytest.raises(ConfigError):
        cfg.SOLVER.pop("BASE_LR")
    with pytest.raises(ConfigError):
        del cfg.SOLVER["BASE_LR"]
    mutable = get_cfg()
    with pytest.raises(ConfigKeyError, match="SOLVER.BASE_LRR"):
        mutable.SOLVER.update(BASE_LRR=0.1)
    mutable.SOLVER.update({"BASE_LR": 1})
    assert mutable.SOLVER.BASE_LR == 1.0


def test_load_yaml_with_base_gives_the_merged_mapping(tmp_path):
    _write(tmp_path, "base.yaml", "A:\n  B: 1\n  C: [1, 2]\nD: x\n")
    leaf = _write(tmp_path, "leaf.yaml", '_BASE_: "base.yaml"\nA:\n  C: "(3, 4)"\n')
    assert load_yaml_with_base(leaf) == {"A": {"B": 1, "C": "(3, 4)"}, "D": "x"}


@pytest.mark.parametrize("text,value", [("(3, 4)", (3, 4)), ("0.5", 0.5), ("[1, (2,)]", [1, (2,)]),
                                        ("res4", "res4"), ("__import__('os')", "__import__('os')"),
                                        (7, 7)])
def test_decode_value_evaluates_literals_only(text, value):
    assert decode_value(text) == value and type(decode_value(text)) is type(value)


def test_a_tree_suggests_its_own_keys():
    """A node needs no defaults: its hints come from the keys of its own tree."""
    tree = CfgNode({"GROUP": {"LEAF_ONE": 1}, "OTHER": 2}, new_allowed=True).set_new_allowed(False)
    with pytest.raises(ConfigKeyError, match="Did you mean 'GROUP.LEAF_ONE'"):
        tree.GROUP.LEAF_ONF
    with pytest.raises(ConfigKeyError, match="'GRUOP.LEAF_ONE'.*Did you mean 'GROUP.LEAF_ONE'"):
        tree.merge_from_list(["GRUOP.LEAF_ONE=3"])


def test_nested_sequences_take_the_default_types_at_every_level(tmp_path):
    tree = CfgNode({"PAIRS": ((1.0, 2.0), (3.0, 4.0)), "SIZES": [[8], [16]]},
                   new_allowed=True).set_new_allowed(False)
    tree.merge_from_file(_write(tmp_path, "c.yaml", "PAIRS: [[5.0, 6.0]]\n"))
    assert tree.PAIRS == ((5.0, 6.0),) and type(tree.PAIRS[0]) is tuple
    tree.SIZES = ((4,), [2])
    assert tree.SIZES == [[4], [2]] and all(type(s) is list for s in tree.SIZES)
