"""An HTTP file server on 127.0.0.1 in a thread, with the faults downloads must survive.

Tests never contact a real URL: `serve(files)` serves {url path: bytes} and records every
request (path, Range header). Fault knobs, set on the returned server:

- ``truncate_first``: the first ``n`` GETs of a path announce the full Content-Length but
  send only ``cut_fraction`` of the bytes, then close the connection;
- ``stall_first``: the first ``n`` GETs send ``cut_fraction`` of the bytes, then wait
  ``stall_seconds`` before closing (a client with a shorter timeout sees a stalled transfer);
- ``ranges``: honour ``Range: bytes=N-`` with 206 + Content-Range (default); False answers 200
  with the whole file, as servers without range support do.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator

import pytest

_RANGE = re.compile(r"^bytes=(\d+)-$")


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: Dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.requests = []  # (path, Range header or None)
        self.truncate_first = 0
        self.stall_first = 0
        self.stall_seconds = 0.0
        self.cut_fraction = 0.4
        self.ranges = True
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def gets_of(self, path: str):
        return [r for p, r in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server: FileServer = self.server
        path = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        with server._lock:
            server.requests.append((path, range_header))
            nth = len(server.gets_of(path))
        if path not in server.files:
            self.send_error(404, "no such file")
            return
        data = server.files[path]
        start = 0
        m = _RANGE.match(range_header or "")
        if server.ranges and m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        cut = int(len(body) * server.cut_fraction)
        if nth <= server.truncate_first:
            self.wfile.write(body[:cut])
        elif nth <= server.stall_first:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            time.sleep(server.stall_seconds)
        else:
            self.wfile.write(body)
        self.close_connection = True


@contextlib.contextmanager
def serve(files: Dict[str, bytes]) -> Iterator[FileServer]:
    """A running FileServer on a free port; shut down on exit."""
    server = FileServer(files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to 127.0.0.1 go straight to the test server, whatever proxy the shell sets."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
