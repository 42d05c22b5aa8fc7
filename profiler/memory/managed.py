"""``managed_memory``: route the factory calls made inside a function to a pool.

    @managed_memory                      # a pool of its own (``f.pool``)
    def f(x): ...

    @managed_memory(pool=shared_pool)    # or a shared SimpleMemoryPool / UnifiedMemoryManager
    def g(x): ...

Inside the call, ``torch.zeros / empty / ones / full``, their ``*_like`` forms
and ``Tensor.new_zeros / new_empty / new_ones / new_full`` are served by the
pool through a ``torch.overrides.TorchFunctionMode``. Nothing in ``torch`` is
reassigned: the mode is thread-local, so other threads are unaffected. Calls
the pool cannot serve exactly (``out=``, ``requires_grad=True``, a layout or
memory format other than contiguous strided, pinned memory, ``full`` without a
dtype) go to torch unchanged. When the function returns, every tensor it took
goes back to the pool; tensors that escaped (returned, stored, still
referenced) are counted in ``escaped`` and their memory is not reused while
anything references it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from profiler.memory.cache import _use_count
from profiler.memory.pool import SimpleMemoryPool, normalize_shape

_FILL = {torch.zeros: 0, torch.ones: 1, torch.empty: None, torch.full: "arg"}
_LIKE = {torch.zeros_like: 0, torch.ones_like: 1, torch.empty_like: None, torch.full_like: "arg"}
_NEW = {torch.Tensor.new_zeros: 0, torch.Tensor.new_ones: 1, torch.Tensor.new_empty: None,
        torch.Tensor.new_full: "arg"}
_ALLOWED = {"dtype", "device", "layout", "requires_grad", "pin_memory", "memory_format"}


def _plain(kwargs: dict[str, Any], like: bool = False) -> bool:
    """True when the keyword arguments ask for nothing a pooled tensor cannot give."""
    for k, v in kwargs.items():
        if k not in _ALLOWED:
            return False
        if k == "layout" and v not in (None, torch.strided):
            return False
        if k in ("requires_grad", "pin_memory") and v:
            return False
        if k == "memory_format" and v not in (None, torch.contiguous_format) and not (
                like and v is torch.preserve_format):
            return False
    return True


def _size(args: tuple) -> Any:
    if len(args) == 1 and not isinstance(args[0], int):
        return args[0]
    return args


class PoolMode(TorchFunctionMode):
    """Serves plain factory calls from ``pool`` and remembers what it handed out."""

    def __init__(self, pool: Any, **options: Any):
        super().__init__()
        self.pool = pool
        self.options = options
        self.taken: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = None
        if func in _FILL:
            t = self._factory(_FILL[func], args, kwargs)
        elif func in _LIKE:
            t = self._like(_LIKE[func], args, kwargs)
        elif func in _NEW:
            t = self._new(_NEW[func], args, kwargs)
        if t is None:
            return func(*args, **kwargs)
        return t

    def _serve(self, shape: Any, dtype: torch.dtype, device: Any,
               fill: Any) -> torch.Tensor | None:
        if fill is not None and type(fill) not in (int, float, bool):
            return None  # a tensor or complex fill value: leave it to torch
        try:
            shape = normalize_shape(shape)
        except (TypeError, ValueError):
            return None  # symbolic or unusual sizes: torch decides (and raises if invalid)
        t = self.pool._scoped_acquire(shape, dtype, device, fill == 0, **self.options)
        if fill is not None and fill != 0:
            t.fill_(fill)
        self.taken.append(t)
        return t

    def _factory(self, fill: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if fill == "arg":
            if len(args) != 2 or kwargs.get("dtype") is None:
                return None
            size, fill = args
        else:
            size = _size(args)
        if not _plain(kwargs) or "names" in kwargs:
            return None
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        device = kwargs.get("device") or torch.get_default_device()
        return self._serve(size, dtype, device, fill)

    def _like(self, fill: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if fill == "arg":
            if len(args) != 2:
                return None
            src, fill = args
        else:
            if len(args) != 1:
                return None
            (src,) = args
        if not isinstance(src, torch.Tensor) or not _plain(kwargs, like=True):
            return None
        if src.layout != torch.strided or not src.is_contiguous():
            return None
        return self._serve(tuple(src.shape), kwargs.get("dtype") or src.dtype,
                           kwargs.get("device") or src.device, fill)

    def _new(self, fill: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        src, rest = args[0], args[1:]
        if fill == "arg":
            if len(rest) != 2:
                return None
            size, fill = rest
        else:
            size = _size(rest)
        if not _plain(kwargs) or src.layout != torch.strided:
            return None
        return self._serve(size, kwargs.get("dtype") or src.dtype,
                           kwargs.get("device") or src.device, fill)


def _escaped(t: torch.Tensor) -> bool:
    # Python references expected: the `taken` list, the caller's loop variable, this
    # argument and getrefcount's own; storage users: the master, the cache's storage
    # object's owner and this tensor.
    return sys.getrefcount(t) > 4 or _use_count(t.untyped_storage()._cdata) > 3


def managed_memory(func: Callable | None = None, *, pool: Any = None, **options: Any):
    """Decorator (bare or with ``pool=`` and manager options such as ``category=``)."""

    def decorate(f: Callable) -> Callable:
        target = pool if pool is not None else SimpleMemoryPool()

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mode = PoolMode(target, **options)
            try:
                with mode:
                    return f(*args, **kwargs)
            finally:
                taken, mode.taken = mode.taken, []
                escaped = 0
                for t in taken:
                    escaped += _escaped(t)
                t = None  # type: ignore[assignment]  # drop the loop's last reference
                if escaped:
                    target._count_escaped(escaped, **options)
                for t in taken:
                    target._scoped_release(t)
                del taken

        wrapper.pool = target  # type: ignore[attr-defined]
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
