"""A real TensorBoard server for the tests: start it on a free 127.0.0.1 port, query its
plugins' HTTP API (gzip-aware), poll until a condition holds, stop it."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TENSORBOARD = Path(sys.executable).parent / "tensorboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, **params: Any) -> Any:
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(base + path + query, timeout=10) as resp:
        body = resp.read()
        if resp.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return json.loads(body)


def poll(fn: Callable[[], Any], limit_s: float = 120.0) -> Any:
    """``fn()`` until it returns something true (the server may still be loading)."""
    deadline, last = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for TensorBoard ({last})")


@contextlib.contextmanager
def tensorboard(logdir: Path) -> Iterator[str]:
    """A server on ``logdir``; yields its base URL, stops it on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
