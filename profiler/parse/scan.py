"""Read only the events the attribution needs from a Kineto trace, without building the
whole JSON document.

torch.profiler's traces are mostly operator arguments (shapes, strides, concrete inputs:
``record_shapes``) that the attribution never reads; decoding them into Python objects
dominates a full ``json`` / ``orjson`` load. ``scan_events(raw)`` matches, with compiled
regular expressions over the bytes, the three kinds of events ``parse_trace`` keeps, in
the layout Kineto writes them (one key per line, fixed key order):

- ``cpu_op`` and ``user_annotation`` complete events: name, tid, ts, dur, and for
  operators the ``External id`` and the autograd ``Sequence number`` / ``Fwd thread id``
  at the head of ``args``;
- ``[memory]`` instant events: tid, ts, Total Allocated, Bytes, Device Id / Type, Addr.

A trace with device activity (CUDA kernels, copies) goes to the full load, which links
it to operators. It checks itself: the number of matches of each kind must equal the number of
occurrences of that kind's ``"cat"`` / ``"name"`` marker in the file. On any difference
(another torch version's layout, an escaped name it cannot read) it returns None and the
caller falls back to the full JSON load, so the result never silently drops an event.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_NUM = rb"(-?[0-9][0-9.eE+-]*)"
_TID = rb'(-?[0-9]+|"[^"]*")'
_HEAD = (rb'",\s*"name": "([^"\\]*(?:\\.[^"\\]*)*)",\s*"pid": [^,]*,\s*"tid": ' + _TID
         + rb',\s*"ts": ' + _NUM + rb',\s*"dur": ' + _NUM + rb'\s*,\s*"args": \{\s*')
_OP = re.compile(
    rb'"ph": "X",\s*"cat": "cpu_op' + _HEAD + rb'(?:"External id": (-?[0-9]+),\s*)?'
    rb'(?:"Record function id": -?[0-9]+,\s*)?'
    rb'(?:"Sequence number": (-?[0-9]+),\s*"Fwd thread id": (-?[0-9]+))?')
_ANNOTATION_SPAN = re.compile(rb'"ph": "X",\s*"cat": "user_annotation' + _HEAD)
_MEMORY = re.compile(
    rb'"name": "\[memory\]",\s*"pid": [^,]*,\s*"tid": ' + _TID + rb',\s*"ts": ' + _NUM
    + rb'\s*,\s*"args": \{\s*"Total Reserved": -?[0-9]+, "Total Allocated": (-?[0-9]+), '
    rb'"Bytes": (-?[0-9]+), "Device Id": (-?[0-9]+), "Device Type": (-?[0-9]+), '
    rb'"Addr": (-?[0-9]+)')
_CPU_OP = b'"cat": "cpu_op"'
_ANNOTATION = b'"cat": "user_annotation"'
_MEMORY_NAME = b'"name": "[memory]"'
_SEQUENCE = b'"Sequence number"'
# device activity (CUDA kernels, copies) is linked to operators by the full load
_DEVICE_CATS = (b'"cat": "kernel"', b'"cat": "gpu_memcpy"', b'"cat": "gpu_memset"')


def _ints(values: tuple[bytes, ...] | list[bytes], empty: int = -1) -> np.ndarray:
    """Decimal integers (an empty match: ``empty``), parsed by numpy in one call; values of
    19 characters or more (possibly out of int64) go through numpy's checked conversion."""
    if not len(values):
        return np.array([], dtype=np.int64)
    fill = str(empty).encode()
    filled = [v or fill for v in values]
    if max(map(len, filled)) < 19:
        out = np.fromstring(b" ".join(filled), dtype=np.int64, sep=" ")
        if len(out) == len(filled):
            return out
    return np.array(filled, dtype=np.bytes_).astype(np.int64)


def _floats(values: tuple[bytes, ...] | list[bytes]) -> np.ndarray:
    return np.fromiter(map(float, values), dtype=np.float64, count=len(values))


def _mapped(values: tuple[bytes, ...] | list[bytes], convert) -> list[Any]:
    """``convert`` applied once per distinct value (names and thread ids repeat a lot)."""
    table = {v: convert(v) for v in set(values)}
    return [table[v] for v in values]


def _tid(v: bytes) -> Any:
    return v[1:-1].decode() if v.startswith(b'"') else int(v)


def _name(v: bytes) -> str:
    return json.loads(b'"' + v + b'"') if b"\\" in v else v.decode()


def _columns(rows: list[tuple], width: int) -> list[tuple]:
    return list(zip(*rows, strict=True)) if rows else [()] * width


def scan_events(raw: bytes) -> dict[str, Any] | None:
    """Columns of the needed events (see the module docstring), or None when the file's
    layout is not the one this scanner reads."""
    if any(marker in raw for marker in _DEVICE_CATS):
        return None
    ops = _OP.findall(raw)
    notes = _ANNOTATION_SPAN.findall(raw)
    mem = _MEMORY.findall(raw)
    names, tids, ts, dur, ext, seq, fwd = _columns(ops, 7)
    a_names, a_tids, a_ts, a_dur = _columns(notes, 4)
    m_tid, m_ts, m_total, m_bytes, m_dev_id, m_dev_type, m_addr = _columns(mem, 7)
    op_seq = _ints(seq)
    if (len(ops) != raw.count(_CPU_OP) or len(notes) != raw.count(_ANNOTATION)
            or len(mem) != raw.count(_MEMORY_NAME)
            or int((op_seq != -1).sum()) != raw.count(_SEQUENCE)):
        return None
    return {
        "op_name": _mapped(names, _name), "op_tid": _mapped(tids, _tid),
        "op_ts": _floats(ts), "op_dur": _floats(dur),
        "op_seq": op_seq, "op_fwd": _ints(fwd).tolist(),
        "op_ext": _ints(ext), "k_ext": [], "k_dur": [],
        "an_name": _mapped(a_names, _name), "an_tid": _mapped(a_tids, _tid),
        "an_ts": _floats(a_ts), "an_dur": _floats(a_dur),
        "m_ts": _floats(m_ts), "m_tid": _mapped(m_tid, _tid), "m_bytes": _ints(m_bytes),
        "m_total": _ints(m_total),
        "m_dev": list(zip(_ints(m_dev_type).tolist(), _ints(m_dev_id).tolist(), strict=True)),
        "m_addr": _ints(m_addr),
    }


def scan_header(raw: bytes) -> dict[str, Any] | None:
    """The trace's top-level keys before ``traceEvents`` (distributedInfo, ...), or None."""
    head, sep, _ = raw.partition(b'"traceEvents": [')
    if not sep:
        return None
    text = head.rstrip().rstrip(b",") + b"}"
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
