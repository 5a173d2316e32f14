"""Reading image files: one strict decoder for training, evaluation and prediction, and a cheap
size-and-completeness check from the file's header and end (for checking a data set up front).

Conventions
-----------
* Decoding is ``cv2.imdecode(bytes, IMREAD_COLOR)``: (H, W, 3) uint8 BGR with the EXIF
  orientation applied. It refuses a truncated JPEG or PNG, where ``cv2.imread`` returns a JPEG
  whose missing rows are grey; every reader goes through ``read_image`` so that a file is
  either used whole everywhere or nowhere.
* ``image_size`` gives the (H, W) that ``read_image`` would return without decoding: from the
  JPEG frame header (SOF) with the width and height swapped for EXIF orientations 5-8, or from
  the PNG IHDR chunk. A JPEG without its end-of-image marker in its last 1 KiB, or a PNG without
  its IEND chunk at the end, is reported as truncated. Other formats are decoded.
"""
from __future__ import annotations

import os
import struct
from typing import Optional, Tuple

import cv2
import numpy as np

__all__ = ["ImageReadError", "read_image", "image_size"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL = 1024  # bytes at the end searched for EOI (some writers pad after it)
# Start-of-frame markers (C4 DHT, C8 JPG, CC DAC are not frames)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageReadError(OSError):
    """An image file is missing, unreadable, truncated or not decodable; names the file."""


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR of an image file; raises ImageReadError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise ImageReadError(f"cannot decode image {path} (empty, truncated, corrupt or not "
                             f"an image)")
    return image


def image_size(path: str) -> Tuple[int, int]:
    """(H, W) that read_image(path) returns, from the header; raises ImageReadError."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head.startswith(_JPEG_SOI):
                size = _jpeg_size(f, path)
            elif head == _PNG_SIGNATURE:
                size = _png_size(f, path)
            else:
                size = None
    except OSError as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
    if size is None:  # another format: decode it
        return tuple(read_image(path).shape[:2])
    return size


def _truncated(path: str, why: str) -> ImageReadError:
    return ImageReadError(f"image {path} is truncated or corrupt ({why})")


def _jpeg_size(f, path: str) -> Tuple[int, int]:
    """Walk the JPEG segments from after SOI to the frame header; check the end marker."""
    f.seek(2)
    orientation, size = 1, None
    while size is None:
        marker = f.read(2)
        while len(marker) == 2 and marker[0] == 0xFF and marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + f.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise _truncated(path, "no frame header")
        code = marker[1]
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # standalone markers
            continue
        if code in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise _truncated(path, "no frame header")
        raw = f.read(2)
        if len(raw) < 2:
            raise _truncated(path, "segment cut")
        length = struct.unpack(">H", raw)[0]
        body = f.read(length - 2)
        if len(body) < length - 2:
            raise _truncated(path, "segment cut")
        if code == 0xE1 and body.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(body[6:]) or orientation
        elif code in _JPEG_SOF:
            height, width = struct.unpack(">HH", body[1:5])
            size = (height, width)
    f.seek(0, os.SEEK_END)
    end = f.tell()
    f.seek(max(end - _JPEG_TAIL, 0))
    if _JPEG_EOI not in f.read():
        raise _truncated(path, "no JPEG end-of-image marker")
    height, width = size
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _exif_orientation(tiff: bytes) -> Optional[int]:
    """The orientation tag of a TIFF-structured EXIF block's first IFD, or None."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", tiff[4:8])[0]
    if offset + 2 > len(tiff):
        return None
    count = struct.unpack(order + "H", tiff[offset:offset + 2])[0]
    for k in range(count):
        entry = tiff[offset + 2 + 12 * k:offset + 14 + 12 * k]
        if len(entry) < 12:
            return None
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == _EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
            return struct.unpack(order + "H", entry[8:10])[0]
    return None


def _png_size(f, path: str) -> Tuple[int, int]:
    chunk = f.read(16)  # length, b"IHDR", width, height
    if len(chunk) < 16 or chunk[4:8] != b"IHDR":
        raise _truncated(path, "no PNG header")
    width, height = struct.unpack(">II", chunk[8:16])
    f.seek(0, os.SEEK_END)
    f.seek(max(f.tell() - 12, 0))
    if f.read(12)[4:8] != b"IEND":
        raise _truncated(path, "no PNG IEND chunk at the end")
    return int(height), int(width)
