"""detectron2 model-zoo names and URLs: download once into the cache, convert once, use anywhere.

Convention
----------
Names, as detectron2 0.5 resolves them (``detectron2/utils/file_io.py``, ``Detectron2Handler``):
``detectron2://NAME`` is the URL ``https://dl.fbaipublicfiles.com/detectron2/NAME``, e.g.
``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` or
``detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl``.
The base URL can be replaced with ``$TFMRCNN_DETECTRON2_URL`` (a mirror, or a test server).
Plain ``http://`` / ``https://`` URLs are fetched as they are.

Checksums: detectron2's MODEL_ZOO.md states that every model-zoo file name carries the first
6 hex digits of the file's md5 (``model_final_f10217.pkl``); that prefix is checked. The
ImageNet backbones (``ImageNetPretrained/...``) carry none, and neither does a plain URL.

Cache (``$TFMRCNN_CACHE``, default ``~/.cache/tfmrcnn``, see `tfmrcnn.utils.download`):

- ``detectron2/NAME``: the file of ``detectron2://NAME``, byte for byte;
- ``downloads/HOST/PATH``: the file of a plain URL;
- ``converted/STEM-SHA/``: a model directory (``config.yaml`` + ``model_final.npz``) converted
  from a checkpoint whose sha256 starts with SHA; written weights first, config last, so a
  directory with both files is complete, and a changed file gets a new directory.
"""
from __future__ import annotations

import logging
import os
import posixpath
import urllib.parse
from typing import Callable, Optional

from tfmrcnn.utils.download import Checksum, cache_root, download, file_digest

__all__ = ["D2_SCHEME", "D2_URL_ENV", "D2_DEFAULT_URL", "ZooError", "is_remote", "url_of",
           "cache_path_of", "known_checksum", "fetch", "converted_model_dir", "resolve_weights"]

logger = logging.getLogger(__name__)

D2_SCHEME = "detectron2://"
D2_URL_ENV = "TFMRCNN_DETECTRON2_URL"
D2_DEFAULT_URL = "https://dl.fbaipublicfiles.com/detectron2/"
_CHECKPOINT_SUFFIXES = (".pkl", ".pth", ".pt")
_HASH_CHARS = 16  # of the sha256 in a converted directory's name


class ZooError(ValueError):
    """A model name or URL that cannot be resolved; the message names it."""


def is_remote(path: str) -> bool:
    """A ``detectron2://`` name or an http(s) URL."""
    return path.startswith((D2_SCHEME, "http://", "https://"))


def _d2_name(path: str) -> str:
    """NAME of ``detectron2://NAME``, checked to be a relative path inside the zoo."""
    name = path[len(D2_SCHEME):]
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ZooError(f"{path!r}: expected detectron2://DIR/.../FILE (a model-zoo path such as "
                       "detectron2://ImageNetPretrained/MSRA/R-50.pkl)")
    return name


def url_of(path: str) -> str:
    """The URL a remote name is fetched from."""
    if path.startswith(D2_SCHEME):
        base = os.environ.get(D2_URL_ENV) or D2_DEFAULT_URL
        return base.rstrip("/") + "/" + _d2_name(path)
    if path.startswith(("http://", "https://")):
        return path
    raise ZooError(f"{path!r} is not a detectron2:// name or an http(s) URL")


def cache_path_of(path: str) -> str:
    """Where the file of a remote name is kept (see the module docstring)."""
    if path.startswith(D2_SCHEME):
        return os.path.join(cache_root(), "detectron2", *_d2_name(path).split("/"))
    parsed = urllib.parse.urlsplit(url_of(path))
    parts = [p for p in posixpath.normpath(urllib.parse.unquote(parsed.path)).split("/")
             if p not in ("", ".", "..")]
    if not parts:
        raise ZooError(f"{path!r}: the URL names no file")
    host = parsed.netloc.replace(":", "_")
    return os.path.join(cache_root(), "downloads", host, *parts)


def known_checksum(path: str) -> Optional[Checksum]:
    """The md5 prefix in a model-zoo file name (``..._f10217.pkl``), else None."""
    if not path.startswith(D2_SCHEME):
        return None
    stem, ext = posixpath.splitext(posixpath.basename(_d2_name(path)))
    tag = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    if ext == ".pkl" and len(tag) == 6 and all(c in "0123456789abcdef" for c in tag):
        return Checksum("md5", tag)
    return None


def fetch(path: str, log: Callable[[str], None] = logger.info, timeout: float = 60.0,
          progress: Optional[Callable[[int, Optional[int]], None]] = None) -> str:
    """Local path of `path`: a local file as it is, a remote name downloaded into the cache
    (`tfmrcnn.utils.download.download`: timeout, progress)."""
    if not is_remote(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        return path
    return download(url_of(path), cache_path_of(path), checksum=known_checksum(path),
                    timeout=timeout, log=log, progress=progress)


def converted_model_dir(checkpoint: str, log: Callable[[str], None] = logger.info) -> str:
    """A model directory holding `checkpoint` (a local detectron2 / Caffe2 .pkl or .pth)
    converted to our format; converted once per file content, reused afterwards."""
    from tfmrcnn.checkpoint.model_dir import ModelDirError, model_dir_paths
    from .convert import convert_checkpoint

    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    digest = file_digest(checkpoint, "sha256")[:_HASH_CHARS]
    out = os.path.join(cache_root(), "converted", f"{stem}-{digest}")
    try:
        model_dir_paths(out)
        return out
    except ModelDirError:
        pass
    log(f"converting {checkpoint} to {out}")
    convert_checkpoint(checkpoint, out, log=log)
    return out


def resolve_weights(path: str, log: Callable[[str], None] = logger.info) -> str:
    """MODEL.WEIGHTS -> a local weights file (.npz) that `load_weights` reads.

    ``""`` stays ``""`` (no initial weights); a local ``.npz`` is returned as it is; a remote
    name is downloaded first; a detectron2 / Caffe2 checkpoint (.pkl, .pth) is converted
    (architecture inferred from its tensors) into the cache.
    """
    if not path:
        return path
    local = fetch(path, log=log)
    if local.endswith(".npz"):
        return local
    if not local.endswith(_CHECKPOINT_SUFFIXES):
        raise ZooError(f"MODEL.WEIGHTS={path!r}: expected a tfmrcnn weights file (.npz), a "
                       "detectron2 / Caffe2 checkpoint (.pkl, .pth) or a detectron2:// name")
    from tfmrcnn.checkpoint.model_dir import model_dir_paths

    return model_dir_paths(converted_model_dir(local, log=log))[1]
