"""detectron2:// names: mapped as detectron2 maps them, downloaded into $TFMRCNN_CACHE (from a
127.0.0.1 server standing in for dl.fbaipublicfiles.com), converted, loaded as MODEL.WEIGHTS."""
import hashlib
import io
import os
import pickle

import numpy as np
import pytest

from d2_fakes import fake_d2_state, tiny_cfg
from local_http_server import no_proxy, serve  # noqa: F401 (fixture)
from tfmrcnn.checkpoint.weights_io import read_weights
from tfmrcnn.cli.convert import main as convert_main
from tfmrcnn.converter.convert import convert_checkpoint
from tfmrcnn.converter.zoo import (D2_DEFAULT_URL, ZooError, cache_path_of, known_checksum,
                                   resolve_weights, url_of)
from tfmrcnn.utils.download import Checksum

ZOO_DIR = "COCO-InstanceSegmentation/mask_rcnn_tiny_FPN_3x/137849600"
QUIET = dict(log=lambda line: None)


def _pkl_bytes(state):
    buf = io.BytesIO()
    pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, buf, protocol=2)
    return buf.getvalue()


@pytest.fixture
def zoo(tmp_path, monkeypatch, no_proxy):  # noqa: F811
    """A model-zoo stand-in: a tiny Mask R-CNN named with its md5 prefix, as detectron2 names
    them, and a backbone-only file at ImageNetPretrained/MSRA/R-50.pkl; cache in tmp_path."""
    model = _pkl_bytes(fake_d2_state(tiny_cfg(), seed=1))
    backbone = _pkl_bytes(fake_d2_state(tiny_cfg(), seed=2, backbone_only=True))
    model_name = f"{ZOO_DIR}/model_final_{hashlib.md5(model).hexdigest()[:6]}.pkl"
    files = {f"detectron2/{model_name}": model,
             "detectron2/ImageNetPretrained/MSRA/R-50.pkl": backbone}
    monkeypatch.setenv("TFMRCNN_CACHE", str(tmp_path / "cache"))
    with serve(files) as server:
        monkeypatch.setenv("TFMRCNN_DETECTRON2_URL", server.base_url + "detectron2/")
        server.model_name = model_name
        yield server


def _local_copy(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _converted(tmp_path, data, name):
    """Arrays of the file converted straight from disk (the reference for the zoo paths)."""
    result = convert_checkpoint(_local_copy(tmp_path, data, name), str(tmp_path / f"ref-{name}"),
                                **QUIET)
    return read_weights(result.weights_path)[0]


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_names_map_as_in_detectron2(monkeypatch, tmp_path):
    # detectron2 0.5, utils/file_io.py: Detectron2Handler prefixes the rest of the name
    monkeypatch.delenv("TFMRCNN_DETECTRON2_URL", raising=False)
    monkeypatch.setenv("TFMRCNN_CACHE", str(tmp_path))
    name = "ImageNetPretrained/MSRA/R-50.pkl"
    assert D2_DEFAULT_URL == "https://dl.fbaipublicfiles.com/detectron2/"
    assert url_of(f"detectron2://{name}") == D2_DEFAULT_URL + name
    assert cache_path_of(f"detectron2://{name}") == str(tmp_path / "detectron2" / name)
    monkeypatch.setenv("TFMRCNN_DETECTRON2_URL", "http://mirror.example/d2")
    assert url_of(f"detectron2://{name}") == "http://mirror.example/d2/" + name
    assert cache_path_of("https://host.example:8080/a/b/m.pkl") == str(
        tmp_path / "downloads" / "host.example_8080" / "a" / "b" / "m.pkl")
    for bad in ("detectron2://", "detectron2://../etc/passwd", "detectron2:///abs.pkl",
                "detectron2://a//b.pkl"):
        with pytest.raises(ZooError, match="expected detectron2://"):
            url_of(bad)


def test_md5_prefix_of_model_zoo_file_names():
    # MODEL_ZOO.md: "any model on this page contains its md5 prefix in its file name"
    name = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/" \
           "model_final_f10217.pkl"
    assert known_checksum(name) == Checksum("md5", "f10217")
    assert known_checksum("detectron2://Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv/"
                          "18131413/model_0039999_e76410.pkl") == Checksum("md5", "e76410")
    assert known_checksum("detectron2://ImageNetPretrained/MSRA/R-50.pkl") is None
    assert known_checksum("https://example.org/x/model_final_f10217.pkl") is None


def test_cli_downloads_a_zoo_name_then_converts(zoo, tmp_path, monkeypatch, capsys):
    zoo.truncate_first = 1  # the first transfer is cut: the CLI still ends with the whole file
    name = f"detectron2://{zoo.model_name}"
    monkeypatch.chdir(tmp_path)
    assert convert_main([name]) == 0
    stem = os.path.splitext(os.path.basename(zoo.model_name))[0]
    arrays, _ = read_weights(str(tmp_path / stem / "model_final.npz"))  # default OUTDIR ./STEM
    model = zoo.files[f"detectron2/{zoo.model_name}"]
    _assert_same_arrays(arrays, _converted(tmp_path, model, "m.pkl"))
    assert open(cache_path_of(name), "rb").read() == model
    gets = zoo.gets_of(f"detectron2/{zoo.model_name}")
    assert len(gets) == 2 and gets[1].startswith("bytes=")
    assert "resuming" in capsys.readouterr().err
    # a second conversion reads the cache
    assert convert_main([name, "--output", str(tmp_path / "again")]) == 0
    assert len(zoo.gets_of(f"detectron2/{zoo.model_name}")) == 2


def test_cli_refuses_a_file_whose_md5_disagrees_with_its_name(zoo, tmp_path, capsys):
    data = zoo.files[f"detectron2/{zoo.model_name}"]
    tag = "000000" if not zoo.model_name.endswith("000000.pkl") else "111111"
    wrong = f"{ZOO_DIR}/model_final_{tag}.pkl"  # the same bytes under a name they do not match
    zoo.files[f"detectron2/{wrong}"] = data
    assert convert_main([f"detectron2://{wrong}", "--output", str(tmp_path / "out")]) == 1
    assert "md5" in capsys.readouterr().err
    assert not os.path.exists(cache_path_of(f"detectron2://{wrong}"))
    assert not os.path.exists(tmp_path / "out")


def test_cli_names_a_missing_zoo_file(zoo, tmp_path, capsys):
    assert convert_main(["detectron2://COCO-Detection/none/1/model_final_abcdef.pkl",
                         "--output", str(tmp_path / "out")]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_model_weights_name_is_downloaded_converted_once_and_reused(zoo, tmp_path):
    name = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    npz = resolve_weights(name, **QUIET)
    assert npz.startswith(str(tmp_path / "cache" / "converted")) and npz.endswith(".npz")
    backbone = zoo.files["detectron2/ImageNetPretrained/MSRA/R-50.pkl"]
    arrays, meta = read_weights(npz)
    assert meta["backbone_only"] is True
    _assert_same_arrays(arrays, _converted(tmp_path, backbone, "R-50.pkl"))
    mtime = os.path.getmtime(npz)
    assert resolve_weights(name, **QUIET) == npz and os.path.getmtime(npz) == mtime
    assert len(zoo.gets_of("detectron2/ImageNetPretrained/MSRA/R-50.pkl")) == 1


def test_model_weights_local_pkl_npz_and_empty(zoo, tmp_path):
    data = zoo.files[f"detectron2/{zoo.model_name}"]
    local = _local_copy(tmp_path, data, "mine.pkl")
    npz = resolve_weights(local, **QUIET)
    _assert_same_arrays(read_weights(npz)[0], _converted(tmp_path, data, "m.pkl"))
    assert resolve_weights(npz, **QUIET) == npz
    assert resolve_weights("", **QUIET) == ""
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        resolve_weights(str(tmp_path / "absent.npz"), **QUIET)
    other = _local_copy(tmp_path, b"{}", "weights.h5")
    with pytest.raises(ZooError, match="weights.h5"):
        resolve_weights(other, **QUIET)


def test_checkpointer_loads_a_model_zoo_name(zoo, tmp_path):
    from tfmrcnn.checkpoint.checkpointer import Checkpointer
    from tfmrcnn.modeling.layers import named_variables
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    model = GeneralizedRCNN(tiny_cfg().freeze())
    Checkpointer(str(tmp_path / "run"), model, {}).load_initial_weights(
        f"detectron2://{zoo.model_name}")
    reference = _converted(tmp_path, zoo.files[f"detectron2/{zoo.model_name}"], "m.pkl")
    variables = named_variables(model)
    assert sorted(variables) == sorted(reference)
    for key, var in variables.items():
        np.testing.assert_array_equal(var.numpy(), reference[key])
