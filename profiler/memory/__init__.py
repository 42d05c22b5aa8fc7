"""Memory pools, scoped allocation, the category-aware manager and the pressure monitor.

The public names are those of the user's memory-management notes:
``SimpleMemoryPool``, ``MemoryContext``, ``managed_memory``,
``UnifiedMemoryManager``, ``UnifiedMemoryConfig``, ``MemoryMonitor``,
``MemoryOptimizer``, ``MemoryProfiler``. ``make_workspace`` plugs a pool into
the model's allocation hook (``energy_flow.workspace``).
"""

from __future__ import annotations

import torch

from energy_flow.workspace import TorchWorkspace, Workspace
from profiler.memory.managed import managed_memory
from profiler.memory.manager import (
    LIFETIMES,
    MemoryPriority,
    UnifiedMemoryConfig,
    UnifiedMemoryManager,
)
from profiler.memory.monitor import Alert, MemoryMonitor, MemoryOptimizer, MonitorConfig
from profiler.memory.pool import MemoryContext, SimpleMemoryPool
from profiler.memory.profiling import MemoryProfiler
from profiler.memory.workspace import ManagedWorkspace, PoolWorkspace

WORKSPACE_KINDS = ("off", "simple", "managed")
PRESSURE_CHECK_EVERY = 10  # end_step calls between pressure checks of the managed workspace


def make_workspace(kind: str, device: torch.device | str | None = None) -> Workspace:
    """The model's allocation hook for ``kind`` in ("off", "simple", "managed")."""
    if kind == "off":
        return TorchWorkspace()
    if kind == "simple":
        return PoolWorkspace(SimpleMemoryPool(device=device))
    if kind == "managed":
        manager = UnifiedMemoryManager(UnifiedMemoryConfig(), device=device)
        monitor = MemoryMonitor(MonitorConfig(), device=device)
        return ManagedWorkspace(manager, MemoryOptimizer(monitor, [manager]),
                                check_every=PRESSURE_CHECK_EVERY)
    raise ValueError(f"unknown workspace kind {kind!r}; choose one of {', '.join(WORKSPACE_KINDS)}")


__all__ = [
    "LIFETIMES", "WORKSPACE_KINDS", "Alert", "ManagedWorkspace", "MemoryContext",
    "MemoryMonitor", "MemoryOptimizer", "MemoryPriority", "MemoryProfiler", "MonitorConfig",
    "PoolWorkspace", "SimpleMemoryPool", "UnifiedMemoryConfig", "UnifiedMemoryManager",
    "make_workspace", "managed_memory",
]
