"""The engine under every pool: idle buffers keyed by (category, shape, dtype, device).

Safety rests on one check. The cache keeps a private *master* tensor per buffer
and hands out a fresh alias of it (``master.detach()``): a new tensor object
over the same storage. Anything that still uses the memory -- the handed-out
tensor held by a variable, an object, a closure, autograd's saved tensors,
a view, ``.data``, a NumPy array -- keeps a reference to that storage. An idle
buffer is handed out again only when the storage's use count has fallen back
to the cache's own two references (the master and the cached storage object),
so memory that is still reachable from anywhere is never reused. A buffer that
fails the check stays idle and is counted in ``busy_skips``.

Handed-out tensors are tracked with weak references, so a tensor that is
dropped without being returned is reclaimed (``reclaimed``) instead of leaking.
Returns that are not a live handout are refused and counted: a second return
(``double_returns``), a view of a pooled tensor (``view_returns``), a tensor
the cache never handed out (``foreign_returns``).

At most ``max_per_key`` idle buffers are kept per key; a return that finds
its list full (or that a budget policy refuses) is dropped and counted.

Thread-safe: one lock guards all state; weak-reference callbacks only append
to a deque that the next locked call drains. On CUDA, reuse is ordered on the
stream that uses the memory (as with PyTorch's own caching allocator); a
tensor used on several streams needs ``record_stream`` before it is returned.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

_use_count = torch._C._storage_Use_Count
_IDLE_USES = 2  # the master tensor + the cached storage object


@dataclass
class CategoryCounters:
    """Per-category statistics. Bytes are tensor payload bytes (numel * itemsize)."""

    hits: int = 0              # acquisitions served from an idle buffer
    misses: int = 0            # acquisitions that allocated a new buffer
    acquisitions: int = 0
    releases: int = 0          # accepted returns
    reclaimed: int = 0         # handouts that died without being returned
    dropped: int = 0           # buffers let go instead of kept (caps, budgets, persistent)
    trimmed: int = 0           # idle buffers let go by trim / release_low_priority / clear
    busy_skips: int = 0        # idle buffers skipped because their memory was still referenced
    double_returns: int = 0
    view_returns: int = 0
    foreign_returns: int = 0
    autograd_returns: int = 0  # accepted returns of tensors that require grad / have a grad_fn
    escaped: int = 0           # handouts still referenced when their scope ended
    held_bytes: int = 0        # idle bytes kept for reuse
    live_bytes: int = 0        # handed-out bytes not yet returned
    peak_bytes: int = 0        # peak of live_bytes

    def as_dict(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dataclasses.asdict(self)
        served = self.hits + self.misses
        out["hit_rate"] = self.hits / served if served else 0.0
        return out


class Buffer:
    """One pooled allocation: the master tensor and what the cache knows about it."""

    __slots__ = ("master", "storage", "cdata", "nbytes", "key", "priority", "lifetime")

    def __init__(self, master: torch.Tensor, key: tuple, priority: int, lifetime: str):
        self.master = master
        self.storage = master.untyped_storage()
        self.cdata = self.storage._cdata
        self.nbytes = master.numel() * master.element_size()
        self.key = key
        self.priority = priority
        self.lifetime = lifetime

    def idle(self) -> bool:
        """True when nothing outside the cache references the memory."""
        return _use_count(self.cdata) == _IDLE_USES


class _HandoutRef(weakref.ref):
    __slots__ = ("buffer", "hid")
    buffer: Buffer  # set to None once handed back (the ref is then dead to the cache)
    hid: int


# store(buffer, free_list, counters) -> True to keep the buffer idle, False to drop it
StorePolicy = Callable[[Buffer, list, CategoryCounters], bool]


class TensorCache:
    """Idle buffers per key, live handouts, counters per category. See the module docstring."""

    def __init__(self, max_per_key: int = 8, default_category: str = "general",
                 store: StorePolicy | None = None):
        """``store`` decides whether a returned or reclaimed buffer is kept idle; it is
        fixed here so that every path back into the cache applies the same policy."""
        if not isinstance(max_per_key, int) or max_per_key < 0:
            raise ValueError(f"max_per_key must be an integer >= 0, got {max_per_key!r}")
        self.max_per_key = max_per_key
        self.default_category = default_category
        self.store_policy = store
        self.lock = threading.RLock()
        self.free: dict[tuple, list[Buffer]] = {}
        self.counters: dict[str, CategoryCounters] = {}
        self._out: dict[int, _HandoutRef] = {}
        self._known: dict[tuple[str, int], Buffer] = {}  # (device, storage ptr) -> buffer
        self._dead: collections.deque[_HandoutRef] = collections.deque()
        self._on_dead = self._dead.append

    # -- hot path ------------------------------------------------------------------------
    def acquire(self, category: str, shape: tuple[int, ...], dtype: torch.dtype,
                device: torch.device, priority: int = 0,
                lifetime: str = "temporary") -> tuple[torch.Tensor, bool]:
        """A tensor of ``shape`` (uninitialized memory) and whether it was a pool hit."""
        key = (category, shape, dtype, device)
        with self.lock:
            if self._dead:
                self._drain()
            c = self.counters.get(category)
            if c is None:
                c = self.counters[category] = CategoryCounters()
            buf = None
            free = self.free.get(key)
            if free:
                for i in range(len(free) - 1, -1, -1):
                    if _use_count(free[i].cdata) == _IDLE_USES:
                        buf = free.pop(i)
                        break
                    c.busy_skips += 1
            if buf is None:
                buf = Buffer(torch.empty(shape, dtype=dtype, device=device), key, priority, lifetime)
                self._known[(str(device), buf.storage.data_ptr())] = buf
                c.misses += 1
                hit = False
            else:
                c.held_bytes -= buf.nbytes
                buf.priority = priority
                buf.lifetime = lifetime
                c.hits += 1
                hit = True
            handout = buf.master.detach()
            hid = id(handout)
            stale = self._out.get(hid)
            if stale is not None:  # a dead handout whose id was reused before its callback ran
                self._reclaim(stale)
            ref = _HandoutRef(handout, self._on_dead)
            ref.buffer = buf
            ref.hid = hid
            self._out[hid] = ref
            c.acquisitions += 1
            c.live_bytes += buf.nbytes
            if c.live_bytes > c.peak_bytes:
                c.peak_bytes = c.live_bytes
        return handout, hit

    def release(self, tensor: torch.Tensor) -> str:
        """Take back a handout. Returns "ok", "double", "view" or "foreign" (only "ok" is kept)."""
        with self.lock:
            if self._dead:
                self._drain()
            ref = self._out.get(id(tensor))
            if ref is not None and ref() is tensor:
                del self._out[id(tensor)]
                buf = ref.buffer
                ref.buffer = None  # type: ignore[assignment]
                c = self.counters[buf.key[0]]
                c.releases += 1
                c.live_bytes -= buf.nbytes
                if tensor.requires_grad or tensor.grad_fn is not None:
                    c.autograd_returns += 1
                self._store(buf, c)
                return "ok"
            return self._refuse(tensor)

    # -- bookkeeping ---------------------------------------------------------------------
    def _refuse(self, tensor: torch.Tensor) -> str:
        try:
            ptr = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            ptr = None
        buf = self._known.get((str(tensor.device), ptr)) if ptr is not None else None
        if buf is None:
            kind = "view" if self._is_view_of_live(tensor) else "foreign"
        elif tensor._base is not None or tuple(tensor.shape) != buf.key[1]:
            kind = "view"
        else:
            kind = "double"
        cat = buf.key[0] if buf is not None else self.default_category
        c = self.counters.get(cat)
        if c is None:
            c = self.counters[cat] = CategoryCounters()
        setattr(c, f"{kind}_returns", getattr(c, f"{kind}_returns") + 1)
        return kind

    def _is_view_of_live(self, tensor: torch.Tensor) -> bool:
        base = tensor._base
        if base is None:
            return False
        ref = self._out.get(id(base))
        return ref is not None and ref() is base

    def _store(self, buf: Buffer, c: CategoryCounters) -> None:
        store = self.store_policy
        free = self.free.get(buf.key)
        if free is None:
            free = self.free[buf.key] = []
        keep = len(free) < self.max_per_key and (store is None or store(buf, free, c))
        if keep:
            self.free.setdefault(buf.key, []).append(buf)  # the policy may have replaced the list
            c.held_bytes += buf.nbytes
        else:
            self._known.pop((str(buf.key[3]), buf.storage.data_ptr()), None)
            c.dropped += 1

    def _forget(self, buf: Buffer, c: CategoryCounters, counter: str) -> None:
        """Let an idle buffer go (its memory is freed once nothing else references it)."""
        c.held_bytes -= buf.nbytes
        setattr(c, counter, getattr(c, counter) + 1)
        self._known.pop((str(buf.key[3]), buf.storage.data_ptr()), None)

    def _reclaim(self, ref: _HandoutRef) -> None:
        buf = ref.buffer
        if buf is None or self._out.get(ref.hid) is not ref:
            return
        del self._out[ref.hid]
        ref.buffer = None  # type: ignore[assignment]
        c = self.counters[buf.key[0]]
        c.reclaimed += 1
        c.live_bytes -= buf.nbytes
        self._store(buf, c)

    def _drain(self) -> None:
        while self._dead:
            self._reclaim(self._dead.popleft())

    # -- maintenance ---------------------------------------------------------------------
    def evict(self, predicate: Callable[[Buffer], bool], counter: str = "trimmed") -> int:
        """Let go of every idle buffer for which ``predicate`` is true; returns the bytes."""
        freed = 0
        with self.lock:
            for key, free in list(self.free.items()):
                keep = []
                for buf in free:
                    if predicate(buf):
                        self._forget(buf, self.counters[key[0]], counter)
                        freed += buf.nbytes
                    else:
                        keep.append(buf)
                if keep:
                    self.free[key] = keep
                else:
                    del self.free[key]
        return freed

    def evict_bytes(self, need: int, predicate: Callable[[Buffer], bool],
                    order: Callable[[Buffer], typing.Any], counter: str = "dropped") -> int:
        """Let idle buffers matching ``predicate`` go, in ``order``, until ``need`` bytes are freed."""
        with self.lock:
            candidates = sorted((b for free in self.free.values() for b in free if predicate(b)),
                                key=order)
            chosen: set[int] = set()
            freed = 0
            for b in candidates:
                if freed >= need:
                    break
                chosen.add(id(b))
                freed += b.nbytes
            if chosen:
                self.evict(lambda b: id(b) in chosen, counter)
            return freed

    def audit(self) -> dict[str, int]:
        """Counted versus actual state; a consistent cache has equal pairs."""
        with self.lock:
            return {
                "held_bytes_counted": sum(c.held_bytes for c in self.counters.values()),
                "held_bytes_actual": sum(b.nbytes for f in self.free.values() for b in f),
                "live_bytes_counted": sum(c.live_bytes for c in self.counters.values()),
                "live_bytes_actual": sum(r.buffer.nbytes for r in self._out.values()
                                         if r.buffer is not None and r() is not None),
                "longest_free_list": max((len(f) for f in self.free.values()), default=0),
                "pooled_buffers": sum(len(f) for f in self.free.values()),
            }

    def held_bytes(self) -> int:
        with self.lock:
            return sum(c.held_bytes for c in self.counters.values())

    def snapshot(self) -> dict[str, CategoryCounters]:
        """A consistent copy of every category's counters."""
        with self.lock:
            if self._dead:
                self._drain()
            return {k: dataclasses.replace(v) for k, v in self.counters.items()}

    def count_escaped(self, category: str, n: int = 1) -> None:
        with self.lock:
            c = self.counters.get(category)
            if c is None:
                c = self.counters[category] = CategoryCounters()
            c.escaped += n

    def live_handouts(self) -> int:
        with self.lock:
            return len(self._out)
