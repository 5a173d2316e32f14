"""Downloading a file into tfmrcnn's cache: never a partial file at the destination, resumable.

Convention
----------
`download(url, dest)` streams into ``dest + ".part"`` and renames it to `dest` only once the
transfer is complete (as many bytes as the server announced) and, when a checksum is known,
verified. So `dest` either does not exist or is the whole, checked file:

- a transfer cut short (the server closes early, a socket timeout, a reset) keeps the bytes
  received in ``.part`` and the next attempt asks for the rest with an HTTP ``Range`` request;
  a server that ignores ``Range`` (status 200) sends the file again from byte 0;
- a process killed mid-transfer leaves only ``.part``; the next call resumes from it;
- a completed transfer whose checksum differs is deleted: if it was resumed from an earlier
  ``.part`` (which might belong to an older version of the file) it is fetched once more from
  byte 0, else it is an error naming the URL and both digests;
- concurrent callers (several trainings on one machine) serialise on ``dest + ".lock"``
  (`fcntl.flock`), so one downloads and the others find `dest` ready.

The cache root is ``$TFMRCNN_CACHE`` (default ``~/.cache/tfmrcnn``, shared with
scripts/setup.sh's wheel cache).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

__all__ = ["CACHE_ENV", "DownloadError", "Checksum", "cache_root", "file_digest", "download"]

logger = logging.getLogger(__name__)

CACHE_ENV = "TFMRCNN_CACHE"
PART_SUFFIX = ".part"
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# what a transfer cut short raises while reading the body (the bytes so far are kept)
_INTERRUPTIONS = (socket.timeout, ConnectionError, http.client.IncompleteRead,
                  http.client.RemoteDisconnected)


class DownloadError(OSError):
    """A download failed; the message names the URL and what to do."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest: `algorithm` (a hashlib name) and its hex digest, or a prefix of it
    (detectron2's model zoo publishes the first 6 hex digits of each file's md5)."""
    algorithm: str
    hex_prefix: str

    def __post_init__(self):
        if not re.fullmatch(r"[0-9a-f]+", self.hex_prefix):
            raise ValueError(f"checksum {self.hex_prefix!r} is not lower-case hex")
        hashlib.new(self.algorithm)  # ValueError for an unknown algorithm

    def matches(self, hexdigest: str) -> bool:
        return hexdigest.startswith(self.hex_prefix)


def cache_root() -> str:
    """$TFMRCNN_CACHE, else ~/.cache/tfmrcnn (absolute)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tfmrcnn")
    return os.path.abspath(root)


def file_digest(path: str, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(dest: str) -> Iterator[None]:
    with open(dest + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _open(url: str, offset: int, timeout: float):
    """(response, offset the body starts at, total size or None) for bytes `offset`.. of `url`."""
    request = urllib.request.Request(url, headers={"User-Agent": "tfmrcnn"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is not a prefix the server recognises
            return _open(url, 0, timeout)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, *_INTERRUPTIONS) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if response.status == 206:
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != offset:
            response.close()  # a range we did not ask for: start over
            return _open(url, 0, timeout)
        total = int(m.group(3)) if m.group(3) != "*" else None
        return response, offset, total
    return response, 0, length


Progress = Callable[[int, Optional[int]], None]  # (bytes done, total or None)


def _transfer(url: str, part: str, timeout: float,
              progress: Optional[Progress]) -> Tuple[bool, Optional[int]]:
    """One attempt: append the rest of `url` to `part`.

    Returns (complete, announced total size or None). Not complete: the connection broke
    (the bytes received stay in `part`) or fewer bytes came than announced.
    """
    response, start, total = _open(url, _size(part), timeout)
    with response, open(part, "r+b" if os.path.exists(part) else "wb") as f:
        f.truncate(start)  # 0 when the server restarts the file, else the resume offset
        f.seek(start)
        done, broken = start, False
        try:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        except _INTERRUPTIONS as e:
            logger.warning("%s: transfer interrupted at %d bytes (%s)", url, done, e)
            broken = True
        f.flush()
        os.fsync(f.fileno())
    return not broken and (total is None or done >= total), total


def download(url: str, dest: str, checksum: Optional[Checksum] = None, attempts: int = 5,
             timeout: float = 60.0, log: Callable[[str], None] = logger.info,
             progress: Optional[Progress] = None) -> str:
    """Fetch `url` to `dest` (see the module docstring); returns `dest`.

    An existing `dest` is reused (verified first when `checksum` is given; a mismatch there
    downloads it again). attempts: transfers tried while bytes keep missing (each resumes);
    timeout: seconds a connect or a read may stall; progress(bytes done, total or None) is
    called after each chunk.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + PART_SUFFIX
    total = None
    with _locked(dest):
        if os.path.exists(dest):
            if checksum is None or checksum.matches(file_digest(dest, checksum.algorithm)):
                return dest
            log(f"{dest}: {checksum.algorithm} does not start with {checksum.hex_prefix}; "
                "downloading it again")
            os.unlink(dest)
        resumed = os.path.exists(part)
        for _ in range(attempts):
            if resumed and _size(part):
                log(f"resuming {url} at byte {_size(part):,}")
            else:
                log(f"downloading {url} to {dest}")
            complete, total = _transfer(url, part, timeout, progress)
            if not complete:
                resumed = True
                continue
            if total is not None and _size(part) > total:
                os.unlink(part)
                raise DownloadError(f"{url}: received {_size(part):,} bytes, more than the "
                                    f"{total:,} announced")
            if checksum is not None:
                digest = file_digest(part, checksum.algorithm)
                if not checksum.matches(digest):
                    os.unlink(part)
                    if resumed:  # the old .part may be another file's start: once from byte 0
                        log(f"{url}: {checksum.algorithm} mismatch after resuming; "
                            "downloading from the start")
                        resumed = False
                        continue
                    raise DownloadError(
                        f"{url}: {checksum.algorithm} {digest} does not start with the "
                        f"expected {checksum.hex_prefix} (a damaged or different file)")
            os.replace(part, dest)
            return dest
    of = f" of {total:,}" if total is not None else ""
    raise DownloadError(f"{url}: incomplete after {attempts} attempts ({_size(part):,}{of} bytes "
                        f"in {part}); run the command again to resume")
