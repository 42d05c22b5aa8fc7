"""``SimpleMemoryPool`` and the scoped form ``MemoryContext``.

    pool = SimpleMemoryPool(max_per_key=8)
    t = pool.get_tensor((100, 32))          # torch.empty semantics: contents undefined
    z = pool.get_tensor((100, 32), zero=True)
    pool.return_tensor(t)

    with MemoryContext(pool) as mem:        # or: with pool.scope() as mem:
        a = mem.zeros((100, 32))
        b = mem.empty(50, 64)
    # a and b went back to the pool; their memory is reused only once nothing
    # references it any more (see profiler.memory.cache)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from profiler.memory.cache import Buffer, CategoryCounters, TensorCache

POOL_CATEGORY = "all"


def normalize_shape(shape: Any) -> tuple[int, ...]:
    """``(2, 3)``, ``[2, 3]``, ``torch.Size``, or a single int -> a tuple of ints >= 0."""
    if type(shape) is tuple:
        dims = shape
    elif isinstance(shape, int) and not isinstance(shape, bool):
        dims = (shape,)
    elif isinstance(shape, Iterable):
        dims = tuple(shape)
    else:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}")
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ValueError(f"shape must hold integers >= 0, got {shape!r}")
    return dims


class DeviceResolver:
    """Turns "cpu", "cuda", "cuda:1", torch.device or None into a canonical torch.device."""

    def __init__(self, default: torch.device | str | None):
        self._cache: dict[Any, torch.device] = {}
        self.default = self.resolve(default if default is not None else "cpu")

    def resolve(self, device: torch.device | str | None) -> torch.device:
        if device is None:
            return self.default
        hit = self._cache.get(device)
        if hit is not None:
            return hit
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self._cache[device] = dev
        return dev


def _varargs_shape(shape: tuple) -> Any:
    return shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape


class SimpleMemoryPool:
    """Tensors kept per (shape, dtype, device), at most ``max_per_key`` idle ones per key.

    ``get_tensor`` returns uninitialized memory like ``torch.empty`` unless
    ``zero=True``. ``max_bytes`` (optional) caps the idle bytes the pool keeps.
    Thread-safe.
    """

    def __init__(self, max_per_key: int = 8, max_bytes: int | None = None,
                 device: torch.device | str | None = None):
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be None or an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._cache = TensorCache(max_per_key, default_category=POOL_CATEGORY,
                                  store=self._within_max_bytes if max_bytes is not None else None)
        self._devices = DeviceResolver(device)

    @property
    def device(self) -> torch.device:
        return self._devices.default

    @property
    def max_per_key(self) -> int:
        return self._cache.max_per_key

    def get_tensor(self, shape: Any, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None, zero: bool = False) -> torch.Tensor:
        tensor, _ = self._cache.acquire(POOL_CATEGORY, normalize_shape(shape), dtype,
                                        self._devices.resolve(device))
        if zero:
            tensor.zero_()
        return tensor

    def return_tensor(self, tensor: torch.Tensor | None) -> bool:
        """Give a tensor back. True when accepted; refused returns are counted in ``stats()``."""
        if tensor is None:
            return False
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"return_tensor expects a torch.Tensor, got {type(tensor).__name__}")
        return self._cache.release(tensor) == "ok"

    def scope(self) -> MemoryContext:
        return MemoryContext(self)

    def stats(self) -> dict[str, int | float]:
        """hits, misses, returns, dropped, held_bytes, live_bytes, peak_bytes and the safety counts."""
        c = self._cache.snapshot().get(POOL_CATEGORY, CategoryCounters())
        out = c.as_dict()
        out["returns"] = c.releases
        out["pooled_tensors"] = self._cache.audit()["pooled_buffers"]
        return out

    def counters(self) -> dict[str, CategoryCounters]:
        return self._cache.snapshot()

    def trim(self, level: str = "moderate") -> int:
        """Free idle memory. "moderate": keep at most one idle tensor per key; "critical": all."""
        if level == "critical":
            return self.clear()
        if level != "moderate":
            raise ValueError(f"level must be 'moderate' or 'critical', got {level!r}")
        first: set[tuple] = set()

        def surplus(buf: Buffer) -> bool:
            if buf.key in first or not buf.idle():
                return True
            first.add(buf.key)
            return False

        return self._cache.evict(surplus)

    def clear(self) -> int:
        """Let every idle tensor go; returns the bytes released."""
        return self._cache.evict(lambda buf: True)

    def _within_max_bytes(self, buf: Buffer, free: list, c: CategoryCounters) -> bool:
        return self.max_bytes is None or c.held_bytes + buf.nbytes <= self.max_bytes

    # used by MemoryContext and managed_memory
    def _scoped_acquire(self, shape: Any, dtype: torch.dtype, device: Any, zero: bool,
                        **_: Any) -> torch.Tensor:
        return self.get_tensor(shape, dtype=dtype, device=device, zero=zero)

    def _scoped_release(self, tensor: torch.Tensor) -> bool:
        return self.return_tensor(tensor)

    def _count_escaped(self, n: int, **_: Any) -> None:
        self._cache.count_escaped(POOL_CATEGORY, n)


class MemoryContext:
    """Every tensor acquired through the context goes back to its pool on exit.

    Works with a ``SimpleMemoryPool`` or a ``UnifiedMemoryManager`` (keyword
    options such as ``category`` or ``priority`` are passed to the manager).
    A tensor still referenced after the scope is returned too, but its memory
    is not reused until the last reference is gone.
    """

    def __init__(self, pool: Any, **defaults: Any):
        if not hasattr(pool, "_scoped_acquire"):
            raise TypeError(
                f"MemoryContext needs a SimpleMemoryPool or UnifiedMemoryManager, got {type(pool).__name__}"
            )
        self.pool = pool
        self.defaults = defaults
        self.tensors: list[torch.Tensor] = []

    def __enter__(self) -> MemoryContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        tensors, self.tensors = self.tensors, []
        for t in tensors:
            self.pool._scoped_release(t)

    def _get(self, shape: tuple, dtype: torch.dtype, device: Any, zero: bool,
             opts: dict[str, Any]) -> torch.Tensor:
        merged = {**self.defaults, **opts} if self.defaults else opts
        t = self.pool._scoped_acquire(_varargs_shape(shape), dtype, device, zero, **merged)
        self.tensors.append(t)
        return t

    def zeros(self, *shape: Any, dtype: torch.dtype = torch.float32, device: Any = None,
              **opts: Any) -> torch.Tensor:
        return self._get(shape, dtype, device, True, opts)

    def empty(self, *shape: Any, dtype: torch.dtype = torch.float32, device: Any = None,
              **opts: Any) -> torch.Tensor:
        return self._get(shape, dtype, device, False, opts)

    def allocate(self, shape: Any, dtype: torch.dtype = torch.float32, device: Any = None,
                 zero: bool = False, **opts: Any) -> torch.Tensor:
        return self._get((shape,), dtype, device, zero, opts)

    get_tensor = allocate

    def release(self, tensor: torch.Tensor) -> bool:
        """Return one tensor early (it is then no longer returned on exit)."""
        for i, t in enumerate(self.tensors):
            if t is tensor:
                del self.tensors[i]
                break
        return self.pool._scoped_release(tensor)
