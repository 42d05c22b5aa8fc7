"""Trainer: AdamW with accumulation, two-stage clipping, bf16 autocast on CUDA, checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from energy_flow.config import EnergyConfig
from energy_flow.model import EnergyFlowModel
from energy_flow.regions import region
from energy_flow.runtime import atomic_write
from energy_flow.workspace import Workspace

CHECKPOINT_VERSION = 1
# Fields that change parameter shapes: a checkpoint is only loadable when they match.
CRITICAL_FIELDS = (
    "lattice_width", "lattice_height", "lattice_depth", "carrier_hidden", "carrier_layers",
    "neuron_hidden", "neuron_output", "embedding_dim", "mapper_hidden", "position_memory",
    "position_history",
)


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded into this trainer; the message names each problem."""


@dataclass
class StepResult:
    """One training micro-step."""

    step: int
    loss: float
    skipped: bool
    samples: int
    flows_created: int
    flows_completed: int
    flows_live_peak: int
    steps_taken: int
    flow_steps: int
    grad_norm: float | None
    lr: float
    optimizer_stepped: bool


class Trainer:
    def __init__(self, config: EnergyConfig, device: str | torch.device = "cpu",
                 workspace: Workspace | None = None):
        self.config = config
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        self.model = EnergyFlowModel(config, workspace).to(self.device)
        self.model.train()
        self.params = self.model.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer)
        self.step = 0
        self.skipped_steps = 0
        self.optimizer_steps = 0
        self._micro = 0  # micro-steps accumulated since the last optimizer step

    def _autocast(self):
        if self.device.type == "cuda" and self.config.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, inputs: Tensor, targets: Tensor,
                   on_phase: Callable[[str], None] | None = None) -> StepResult:
        phase = on_phase if on_phase is not None else (lambda name: None)
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.model.train()
        with self._autocast():
            out = self.model(inputs, targets)
        loss = out.loss.float() / self.config.grad_accumulation
        phase("forward")
        loss_value = float(loss.detach()) * self.config.grad_accumulation
        finite = math.isfinite(loss_value)
        if finite:
            with region("backward"):
                loss.backward()
        phase("backward")
        grad_norm, stepped = None, False
        with region("optimizer"):
            if not finite:
                self._discard()
            else:
                self._micro += 1
                if self._micro >= self.config.grad_accumulation:
                    grad_norm = self._clip()
                    if math.isfinite(grad_norm):
                        self.optimizer.step()
                        self.optimizer_steps += 1
                        stepped = True
                        self.optimizer.zero_grad(set_to_none=True)
                        self._micro = 0
                    else:
                        finite = False
                        self._discard()
        phase("optimizer")
        self.step += 1
        stats = out.stats
        return StepResult(
            step=self.step, loss=loss_value, skipped=not finite, samples=inputs.shape[0],
            flows_created=stats.flows_created, flows_completed=stats.flows_completed,
            flows_live_peak=stats.flows_live_peak, steps_taken=stats.steps_taken,
            flow_steps=stats.flow_steps, grad_norm=grad_norm,
            lr=self.optimizer.param_groups[0]["lr"], optimizer_stepped=stepped,
        )

    def _discard(self) -> None:
        """A non-finite loss or gradient: drop the accumulated gradients and count the step."""
        self.optimizer.zero_grad(set_to_none=True)
        self._micro = 0
        self.skipped_steps += 1

    def _clip(self) -> float:
        """Per-parameter grad-norm clip, then the global clip; returns the global norm before it."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        norms = torch._foreach_norm(grads)
        limit = self.config.param_clip
        scales = [torch.clamp(limit / (n + 1e-6), max=1.0) for n in norms]
        torch._foreach_mul_(grads, scales)
        total = torch.nn.utils.clip_grad_norm_(self.params, self.config.global_clip)
        return float(total)

    def end_epoch(self, metric: float) -> None:
        self.scheduler.step(metric)

    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "optimizer_steps": self.optimizer_steps,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        atomic_write(path, lambda handle: torch.save(state, handle))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__})") \
                from None
        if not isinstance(state, dict) or "config" not in state or "model" not in state:
            raise CheckpointError(f"{path}: not an energy_flow checkpoint (no config/model)")
        saved = state["config"]
        mine = self.config.to_dict()
        mismatches = [
            f"{name}: checkpoint {saved.get(name)!r} != config {mine[name]!r}"
            for name in CRITICAL_FIELDS if saved.get(name) != mine[name]
        ]
        if mismatches:
            raise CheckpointError(f"{path}: config mismatch: " + "; ".join(mismatches))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._micro = 0
