"""The workload interface the profiler drives, the built-in energy_flow workload, and the
loader of ``--workload module:factory`` / ``--workload path/to/file.py:factory``.

Any model can be profiled through ``Workload``: one training step at a time,
with an optional ``on_phase(name)`` callback at the end of "forward",
"backward" and "optimizer" (the collector synchronizes the device and reads the
clock there; ``None`` means no callback and no synchronization at all).

Required: ``step(index, on_phase) -> dict`` (steps.csv fields: ``loss``, ``samples``
and any of your own, which become extra columns; tensors are read with ``.item()``).
Optional attributes and methods, used when present:

- ``module``: the ``nn.Module`` trained — per-module memory attribution (the region view
  by qualified name, forward and backward; ``--module-depth``);
- ``role_tensors()``: ``{"parameter": [...], "gradient": [...], "optimizer_state": [...]}``
  for the tensor-role view (default: from ``module``'s parameters and gradients);
- ``regions`` and ``region_prefix``: your own ``record_function`` scheme
  (``<prefix><region>`` scopes, listed even at 0 B; energy_flow: ``energy_flow.``);
  without a prefix every ``record_function`` scope of yours is a category by its name;
- ``pool_stats()``: a memory pool's per-category statistics (``--pool``, energy_flow).

Phases other than forward / backward / optimizer reported through ``on_phase`` are kept
as phase-end markers only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol, runtime_checkable

import torch

PhaseCallback = Callable[[str], None]


@runtime_checkable
class Workload(Protocol):
    """What a ``--workload`` factory returns (the optional members: module docstring)."""

    def step(self, index: int, on_phase: PhaseCallback | None) -> dict[str, Any]:
        """Run training step ``index``, calling ``on_phase(name)`` at the end of each phase
        when it is not None; return steps.csv fields (loss, samples, your own columns)."""


class EnergyFlowWorkload:
    """``energy_flow.trainer.Trainer`` on ``SyntheticPairs`` batches (batch ``index`` for step ``index``)."""

    region_prefix = "energy_flow."  # its record_function scopes: energy_flow.<region>
    module = None  # the named regions are its region view (no per-module scopes)

    def __init__(self, config: Any, device: torch.device, workspace: Any | None) -> None:
        from energy_flow.data import SyntheticPairs
        from energy_flow.regions import REGION_PREFIX, REGIONS
        from energy_flow.trainer import Trainer

        self.regions = REGIONS
        self.region_prefix = REGION_PREFIX

        self.device = device
        self.config = config
        self.workspace = workspace
        self.trainer = Trainer(config, device, workspace)
        self.data = SyntheticPairs(embedding_dim=config.embedding_dim, seed=config.seed)
        # Under torch.distributed (world > 1): the model in DistributedDataParallel, and
        # rank r of W trains on batches r, W + r, 2W + r, ... (its own shard; the batch
        # size is per rank).
        self.rank, self.world_size = 0, 1
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            ids = [device.index or 0] if device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.trainer.model,
                                                                 device_ids=ids)
            self.trainer.model = self.ddp  # type: ignore[assignment]  # same interface

    def step(self, index: int, on_phase: PhaseCallback | None) -> dict[str, Any]:
        shard = index * self.world_size + self.rank
        inputs, targets = self.data.batch(self.config.batch_size, shard, self.device)
        result = asdict(self.trainer.train_step(inputs, targets, on_phase))
        result["skipped"] = int(result["skipped"])
        return result

    def role_tensors(self) -> dict[str, list[torch.Tensor]]:
        params: list[torch.Tensor] = list(self.trainer.model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        state = [v for st in self.trainer.optimizer.state.values() for v in st.values()
                 if isinstance(v, torch.Tensor)]
        return {"parameter": params, "gradient": grads, "optimizer_state": state}

    def pool_stats(self) -> dict[str, dict[str, int]]:
        if self.workspace is None or not hasattr(self.workspace, "pool_stats"):
            return {}
        return self.workspace.pool_stats()


def role_tensors_of(workload: Any) -> dict[str, list[torch.Tensor]]:
    """``workload.role_tensors()``, else parameters and gradients of ``workload.module``."""
    fn = getattr(workload, "role_tensors", None)
    if fn is not None:
        return fn()
    module = getattr(workload, "module", None)
    if module is None:
        return {}
    params: list[torch.Tensor] = list(module.parameters())
    return {"parameter": params, "gradient": [p.grad for p in params if p.grad is not None]}


class WorkloadLoadError(ValueError):
    """A ``--workload`` spec that cannot be loaded (the message names the problem)."""


def load_factory(spec: str) -> Callable[..., Any]:
    """The factory named by ``module.path:function`` or ``path/to/file.py:function``."""
    import importlib
    import importlib.util
    from pathlib import Path

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise WorkloadLoadError(f"--workload {spec!r}: expected module:factory or "
                                f"path/to/file.py:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise WorkloadLoadError(f"--workload {spec!r}: no file {path}")
        name = f"profiler_workload_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise WorkloadLoadError(f"--workload {spec!r}: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise WorkloadLoadError(f"--workload {spec!r}: importing {path} failed: "
                                    f"{type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise WorkloadLoadError(f"--workload {spec!r}: cannot import {target}: {exc}") \
                from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WorkloadLoadError(f"--workload {spec!r}: {target} has no callable {attr!r}")
    return factory


def custom_workload(spec: str) -> Callable[[Any, torch.device, str], Any]:
    """A session ``make_workload`` calling the user's ``factory(device)``, checked."""
    factory = load_factory(spec)

    def make(config: Any, device: torch.device, pool: str) -> Any:
        workload = factory(device)
        if not callable(getattr(workload, "step", None)):
            raise WorkloadLoadError(f"--workload {spec!r}: the factory returned "
                                    f"{type(workload).__name__}, which has no step(index, "
                                    f"on_phase) method")
        return workload

    return make


def make_energy_flow_workload(config: Any, device: torch.device, pool: str) -> EnergyFlowWorkload:
    """The built-in workload with the requested pool (``off`` = plain torch allocation)."""
    workspace = None
    if pool != "off":
        from profiler.memory import make_workspace

        workspace = make_workspace(pool, device)
    return EnergyFlowWorkload(config, device, workspace)
