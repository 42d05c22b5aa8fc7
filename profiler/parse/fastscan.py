"""The native trace scanner (``native/trace_scan.cpp``): one pass of C++ over the trace's
JSON text that keeps the operator, annotation, allocator and device-activity events and
skips everything else undecoded. It reads JSON, so key order and whitespace do not
matter; for any input it cannot read it reports an error and ``scan`` returns None
(the caller falls back to ``profiler.parse.scan``, then to a full JSON load).

``scan(raw)`` gives the columns ``profiler.parse.trace.parse_trace`` collects, device
activity included (so CUDA traces take this path too). Names and thread ids come back
as token ids into a table of distinct texts, each decoded once here. Built on first use
(``profiler.native``); ``unavailable()`` says why it is not used where it is not.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import numpy as np

from profiler import native

_SOURCE = Path(__file__).with_name("native") / "trace_scan.cpp"
_lib: ctypes.CDLL | None = None
_why_not: str | None = None
_I64 = np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS")
_F64 = np.ctypeslib.ndpointer(dtype=np.float64, flags="C_CONTIGUOUS")
OPS, ANNOTATIONS, MEMORY, DEVICE, TOKENS = range(5)


def _load() -> ctypes.CDLL | None:
    global _lib, _why_not
    if _lib is not None or _why_not is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(native.library(_SOURCE, "trace scanner", [])))
    except (native.NativeUnavailable, OSError) as exc:
        _why_not = str(exc)
        return None
    lib.ts_scan.argtypes = [ctypes.c_char_p, ctypes.c_int64]
    lib.ts_scan.restype = ctypes.c_void_p
    lib.ts_error.argtypes = [ctypes.c_void_p]
    lib.ts_error.restype = ctypes.c_int64
    lib.ts_count.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.ts_count.restype = ctypes.c_int64
    lib.ts_fill_ops.argtypes = [ctypes.c_void_p, _I64, _I64, _F64, _F64, _I64, _I64, _I64]
    lib.ts_fill_annotations.argtypes = [ctypes.c_void_p, _I64, _I64, _F64, _F64]
    lib.ts_fill_memory.argtypes = [ctypes.c_void_p, _I64, _F64, _I64, _I64, _I64, _I64, _I64]
    lib.ts_fill_device.argtypes = [ctypes.c_void_p, _I64, _F64]
    lib.ts_fill_tokens.argtypes = [ctypes.c_void_p, _I64]
    lib.ts_free.argtypes = [ctypes.c_void_p]
    for fn in (lib.ts_fill_ops, lib.ts_fill_annotations, lib.ts_fill_memory,
               lib.ts_fill_device, lib.ts_fill_tokens, lib.ts_free):
        fn.restype = None
    _lib = lib
    return lib


def unavailable() -> str | None:
    """Why the native scanner is not used here (None: it is)."""
    _load()
    return _why_not


def _token(raw: bytes, offset: int, length: int, kind: int) -> Any:
    text = raw[offset:offset + length]
    if kind == 0:  # a number (thread ids)
        try:
            return int(text)
        except ValueError:
            return float(text)
    return json.loads(b'"' + text + b'"') if kind == 2 else text.decode()


def scan(raw: bytes) -> dict[str, Any] | None:
    """The columns of the needed events, or None (no library, or input it cannot read)."""
    lib = _load()
    if lib is None:
        return None
    handle = lib.ts_scan(raw, len(raw))
    if not handle:
        return None
    try:
        if lib.ts_error(handle):
            return None
        n = {t: int(lib.ts_count(handle, t)) for t in (OPS, ANNOTATIONS, MEMORY, DEVICE, TOKENS)}

        def i64(count: int) -> np.ndarray:
            return np.empty(count, dtype=np.int64)

        def f64(count: int) -> np.ndarray:
            return np.empty(count, dtype=np.float64)

        ops = dict(name=i64(n[OPS]), tid=i64(n[OPS]), ts=f64(n[OPS]), dur=f64(n[OPS]),
                   ext=i64(n[OPS]), seq=i64(n[OPS]), fwd=i64(n[OPS]))
        lib.ts_fill_ops(handle, *ops.values())
        ann = dict(name=i64(n[ANNOTATIONS]), tid=i64(n[ANNOTATIONS]), ts=f64(n[ANNOTATIONS]),
                   dur=f64(n[ANNOTATIONS]))
        lib.ts_fill_annotations(handle, *ann.values())
        mem = dict(tid=i64(n[MEMORY]), ts=f64(n[MEMORY]), total=i64(n[MEMORY]),
                   bytes=i64(n[MEMORY]), dev_id=i64(n[MEMORY]), dev_type=i64(n[MEMORY]),
                   addr=i64(n[MEMORY]))
        lib.ts_fill_memory(handle, *mem.values())
        k_ext, k_dur = i64(n[DEVICE]), f64(n[DEVICE])
        lib.ts_fill_device(handle, k_ext, k_dur)
        table = i64(3 * n[TOKENS])
        lib.ts_fill_tokens(handle, table)
    finally:
        lib.ts_free(handle)
    # token id -> value; id -1 (a missing thread id) -> None, the last entry
    values = [_token(raw, int(o), int(ln), int(k)) for o, ln, k in table.reshape(-1, 3)]
    lookup = np.empty(len(values) + 1, dtype=object)
    lookup[:len(values)] = values
    return {
        "op_name": lookup[ops["name"]], "op_tid": lookup[ops["tid"]].tolist(),
        "op_ts": ops["ts"], "op_dur": ops["dur"], "op_seq": ops["seq"],
        "op_fwd": ops["fwd"].tolist(), "op_ext": ops["ext"],
        "k_ext": k_ext, "k_dur": k_dur,
        "an_name": lookup[ann["name"]], "an_tid": lookup[ann["tid"]].tolist(),
        "an_ts": ann["ts"], "an_dur": ann["dur"],
        "m_ts": mem["ts"], "m_tid": lookup[mem["tid"]].tolist(), "m_bytes": mem["bytes"],
        "m_total": mem["total"],
        "m_dev": list(zip(mem["dev_type"].tolist(), mem["dev_id"].tolist(), strict=True)),
        "m_addr": mem["addr"],
    }
