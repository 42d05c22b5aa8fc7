"""One frozen configuration dataclass for the energy_flow model, and its presets.

Build a config once at the entry point (``make_config("debug", batch_size=4)``)
and pass it explicitly to every constructor. Nothing here touches a device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

ROUNDING_CHOICES = ("loop", "broadcast", "arithmetic")
FLOW_INIT_CHOICES = ("loop", "batched")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


# (field, lower bound, bound excluded): numeric options refused outside their range.
_RANGES = (
    ("lr", 0, False), ("weight_decay", 0, False), ("param_clip", 0, True),
    ("global_clip", 0, True), ("gru_clamp", 0, True), ("convergence_threshold", 0, False),
    ("convergence_min_steps", 0, False), ("convergence_patience", 0, False),
    ("cleanup_threshold_bytes", 0, False), ("seed", 0, False),
)


@dataclass(frozen=True)
class EnergyConfig:
    preset: str = "debug"
    # lattice: x in [0, W-1], y in [0, H-1], z in [0, D]
    lattice_width: int = 20
    lattice_height: int = 20
    lattice_depth: int = 10
    batch_size: int = 8
    max_flows: int = 50_000  # capacity: most live flows at once
    carrier_hidden: int = 256
    carrier_layers: int = 2
    neuron_hidden: int = 32
    neuron_output: int = 64
    max_steps: int | None = None  # None -> lattice_depth // 2
    spawn_threshold: float = 0.15  # normalized movement length
    max_spawn_per_step: int = 1
    # Spawn budget: the most children made in one forward pass, as a multiple of the initial
    # flows B*S (the live set never exceeds (1 + spawn_budget) * B*S, nor max_flows).
    spawn_budget: float = 0.25
    # Initial z drift of the displacement head (normalized units per lattice step, toward the
    # z = +1 plane); None -> 1.1 / (steps_limit - 1), at most 0.5: an untrained carrier reaches
    # the plane one step before the step limit.
    plane_drift: float | None = None
    exploration_noise: float = 0.01  # std, training mode only
    convergence_threshold: float = 0.8
    convergence_min_steps: int = 3
    convergence_patience: int = 5
    grad_accumulation: int = 1
    embedding_dim: int = 768
    mapper_hidden: int = 512
    mapper_trainable: bool = False
    lr: float = 1e-3
    # Linear learning-rate warm-up over this many optimizer steps (0 = none): Adam's first
    # updates move every weight by ~lr whatever its gradient; see README, "Learning".
    lr_warmup: int = 0
    # Completion term of the loss: weight of the mean distance to the nearer plane of the flows
    # still inside at the end (completed flows count 0), over all flows created; 0 = MSE only.
    completion_weight: float = 1.0
    # Learning rate of the displacement head's output layer, as a multiple of lr; 0 keeps it
    # at its initialisation (a straight drift to the plane): see README, "Learning".
    displacement_lr_scale: float = 0.0
    weight_decay: float = 1e-5
    param_clip: float = 1.0  # per-parameter grad-norm clip
    global_clip: float = 0.1  # then global grad-norm clip
    autocast: bool = True  # bf16 autocast on CUDA (GRU stays fp32); fp32 on CPU regardless
    gru_clamp: float = 10.0  # GRU inputs/outputs sanitized and clamped to +-gru_clamp
    boundary_reflection: bool = True
    movement_spawning: bool = True
    position_memory: bool = True
    position_history: int = 5
    cleanup_interval: int = 10  # lattice steps between cleanup_memory_safe calls; 0 = never
    cleanup_threshold_bytes: int = 20 * 2**30  # release cached device memory above this
    rounding: str = "arithmetic"  # loop | broadcast | arithmetic
    flow_init: str = "batched"  # loop | batched
    compile: bool = False
    seed: int = 0
    # Training stops (TrainingDiverged) after this many consecutive skipped steps; 0 = never.
    max_consecutive_skips: int = 5
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        positive = (
            "lattice_width", "lattice_height", "lattice_depth", "batch_size", "max_flows",
            "carrier_hidden", "carrier_layers", "neuron_hidden", "neuron_output",
            "grad_accumulation", "embedding_dim", "mapper_hidden", "position_history",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.lattice_width < 2 or self.lattice_height < 2:
            raise ConfigError(
                f"lattice_width and lattice_height must be >= 2, got "
                f"{self.lattice_width}x{self.lattice_height}"
            )
        if not isinstance(self.cleanup_interval, int) or self.cleanup_interval < 0:
            raise ConfigError(
                f"cleanup_interval must be >= 0 (0 = never), got {self.cleanup_interval!r}"
            )
        for name, low, strict in _RANGES:
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < low or (strict and value == low)):
                raise ConfigError(f"{name} must be a finite number {'>' if strict else '>='} "
                                  f"{low}, got {value!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"max_steps must be positive or None, got {self.max_steps!r}")
        if self.spawn_threshold <= 0:
            raise ConfigError(f"spawn_threshold must be > 0, got {self.spawn_threshold!r}")
        if self.max_spawn_per_step < 0:
            raise ConfigError(f"max_spawn_per_step must be >= 0, got {self.max_spawn_per_step!r}")
        if not math.isfinite(self.spawn_budget) or self.spawn_budget < 0:
            raise ConfigError(f"spawn_budget must be a finite number >= 0, got {self.spawn_budget!r}")
        if not math.isfinite(self.completion_weight) or self.completion_weight < 0:
            raise ConfigError(f"completion_weight must be a finite number >= 0, got "
                              f"{self.completion_weight!r}")
        if not math.isfinite(self.displacement_lr_scale) or self.displacement_lr_scale < 0:
            raise ConfigError(f"displacement_lr_scale must be a finite number >= 0, got "
                              f"{self.displacement_lr_scale!r}")
        if self.plane_drift is not None and not 0 <= self.plane_drift <= 0.5:
            raise ConfigError(f"plane_drift must be in [0, 0.5] or None, got {self.plane_drift!r}")
        if not isinstance(self.lr_warmup, int) or isinstance(self.lr_warmup, bool) \
                or self.lr_warmup < 0:
            raise ConfigError(f"lr_warmup must be an integer >= 0 (0 = none), got "
                              f"{self.lr_warmup!r}")
        if not isinstance(self.max_consecutive_skips, int) or self.max_consecutive_skips < 0:
            raise ConfigError(f"max_consecutive_skips must be >= 0 (0 = never stop), got "
                              f"{self.max_consecutive_skips!r}")
        if self.exploration_noise < 0:
            raise ConfigError(f"exploration_noise must be >= 0, got {self.exploration_noise!r}")
        if self.rounding not in ROUNDING_CHOICES:
            raise ConfigError(f"rounding must be one of {ROUNDING_CHOICES}, got {self.rounding!r}")
        if self.flow_init not in FLOW_INIT_CHOICES:
            raise ConfigError(f"flow_init must be one of {FLOW_INIT_CHOICES}, got {self.flow_init!r}")
        if self.max_flows < self.initial_flows:
            raise ConfigError(
                f"max_flows ({self.max_flows}) must cover the initial flows "
                f"batch_size * W * H = {self.initial_flows}"
            )

    @property
    def surface_size(self) -> int:
        return self.lattice_width * self.lattice_height

    @property
    def initial_flows(self) -> int:
        return self.batch_size * self.surface_size

    @property
    def steps_limit(self) -> int:
        return self.max_steps if self.max_steps is not None else max(1, self.lattice_depth // 2)

    @property
    def spawn_limit(self) -> int:
        """The most children one forward pass may create (the spawn budget, in flows)."""
        return int(self.spawn_budget * self.initial_flows)

    @property
    def initial_drift(self) -> float:
        if not math.isfinite(self.completion_weight) or self.completion_weight < 0:
            raise ConfigError(f"completion_weight must be a finite number >= 0, got "
                              f"{self.completion_weight!r}")
        if not math.isfinite(self.displacement_lr_scale) or self.displacement_lr_scale < 0:
            raise ConfigError(f"displacement_lr_scale must be a finite number >= 0, got "
                              f"{self.displacement_lr_scale!r}")
        if self.plane_drift is not None:
            return self.plane_drift
        return min(0.5, 1.1 / max(1, self.steps_limit - 1))

    def replace(self, **overrides: Any) -> EnergyConfig:
        return make_config_from(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out


_PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(
        lattice_width=20, lattice_height=20, lattice_depth=10, batch_size=8, max_flows=50_000,
        carrier_hidden=256, carrier_layers=2, spawn_threshold=0.15, max_spawn_per_step=1,
        exploration_noise=0.01, convergence_threshold=0.8, convergence_min_steps=3,
        convergence_patience=5, grad_accumulation=1, mapper_hidden=512,
    ),
    "experiment": dict(
        lattice_width=28, lattice_height=28, lattice_depth=40, batch_size=16, max_flows=200_000,
        carrier_hidden=512, carrier_layers=3, spawn_threshold=0.5, max_spawn_per_step=1,
        exploration_noise=0.005, convergence_threshold=0.95, convergence_min_steps=5,
        convergence_patience=8, grad_accumulation=1, mapper_hidden=1024, lr=5e-4, lr_warmup=5,
    ),
    "optimized": dict(
        lattice_width=100, lattice_height=100, lattice_depth=50, batch_size=32,
        max_flows=1_000_000, carrier_hidden=1024, carrier_layers=3, spawn_threshold=0.1,
        max_spawn_per_step=3, exploration_noise=0.002, convergence_threshold=0.95,
        convergence_min_steps=5, convergence_patience=12, grad_accumulation=1,
        mapper_hidden=1024,
    ),
}

PRESET_NAMES = tuple(_PRESETS)

# "before" reproduces the historical slow paths of MODEL.md section 9 that are
# cheap enough to run (broadcast rounding, per-flow initialization); "after" is
# the default fast model.
VARIANTS: dict[str, dict[str, Any]] = {
    "after": {},
    "before": dict(rounding="broadcast", flow_init="loop"),
}


def _check_fields(overrides: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(EnergyConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")


def make_config(preset: str = "debug", **overrides: Any) -> EnergyConfig:
    """The named preset with ``overrides`` applied field by field."""
    if preset not in _PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESET_NAMES)}")
    _check_fields(overrides)
    values = dict(_PRESETS[preset], preset=preset)
    values.update(overrides)
    return EnergyConfig(**values)


def make_config_from(config: EnergyConfig, **overrides: Any) -> EnergyConfig:
    _check_fields(overrides)
    return dataclasses.replace(config, **overrides)


def apply_variant(config: EnergyConfig, variant: str) -> EnergyConfig:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return make_config_from(config, **VARIANTS[variant])


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``field=value`` (as typed on a command line) into a typed pair."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form field=value")
    name, raw = (part.strip() for part in text.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(EnergyConfig)}
    if name not in fields or name == "extra":
        raise ConfigError(f"unknown config field {name!r}")
    default = getattr(EnergyConfig(), name)
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
                raise ValueError(raw)
            value: Any = raw.lower() in ("1", "true", "on", "yes")
        elif name == "plane_drift":
            value = None if raw.lower() == "none" else float(raw)
        elif isinstance(default, int) or name == "max_steps":
            value = None if raw.lower() == "none" else int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ConfigError(f"override {name}={raw!r}: expected a {type(default).__name__}") from None
    return name, value
