"""The allocation hook: where the model gets its per-step scratch tensors.

The model never imports the profiler. It asks a ``Workspace`` for scratch
tensors that carry no autograd history (index buffers, accumulators, noise,
masks) and hands them back with ``release`` once the forward pass is done
with them. The default ``TorchWorkspace`` simply calls ``torch.empty`` /
``torch.zeros`` and ignores ``release``; the profiler plugs a memory pool or
its category-aware manager in through the same four methods.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Workspace(Protocol):
    def empty(self, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device,
              category: str = "scratch") -> torch.Tensor: ...

    def zeros(self, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device,
              category: str = "scratch") -> torch.Tensor: ...

    def release(self, tensor: torch.Tensor) -> None: ...

    def end_step(self) -> None:
        """Called once per forward pass, after every scratch tensor was released."""

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Per category: hits, misses, held_bytes, live_bytes, peak_bytes, acquisitions, releases."""


class TorchWorkspace:
    """Plain torch allocation (the default); ``release`` is a no-op."""

    name = "off"

    def empty(self, shape, *, dtype, device, category="scratch"):
        return torch.empty(shape, dtype=dtype, device=device)

    def zeros(self, shape, *, dtype, device, category="scratch"):
        return torch.zeros(shape, dtype=dtype, device=device)

    def release(self, tensor):
        return None

    def end_step(self):
        return None

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Per-category pool statistics; plain allocation has none."""
        return {}
