"""Downloads into the cache: complete or absent, resumed after a cut, checked when a digest is
known.

Every test talks to a server on 127.0.0.1 (tests/helpers/local_http_server.py), never the network.
"""
import hashlib
import os

import numpy as np
import pytest

from local_http_server import no_proxy, serve  # noqa: F401 (fixture)
from tfmrcnn.utils.download import Checksum, DownloadError, cache_root, download

# 2.5 MiB: several 1 MiB chunks, so a cut or an interruption falls mid-file
DATA = np.random.default_rng(0).integers(0, 256, 5 * 2 ** 19, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(DATA).hexdigest()
FAST = dict(timeout=5.0, log=lambda line: None)


pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def server():
    with serve({"zoo/model.pkl": DATA}) as s:
        yield s


def _fetch(server, tmp_path, **kwargs):
    dest = str(tmp_path / "cache" / "model.pkl")
    return download(server.base_url + "zoo/model.pkl", dest, **{**FAST, **kwargs}), dest


def test_whole_file_then_reused_from_the_cache(server, tmp_path):
    path, dest = _fetch(server, tmp_path, checksum=Checksum("md5", MD5[:6]))
    assert path == dest and open(dest, "rb").read() == DATA
    assert not os.path.exists(dest + ".part")
    _fetch(server, tmp_path, checksum=Checksum("md5", MD5[:6]))
    assert server.gets_of("zoo/model.pkl") == [None]  # one GET, no Range, not repeated


def test_truncated_transfer_is_resumed_with_a_range_request(server, tmp_path):
    server.truncate_first = 1  # Content-Length of the whole file, 40 % of the bytes
    _, dest = _fetch(server, tmp_path)
    assert open(dest, "rb").read() == DATA
    cut = int(len(DATA) * server.cut_fraction)
    assert server.gets_of("zoo/model.pkl") == [None, f"bytes={cut}-"]
    assert not os.path.exists(dest + ".part")


def test_server_without_ranges_sends_the_file_again(server, tmp_path):
    server.truncate_first, server.ranges = 1, False
    _, dest = _fetch(server, tmp_path)
    assert open(dest, "rb").read() == DATA
    assert len(server.gets_of("zoo/model.pkl")) == 2


def test_stalled_transfer_times_out_and_resumes(server, tmp_path):
    server.stall_first, server.stall_seconds = 1, 3.0
    _, dest = _fetch(server, tmp_path, timeout=0.5)
    assert open(dest, "rb").read() == DATA
    assert server.gets_of("zoo/model.pkl")[1].startswith("bytes=")


def test_interrupted_process_leaves_only_the_part_file_then_resumes(server, tmp_path):
    def interrupt_after_first_chunk(done, total):
        raise KeyboardInterrupt  # what Ctrl-C or a kill does mid-transfer

    with pytest.raises(KeyboardInterrupt):
        _fetch(server, tmp_path, progress=interrupt_after_first_chunk)
    dest = str(tmp_path / "cache" / "model.pkl")
    assert not os.path.exists(dest)
    kept = os.path.getsize(dest + ".part")
    assert 0 < kept < len(DATA) and open(dest + ".part", "rb").read() == DATA[:kept]
    _fetch(server, tmp_path, checksum=Checksum("md5", MD5[:6]))
    assert open(dest, "rb").read() == DATA
    assert server.gets_of("zoo/model.pkl")[-1] == f"bytes={kept}-"


def test_always_truncated_is_an_error_and_never_a_file(server, tmp_path):
    server.truncate_first, server.ranges = 10, False
    with pytest.raises(DownloadError, match="incomplete after 3 attempts"):
        _fetch(server, tmp_path, attempts=3)
    dest = str(tmp_path / "cache" / "model.pkl")
    assert not os.path.exists(dest)
    assert len(server.gets_of("zoo/model.pkl")) == 3


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    wrong = "0" * 6 if not MD5.startswith("000000") else "1" * 6
    with pytest.raises(DownloadError, match=f"md5 {MD5} does not start with the expected {wrong}"):
        _fetch(server, tmp_path, checksum=Checksum("md5", wrong))
    assert os.listdir(tmp_path / "cache") == ["model.pkl.lock"]


def test_resumed_part_of_another_file_is_fetched_again_from_the_start(server, tmp_path):
    dest = tmp_path / "cache" / "model.pkl"
    dest.parent.mkdir()
    (tmp_path / "cache" / "model.pkl.part").write_bytes(b"x" * 1000)  # an older file's start
    _fetch(server, tmp_path, checksum=Checksum("md5", MD5[:6]))
    assert dest.read_bytes() == DATA
    assert server.gets_of("zoo/model.pkl") == ["bytes=1000-", None]


def test_cached_file_with_the_wrong_digest_is_replaced(server, tmp_path):
    dest = tmp_path / "cache" / "model.pkl"
    dest.parent.mkdir()
    dest.write_bytes(b"damaged")
    _fetch(server, tmp_path, checksum=Checksum("md5", MD5[:6]))
    assert dest.read_bytes() == DATA


def test_missing_file_names_the_url(server, tmp_path):
    url = server.base_url + "zoo/absent.pkl"
    with pytest.raises(DownloadError, match=f"{url}: HTTP 404"):
        download(url, str(tmp_path / "absent.pkl"), **FAST)
    assert not os.path.exists(tmp_path / "absent.pkl")


def test_unreachable_host_names_the_url(tmp_path):
    with serve({}) as s:
        url = s.base_url + "x.pkl"  # the port is free again once the server is closed
    with pytest.raises(DownloadError, match="cannot connect"):
        download(url, str(tmp_path / "x.pkl"), **FAST)


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFMRCNN_CACHE", str(tmp_path / "c"))
    assert cache_root() == str(tmp_path / "c")
    monkeypatch.delenv("TFMRCNN_CACHE")
    assert cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "tfmrcnn")


def test_checksum_must_be_hex():
    with pytest.raises(ValueError, match="hex"):
        Checksum("md5", "F10217")
