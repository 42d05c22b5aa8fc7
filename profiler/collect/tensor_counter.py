"""Always-on tensor memory counter for CPU runs: the bytes of the tensors torch allocates.

PyTorch's CPU allocator keeps no counters outside a profiler window (its own
``ProfiledCPUMemoryReporter`` counts only while memory profiling is on), and
glibc's ``mallinfo2`` counts every heap user of the process (profiler event
buffers, DataFrames, Python objects). This module installs a counting CPU
allocator (``native/tensor_counter.cpp``): the default allocator's own
``alloc_cpu`` / ``free_cpu`` and profiler reports, plus atomic counters of live
bytes, peak, allocations and frees. It is the model's tensor memory, exactly:
deterministic for a fixed seed, untouched by the profiler's own memory.

The library is compiled once per torch version with the system C++ compiler
(``profiler.native``, cached); without a compiler ``load()`` raises
``CounterUnavailable`` and CPU memory columns stay empty (never the heap).
Cost: two relaxed atomic adds and a 64-byte header per allocation.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from profiler import native

_SOURCE = Path(__file__).with_name("native") / "tensor_counter.cpp"
_lib: ctypes.CDLL | None = None


class CounterUnavailable(native.NativeUnavailable):
    """The counting allocator cannot be built or installed here (reason in the message)."""


@dataclass(frozen=True)
class Counts:
    live_bytes: int      # tensor bytes allocated and not yet freed (since install)
    peak_bytes: int      # highest live_bytes since the last ``reset_peak``
    alloc_count: int     # allocations since install (monotonic)
    alloc_bytes: int
    free_count: int
    free_bytes: int


def load() -> ctypes.CDLL:
    """The counter library, built on first use (raises CounterUnavailable)."""
    global _lib
    if _lib is not None:
        return _lib
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    torch_lib = Path(torch.__file__).parent / "lib"
    flags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_lib.parent / 'include'}",
             f"-L{torch_lib}", "-lc10", f"-Wl,-rpath,{torch_lib}"]
    try:
        path = native.library(_SOURCE, "tensor counter", flags, key=torch.__version__)
    except native.NativeUnavailable as exc:
        raise CounterUnavailable(str(exc)) from None
    lib = ctypes.CDLL(str(path))
    lib.tc_install.restype = ctypes.c_int
    lib.tc_installed.restype = ctypes.c_int
    lib.tc_read.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.tc_read.restype = None
    lib.tc_counters.argtypes = []
    lib.tc_counters.restype = ctypes.c_void_p
    _lib = lib
    return lib


def install() -> None:
    """Route CPU tensor allocations through the counter (idempotent)."""
    if not load().tc_install():
        raise CounterUnavailable("another CPU allocator is installed; tensor counter not used")


def uninstall() -> None:
    """New allocations go to torch's default allocator again (counted blocks stay counted)."""
    if _lib is not None:
        _lib.tc_uninstall()


def installed() -> bool:
    return _lib is not None and bool(_lib.tc_installed())


_BUF = (ctypes.c_int64 * 6)()


def read() -> Counts:
    load().tc_read(_BUF)
    return Counts(*_BUF)


def reset_peak() -> None:
    load().tc_reset_peak()


def view() -> memoryview:
    """The six counters of ``Counts`` in place, as one int64 memoryview: ``view()[i]`` reads
    one and ``v[1] = v[0]`` resets the peak, with no call into the library and one object
    to touch (what a step's end costs in a cache the step has evicted). Aligned 64-bit loads
    and stores, as the library's relaxed atomics."""
    block = (ctypes.c_int64 * 6).from_address(load().tc_counters())
    return memoryview(block).cast("B").cast("q")
