"""Trainer: AdamW with accumulation, two-stage clipping, bf16 autocast on CUDA, checkpoints."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from energy_flow.config import EnergyConfig
from energy_flow.flow import NonFiniteFlows
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


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps were skipped; the message names the first cause."""


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
    cause: str | None = None  # why the step was skipped (None when it was not)
    surface_loss: float = math.nan  # the MSE part of loss
    completion_loss: float = math.nan  # mean distance to a plane at the end (unweighted)


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
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        for group in self.optimizer.param_groups:
            group["target_lr"] = group["lr"]  # the lr after warm-up (``_warm_up``)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer)
        self.step = 0
        self.skipped_steps = 0
        self.optimizer_steps = 0
        self._micro = 0  # micro-steps accumulated since the last optimizer step
        self.consecutive_skips = 0
        self.last_cause: str | None = None  # why the latest skipped step was skipped
        self._first_cause: str | None = None  # first cause of the current run of skipped steps

    def _param_groups(self) -> list[dict]:
        """Two groups: the displacement head's output layer at lr * displacement_lr_scale, the
        rest at lr. With one lr for all, Adam moves that layer by ~lr per step on gradients that
        are tiny and mostly noise, and flows drift across cells in x/y (measured in README)."""
        head = {id(p) for p in self.model.carrier.displacement_out.parameters()}
        moving = [p for p in self.params if id(p) in head]
        rest = [p for p in self.params if id(p) not in head]
        groups = [{"params": rest}]
        if moving:
            groups.append({"params": moving, "lr": self.config.lr * self.config.displacement_lr_scale})
        return groups

    def _autocast(self):
        if self.device.type == "cuda" and self.config.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, inputs: Tensor, targets: Tensor,
                   on_phase: Callable[[str], None] | None = None) -> StepResult:
        """One micro-step. A non-finite loss, gradient, flow position or energy skips the step
        (counted); non-finite weights after an update skip it too. After
        ``max_consecutive_skips`` skipped steps in a row, TrainingDiverged names the cause."""
        phase = on_phase if on_phase is not None else (lambda name: None)
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.model.train()
        step = self.step + 1
        cause, out = None, None
        try:
            with self._autocast():
                out = self.model(inputs, targets)
        except NonFiniteFlows as exc:
            cause = f"{exc.what} became non-finite at step {step} (lattice step {exc.step})"
        phase("forward")
        loss_value = surface_value = completion_value = math.nan
        if out is not None:
            loss = out.loss.float() / self.config.grad_accumulation
            loss_value, surface_value, completion_value = torch.stack(  # one host sync
                [out.loss.detach().float(), out.surface_loss.detach().float(),
                 out.completion_loss.detach().float()]).tolist()
            if math.isfinite(loss_value):
                with region("backward"):
                    loss.backward()
            else:
                cause = f"loss became non-finite at step {step}"
        phase("backward")
        grad_norm, stepped = None, False
        with region("optimizer"):
            if cause is None:
                self._micro += 1
                if self._micro >= self.config.grad_accumulation:
                    grad_norm = self._clip()
                    if not math.isfinite(grad_norm):
                        cause = f"gradients became non-finite at step {step}"
                    else:
                        self._warm_up()
                        self.optimizer.step()
                        self.optimizer_steps += 1
                        stepped = True
                        self.optimizer.zero_grad(set_to_none=True)
                        self._micro = 0
                        if not math.isfinite(self.weight_peak()):
                            cause = f"weights became non-finite at step {step}"
            if cause is not None:
                self._discard()
        phase("optimizer")
        self.step = step
        self._track_skips(cause)
        stats = out.stats if out is not None else None
        return StepResult(
            step=self.step, loss=loss_value, skipped=cause is not None,
            samples=inputs.shape[0],
            flows_created=stats.flows_created if stats else 0,
            flows_completed=stats.flows_completed if stats else 0,
            flows_live_peak=stats.flows_live_peak if stats else 0,
            steps_taken=stats.steps_taken if stats else 0,
            flow_steps=stats.flow_steps if stats else 0, grad_norm=grad_norm,
            lr=self.optimizer.param_groups[0]["lr"], optimizer_stepped=stepped, cause=cause,
            surface_loss=surface_value, completion_loss=completion_value,
        )

    def weight_peak(self) -> float:
        """Largest |weight| over the trained parameters (inf or nan when one is non-finite)."""
        if not self.params:
            return 0.0
        peaks = torch._foreach_norm([p.detach() for p in self.params], math.inf)
        return float(torch.stack(peaks).max())

    def _track_skips(self, cause: str | None) -> None:
        if cause is None:
            self.consecutive_skips, self._first_cause = 0, None
            return
        self.consecutive_skips += 1
        self.last_cause = cause
        if self._first_cause is None:
            self._first_cause = cause
        limit = self.config.max_consecutive_skips
        if limit and self.consecutive_skips >= limit:
            peak = self.weight_peak()
            hint = "lr too high?" if not math.isfinite(peak) or peak > 1e6 else "bad data?"
            raise TrainingDiverged(
                f"{self._first_cause}: {hint} (largest |weight| {peak:.3g}, lr "
                f"{self.optimizer.param_groups[0]['lr']:g}; stopped after "
                f"{self.consecutive_skips} consecutive skipped steps)")

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

    def _warm_up(self) -> None:
        """Set each group's lr for the coming optimizer step: during the first ``lr_warmup``
        steps a linear ramp (k / lr_warmup of the group's lr for the k-th step)."""
        warmup = self.config.lr_warmup
        if self.optimizer_steps > warmup or not warmup:
            return
        fraction = min(1.0, (self.optimizer_steps + 1) / warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = group["target_lr"] * fraction

    def end_epoch(self, metric: float) -> None:
        before = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step(metric)
        for group, old in zip(self.optimizer.param_groups, before, strict=True):
            if group["lr"] != old and old > 0:  # a plateau cut also lowers the warm-up's goal
                group["target_lr"] *= group["lr"] / old

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
        """Write the checkpoint atomically (temporary file, then rename). It is serialized in
        memory first: torch's zip writer turns a failed write (a full disk) into an internal
        assertion ("unexpected pos"), while a plain write of the bytes raises the OSError
        that names the cause."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load a checkpoint written by ``save_checkpoint``. Everything is checked before
        anything is loaded; a damaged file raises ``CheckpointError`` with one line naming
        the file and the field or tensors at fault (weights holding NaN / inf included)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__}"
                                  f"{_first_line(exc)})") from None
        problem = self._checkpoint_problem(state)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        for what, load in (("model", self.model.load_state_dict),
                           ("optimizer", self.optimizer.load_state_dict),
                           ("scheduler", self.scheduler.load_state_dict)):
            try:
                load(state[what])
            except Exception as exc:
                raise CheckpointError(f"{path}: field {what!r} cannot be loaded "
                                      f"({type(exc).__name__}{_first_line(exc)})") from None
        for group in self.optimizer.param_groups:  # a checkpoint from before the warm-up
            group.setdefault("target_lr", group["lr"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._micro = 0

    def _checkpoint_problem(self, state: object) -> str | None:
        """What is wrong with a loaded checkpoint object, or None."""
        if not isinstance(state, dict):
            return f"not an energy_flow checkpoint (a {type(state).__name__}, not a dict)"
        missing = [k for k in _CHECKPOINT_FIELDS if k not in state]
        if missing:
            return f"not an energy_flow checkpoint: missing field(s) {', '.join(missing)}"
        version = state.get("version", CHECKPOINT_VERSION)
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            return (f"field 'version' is {version!r}; this code reads checkpoints up to "
                    f"version {CHECKPOINT_VERSION}")
        for key in ("config", "model", "optimizer", "scheduler"):
            if not isinstance(state[key], dict):
                return f"field {key!r} must be a dict, got {type(state[key]).__name__}"
        for key in ("step", "skipped_steps", "optimizer_steps"):
            value = state.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"field {key!r} must be a non-negative integer, got {value!r}"
        saved, mine = state["config"], self.config.to_dict()
        mismatches = [f"{name}: checkpoint {saved.get(name)!r} != config {mine[name]!r}"
                      for name in CRITICAL_FIELDS if saved.get(name) != mine[name]]
        if mismatches:
            return "config mismatch: " + "; ".join(mismatches)
        weights = state["model"]
        expected = self.model.state_dict()
        if any(not isinstance(v, Tensor) for v in weights.values()):
            bad = [str(k) for k, v in weights.items() if not isinstance(v, Tensor)]
            return f"field 'model': not tensors: {_names(bad)}"
        lacking = [k for k in expected if k not in weights]
        extra = [str(k) for k in weights if k not in expected]
        if lacking or extra:
            parts = ([f"missing tensor(s) {_names(lacking)}"] if lacking else []) + (
                [f"unexpected tensor(s) {_names(extra)}"] if extra else [])
            return "field 'model': " + "; ".join(parts)
        shapes = [f"{k} {list(weights[k].shape)} (model {list(v.shape)})"
                  for k, v in expected.items() if weights[k].shape != v.shape]
        if shapes:
            return f"field 'model': tensor(s) of the wrong shape: {_names(shapes)}"
        nonfinite = [k for k, v in weights.items() if not _finite(v)]
        if nonfinite:
            return f"field 'model': NaN / inf in tensor(s) {_names(nonfinite)}"
        return self._optimizer_problem(state["optimizer"])

    def _optimizer_problem(self, opt: dict) -> str | None:
        groups, own = opt.get("param_groups"), self.optimizer.state_dict()["param_groups"]
        if not isinstance(groups, list) or not isinstance(opt.get("state"), dict):
            return "field 'optimizer' lacks its 'state' dict or 'param_groups' list"
        if [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups] != [
                len(g["params"]) for g in own]:
            return (f"field 'optimizer': {len(groups)} parameter group(s) do not match the "
                    f"model's {len(own)} group(s) of {[len(g['params']) for g in own]} tensors")
        params = {i: p for g, mine in zip(groups, own, strict=True)
                  for i, p in zip(g["params"], [self._param(j) for j in mine["params"]],
                                  strict=True)}
        bad_shape, bad_values = [], []
        for index, entries in opt["state"].items():
            param = params.get(index)
            if param is None or not isinstance(entries, dict):
                return f"field 'optimizer': state for unknown parameter {index!r}"
            for name, value in entries.items():
                if not isinstance(value, Tensor):
                    continue
                label = f"state[{index}].{name}"
                if value.dim() > 0 and value.shape != param.shape:
                    bad_shape.append(f"{label} {list(value.shape)} (parameter "
                                     f"{list(param.shape)})")
                elif not _finite(value):
                    bad_values.append(label)
        if bad_shape:
            return f"field 'optimizer': tensor(s) of the wrong shape: {_names(bad_shape)}"
        if bad_values:
            return f"field 'optimizer': NaN / inf in tensor(s) {_names(bad_values)}"
        return None

    def _param(self, index: int) -> Tensor:
        return [p for g in self.optimizer.param_groups for p in g["params"]][index]


_CHECKPOINT_FIELDS = ("config", "model", "optimizer", "scheduler", "step", "skipped_steps")


def _finite(tensor: Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _names(items: list[str], most: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f": {text.splitlines()[0][:200]}" if text else ""
