"""``UnifiedMemoryManager``: a category-aware pool with lifetimes, priorities and budgets.

    manager = UnifiedMemoryManager(UnifiedMemoryConfig(category_budgets={"carrier": 256 << 20}))
    t = manager.acquire_tensor((100, 32), category="carrier", priority=MemoryPriority.LOW)
    manager.release_tensor(t)
    with manager.allocate_context(category="spawn") as ctx:
        a = ctx.allocate((50, 64))

Lifetimes decide what a release does with the memory:
- ``temporary``: kept idle for reuse (the usual case for per-step scratch);
- ``cached``: kept idle too, but the first to go under memory pressure;
- ``persistent``: lives for the run; its release frees the memory instead of pooling it.

Priorities (``MemoryPriority``) order what goes first when a budget is exceeded
or pressure rises: lower priority first; ``CRITICAL`` idle memory is kept until
every pool is emptied. Budgets cap the *idle* bytes a category (and the whole
manager) keeps; live tensors are never taken away. Thread-safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from profiler.memory.cache import Buffer, CategoryCounters, TensorCache
from profiler.memory.pool import DeviceResolver, MemoryContext, normalize_shape

LIFETIMES = ("temporary", "persistent", "cached")
POOL_STAT_KEYS = ("hits", "misses", "held_bytes", "live_bytes", "peak_bytes", "acquisitions",
                  "releases")


class MemoryPriority:
    LOW = -1
    NORMAL = 0
    HIGH = 1
    CRITICAL = 2


@dataclass(frozen=True)
class UnifiedMemoryConfig:
    """Configuration of a ``UnifiedMemoryManager``. Byte budgets cap idle (pooled) memory."""

    enabled: bool = True                 # False: every request allocates, nothing is pooled
    max_tensors_per_key: int = 8         # idle tensors kept per (category, shape, dtype, device)
    category_budgets: Mapping[str, int] = field(default_factory=dict)  # idle bytes per category
    default_budget_bytes: int | None = None  # categories without an entry; None = no cap
    total_budget_bytes: int | None = None    # idle bytes over all categories; None = no cap
    default_category: str = "general"

    def __post_init__(self) -> None:
        if not isinstance(self.max_tensors_per_key, int) or self.max_tensors_per_key < 0:
            raise ValueError(
                f"max_tensors_per_key must be an integer >= 0, got {self.max_tensors_per_key!r}")
        for name in ("default_budget_bytes", "total_budget_bytes"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be None or an integer >= 0, got {v!r}")
        for cat, v in dict(self.category_budgets).items():
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"category_budgets[{cat!r}] must be an integer >= 0, got {v!r}")
        if not self.default_category or not isinstance(self.default_category, str):
            raise ValueError(f"default_category must be a non-empty string, got {self.default_category!r}")


class UnifiedMemoryManager:
    """Pools per category with lifetimes, priorities and byte budgets. See the module docstring."""

    def __init__(self, config: UnifiedMemoryConfig | None = None,
                 device: torch.device | str | None = None):
        self.config = config or UnifiedMemoryConfig()
        per_key = self.config.max_tensors_per_key if self.config.enabled else 0
        self._cache = TensorCache(per_key, default_category=self.config.default_category,
                                  store=self._keep)
        self._devices = DeviceResolver(device)
        self._budgets = dict(self.config.category_budgets)

    @property
    def device(self) -> torch.device:
        return self._devices.default

    # -- the user's API ------------------------------------------------------------------
    def acquire_tensor(self, shape: Any, dtype: torch.dtype = torch.float32,
                       category: str | None = None, lifetime: str = "temporary",
                       priority: int = MemoryPriority.NORMAL,
                       device: torch.device | str | None = None,
                       zero: bool = False) -> torch.Tensor:
        """A tensor of ``shape`` (uninitialized unless ``zero=True``) charged to ``category``."""
        if lifetime not in LIFETIMES:
            raise ValueError(f"lifetime must be one of {LIFETIMES}, got {lifetime!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an integer (MemoryPriority), got {priority!r}")
        tensor, _ = self._cache.acquire(category or self.config.default_category,
                                        normalize_shape(shape), dtype,
                                        self._devices.resolve(device), priority, lifetime)
        if zero:
            tensor.zero_()
        return tensor

    def release_tensor(self, tensor: torch.Tensor | None) -> bool:
        """Give a tensor back; True when accepted (refusals are counted per category)."""
        if tensor is None:
            return False
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"release_tensor expects a torch.Tensor, got {type(tensor).__name__}")
        return self._cache.release(tensor) == "ok"

    def allocate_context(self, **defaults: Any) -> MemoryContext:
        """``with manager.allocate_context(category=...) as ctx: ctx.allocate(shape)``."""
        return MemoryContext(self, **defaults)

    def get_stats(self) -> dict[str, dict[str, int | float]]:
        """Per category: live/held/peak bytes, hit rate, acquisitions, releases, safety counts."""
        return {cat: c.as_dict() for cat, c in sorted(self._cache.snapshot().items())}

    def summary(self) -> dict[str, int | float]:
        """The per-category counters summed (peak_bytes is the sum of per-category peaks)."""
        total = CategoryCounters()
        for c in self._cache.snapshot().values():
            for f in dataclasses.fields(c):
                setattr(total, f.name, getattr(total, f.name) + getattr(c, f.name))
        return total.as_dict()

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """The workspace contract: per category hits, misses, held/live/peak bytes, counts."""
        return {cat: {k: int(getattr(c, k)) for k in POOL_STAT_KEYS}
                for cat, c in sorted(self._cache.snapshot().items())}

    def release_low_priority(self, below: int = MemoryPriority.NORMAL) -> int:
        """Free idle memory whose priority is below ``below``; returns the bytes."""
        return self._cache.evict(lambda b: b.priority < below)

    def trim(self, level: str = "moderate") -> int:
        """"moderate": free cached and low-priority idle memory; "critical": empty every pool."""
        if level == "critical":
            return self.empty_pools()
        if level != "moderate":
            raise ValueError(f"level must be 'moderate' or 'critical', got {level!r}")
        return self._cache.evict(
            lambda b: b.priority < MemoryPriority.NORMAL
            or (b.lifetime == "cached" and b.priority < MemoryPriority.CRITICAL))

    def empty_pools(self) -> int:
        """Let every idle tensor go; returns the bytes released."""
        return self._cache.evict(lambda b: True)

    def held_bytes(self) -> int:
        return self._cache.held_bytes()

    def audit(self) -> dict[str, int]:
        """Counted versus actual idle/live bytes and the longest idle list (see TensorCache)."""
        return self._cache.audit()

    # -- budgets -------------------------------------------------------------------------
    def _keep(self, buf: Buffer, free: list, c: CategoryCounters) -> bool:
        if buf.lifetime == "persistent":
            return False
        category = buf.key[0]
        budget = self._budgets.get(category, self.config.default_budget_bytes)
        if budget is not None and c.held_bytes + buf.nbytes > budget:
            self._make_room(c.held_bytes + buf.nbytes - budget, buf,
                            lambda b: b.key[0] == category)
            if c.held_bytes + buf.nbytes > budget:
                return False
        total = self.config.total_budget_bytes
        if total is not None:
            held = sum(x.held_bytes for x in self._cache.counters.values())
            if held + buf.nbytes > total:
                self._make_room(held + buf.nbytes - total, buf, lambda b: True)
                if sum(x.held_bytes for x in self._cache.counters.values()) + buf.nbytes > total:
                    return False
        return True

    def _make_room(self, need: int, incoming: Buffer, scope: Any) -> None:
        """Evict idle buffers in ``scope`` ranked no higher than ``incoming``: cached, then low first."""
        self._cache.evict_bytes(
            need,
            lambda b: scope(b) and b.priority <= incoming.priority,
            lambda b: (b.lifetime != "cached", b.priority),
        )

    # -- used by MemoryContext and managed_memory ----------------------------------------
    def _scoped_acquire(self, shape: Any, dtype: torch.dtype, device: Any, zero: bool,
                        category: str | None = None, lifetime: str = "temporary",
                        priority: int = MemoryPriority.NORMAL) -> torch.Tensor:
        return self.acquire_tensor(shape, dtype=dtype, category=category, lifetime=lifetime,
                                   priority=priority, device=device, zero=zero)

    def _scoped_release(self, tensor: torch.Tensor) -> bool:
        return self.release_tensor(tensor)

    def _count_escaped(self, n: int, category: str | None = None, **_: Any) -> None:
        self._cache.count_escaped(category or self.config.default_category, n)
