"""tfmrcnn.data.image_io: the one strict decoder and the header size check."""
import struct

import cv2
import numpy as np
import pytest

from tfmrcnn.data.image_io import ImageReadError, image_size, read_image


def _noise(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _encoded(ext, image):
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _with_exif_orientation(jpeg, orientation, byte_order=b"MM"):
    """The JPEG with an APP1 Exif block (one IFD entry: the orientation tag) after SOI."""
    o = ">" if byte_order == b"MM" else "<"
    tiff = (byte_order + struct.pack(o + "HI", 42, 8) + struct.pack(o + "H", 1) +
            struct.pack(o + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(o + "I", 0))
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_header_size_is_the_decoded_size(tmp_path, ext):
    for h, w in [(37, 61), (64, 20)]:
        path = tmp_path / f"a{h}{ext}"
        path.write_bytes(_encoded(ext, _noise(h, w)))
        assert image_size(str(path)) == read_image(str(path)).shape[:2] == (h, w)


@pytest.mark.parametrize("orientation,byte_order", [(1, b"MM"), (6, b"MM"), (8, b"II"),
                                                    (3, b"II")])
def test_exif_orientation_swaps_the_size_as_the_decoder_does(tmp_path, orientation, byte_order):
    path = tmp_path / "o.jpg"
    path.write_bytes(_with_exif_orientation(_encoded(".jpg", _noise(30, 50)), orientation,
                                            byte_order))
    decoded = read_image(str(path)).shape[:2]
    assert image_size(str(path)) == decoded
    assert decoded == ((50, 30) if orientation in (6, 8) else (30, 50))


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_file_is_refused_by_both(tmp_path, ext):
    """Issue 20: cv2.imread decodes a truncated JPEG with grey rows where data is missing."""
    data = _encoded(ext, _noise(120, 160))
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match="cut"):
        read_image(str(path))
    with pytest.raises(ImageReadError, match="truncated"):
        image_size(str(path))
    if ext == ".jpg":
        assert cv2.imread(str(path)) is not None  # what eval/predict used: a half-grey image


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(ImageReadError, match="nope.jpg"):
        read_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(ImageReadError, match="nope.jpg"):
        image_size(str(tmp_path / "nope.jpg"))
    (tmp_path / "text.jpg").write_text("not an image")
    for fn in (read_image, image_size):
        with pytest.raises(ImageReadError, match="text.jpg"):
            fn(str(tmp_path / "text.jpg"))


def test_eval_and_predict_read_through_the_strict_decoder(tmp_path):
    from tfmrcnn.cli.predict import _read_batch
    from tfmrcnn.config import get_cfg
    from tfmrcnn.evaluation.inference import _load_batch
    from tfmrcnn.inference.predictor import Predictor

    data = _encoded(".jpg", _noise(80, 90))
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "ok.jpg").write_bytes(data)
    with pytest.raises(OSError, match="cut.jpg"):
        _load_batch([{"file_name": str(tmp_path / "cut.jpg")}], Predictor(get_cfg(), model=None))
    good = _read_batch([str(tmp_path / "cut.jpg"), str(tmp_path / "ok.jpg")])
    assert [i for i, _ in good] == [1]
