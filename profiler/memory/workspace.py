"""Adapters from the pools to the model's allocation hook (``energy_flow.workspace.Workspace``)."""

from __future__ import annotations

from profiler.memory.manager import POOL_STAT_KEYS, UnifiedMemoryManager
from profiler.memory.monitor import MemoryOptimizer
from profiler.memory.pool import POOL_CATEGORY, SimpleMemoryPool


class PoolWorkspace:
    """The model's scratch tensors from a ``SimpleMemoryPool`` (one category: "all")."""

    name = "simple"

    def __init__(self, pool: SimpleMemoryPool):
        self.pool = pool

    def empty(self, shape, *, dtype, device, category="scratch"):
        return self.pool.get_tensor(shape, dtype=dtype, device=device)

    def zeros(self, shape, *, dtype, device, category="scratch"):
        return self.pool.get_tensor(shape, dtype=dtype, device=device, zero=True)

    def release(self, tensor):
        self.pool.return_tensor(tensor)

    def end_step(self):
        return None

    def pool_stats(self) -> dict[str, dict[str, int]]:
        s = self.pool.stats()
        return {POOL_CATEGORY: {k: int(s[k]) for k in POOL_STAT_KEYS}}


class ManagedWorkspace:
    """The model's scratch tensors from a ``UnifiedMemoryManager``.

    The model's ``category`` becomes the manager's category; lifetime is
    ``temporary``. With an optimizer, every ``check_every``-th ``end_step``
    checks memory pressure and trims the pools accordingly.
    """

    name = "managed"

    def __init__(self, manager: UnifiedMemoryManager, optimizer: MemoryOptimizer | None = None,
                 check_every: int = 0):
        if check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {check_every}")
        self.manager = manager
        self.optimizer = optimizer
        self.check_every = check_every
        self.steps = 0

    def empty(self, shape, *, dtype, device, category="scratch"):
        return self.manager.acquire_tensor(shape, dtype=dtype, device=device, category=category)

    def zeros(self, shape, *, dtype, device, category="scratch"):
        return self.manager.acquire_tensor(shape, dtype=dtype, device=device, category=category,
                                           zero=True)

    def release(self, tensor):
        self.manager.release_tensor(tensor)

    def end_step(self):
        self.steps += 1
        if self.optimizer is not None and self.check_every and self.steps % self.check_every == 0:
            self.optimizer.optimize()

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return self.manager.pool_stats()
