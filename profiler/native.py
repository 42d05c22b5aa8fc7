"""The profiler's small C++ libraries: compiled on first use with the system C++ compiler
(``$CXX``, else ``g++``, else ``c++``) and cached by a hash of the source and the build
flags in ``$XDG_CACHE_HOME/energy-flow-profiler`` (or ``~/.cache/energy-flow-profiler``).

Users: ``profiler.collect.tensor_counter`` (the counting CPU allocator, linked to torch's
c10) and ``profiler.parse.fastscan`` (the trace scanner, plain C++). Without a compiler,
or when a build fails, ``library`` raises ``NativeUnavailable`` with the reason; each
caller has its own way on without the library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class NativeUnavailable(RuntimeError):
    """A native library cannot be built or loaded here (reason in the message)."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "energy-flow-profiler"


def library(source: Path, what: str, flags: list[str], key: str = "") -> Path:
    """The path of ``source`` compiled into a shared library with ``flags`` (after
    ``-O2 -std=c++17 -shared -fPIC``), built now unless the cache holds it. ``key``: more
    text that invalidates the cached build (a torch version, an ABI flag). ``what`` names
    the library in error messages."""
    digest = hashlib.sha256(source.read_bytes() + "\0".join([*flags, key]).encode())
    target = cache_dir() / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        raise NativeUnavailable(f"no C++ compiler (g++ / c++) to build the {what}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as exc:
        raise NativeUnavailable(f"building the {what} failed: {exc}") from None
    os.close(fd)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", str(source), *flags, "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise NativeUnavailable(f"building the {what} failed: "
                                    + (done.stderr.strip().splitlines() or ["?"])[-1])
        os.replace(tmp, target)  # concurrent builders each rename a complete file
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"building the {what} failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
