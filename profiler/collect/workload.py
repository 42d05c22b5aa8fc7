"""The workload interface the profiler drives, and the built-in energy_flow workload.

Any model can be profiled through ``Workload``: one training step at a time,
with an optional ``on_phase(name)`` callback at the end of "forward",
"backward" and "optimizer" (the collector synchronizes the device and reads the
clock there; ``None`` means no callback and no synchronization at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol, runtime_checkable

import torch

PhaseCallback = Callable[[str], None]


@runtime_checkable
class Workload(Protocol):
    device: torch.device

    def step(self, index: int, on_phase: PhaseCallback | None) -> dict[str, Any]:
        """Run training step ``index``; return steps.csv fields (loss, skipped, samples, flows...)."""

    def role_tensors(self) -> dict[str, list[torch.Tensor]]:
        """Current parameters, gradients and optimizer state tensors, keyed by role."""

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """The memory pool's per-category statistics (empty without a pool)."""


class EnergyFlowWorkload:
    """``energy_flow.trainer.Trainer`` on ``SyntheticPairs`` batches (batch ``index`` for step ``index``)."""

    def __init__(self, config: Any, device: torch.device, workspace: Any | None) -> None:
        from energy_flow.data import SyntheticPairs
        from energy_flow.trainer import Trainer

        self.device = device
        self.config = config
        self.workspace = workspace
        self.trainer = Trainer(config, device, workspace)
        self.data = SyntheticPairs(embedding_dim=config.embedding_dim, seed=config.seed)

    def step(self, index: int, on_phase: PhaseCallback | None) -> dict[str, Any]:
        inputs, targets = self.data.batch(self.config.batch_size, index, self.device)
        result = asdict(self.trainer.train_step(inputs, targets, on_phase))
        result["skipped"] = int(result["skipped"])
        return result

    def role_tensors(self) -> dict[str, list[torch.Tensor]]:
        params = list(self.trainer.model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        state = [v for st in self.trainer.optimizer.state.values() for v in st.values()
                 if isinstance(v, torch.Tensor)]
        return {"parameter": params, "gradient": grads, "optimizer_state": state}

    def pool_stats(self) -> dict[str, dict[str, int]]:
        if self.workspace is None or not hasattr(self.workspace, "pool_stats"):
            return {}
        return self.workspace.pool_stats()


def make_energy_flow_workload(config: Any, device: torch.device, pool: str) -> EnergyFlowWorkload:
    """The built-in workload with the requested pool (``off`` = plain torch allocation)."""
    workspace = None
    if pool != "off":
        from profiler.memory import make_workspace

        workspace = make_workspace(pool, device)
    return EnergyFlowWorkload(config, device, workspace)
