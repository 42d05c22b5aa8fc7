"""Measure the notes' claims with the project's own benchmarks.

Model timings come from ``energy_flow.bench`` (training steps, flow
initialization, rounding), pool timings and peaks from ``profiler.memory.bench``
(interleaved training steps with and without a pool, largest lattice within a
memory budget). Only the memory-cleanup claim is measured here: the same
training run with cleanup off and on, memory recorded after every step and
judged by ``profiler.analyze.memory.memory_growth``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import torch

from energy_flow.config import EnergyConfig, apply_variant, make_config
from profiler.analyze.memory import memory_growth
from profiler.claims.spec import CLAIMS, CLAIMS_COLUMNS, Measurement, assess

Progress = Callable[[str], None]
# A size whose training steps take a fraction of a second on a CPU core.
CPU_OVERRIDES: dict[str, Any] = dict(lattice_width=10, lattice_height=10, batch_size=4,
                                     carrier_hidden=64, max_flows=20_000)


@dataclass(frozen=True)
class ClaimsConfig:
    device: str = "cpu"  # cpu | cuda[:N]
    preset: str = "debug"
    overrides: dict[str, Any] = field(default_factory=dict)  # training / pool / cleanup size
    quantize_overrides: dict[str, Any] = field(default_factory=dict)  # rounding batch size
    flows: int = 100_000  # flow-initialization claim
    repeats: int = 5
    train_steps: int = 4
    train_warmup: int = 1
    train_rounds: int = 2  # before/after alternate this many times (load drift cancels)
    cleanup_steps: int = 16
    cleanup_warmup: int = 4
    pool_steps: int = 12
    pool_warmup: int = 2
    lattice: bool = False  # largest lattice within a budget, pool off vs on (slow on CPU)
    lattice_budget_mib: int = 256
    lattice_max: int = 64
    out: Path = Path("reports/claims")

    def __post_init__(self) -> None:
        for name in ("flows", "repeats", "train_steps", "train_rounds", "cleanup_steps",
                     "pool_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cleanup_steps - self.cleanup_warmup < 4:
            raise ValueError("cleanup_steps must exceed cleanup_warmup by at least 4")

    def model_config(self) -> EnergyConfig:
        return make_config(self.preset, **self.overrides)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'})"


def measure_training(cfg: ClaimsConfig, device: torch.device) -> tuple[Measurement, dict]:
    from energy_flow.bench import bench_train

    config = cfg.model_config()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(cfg.train_rounds):
        for variant in ("before", "after"):
            runs[variant].append(bench_train(apply_variant(config, variant), device,
                                             cfg.train_steps, cfg.train_warmup))
    rate = {v: statistics.median(r["steps_per_s"] for r in runs[v]) for v in runs}
    note = (f"{config.preset} preset, {config.lattice_width}x{config.lattice_height}x"
            f"{config.lattice_depth}, batch {config.batch_size}, hidden {config.carrier_hidden}; "
            f"before = broadcast rounding + per-flow init (the historical paths this model "
            f"keeps); median over {cfg.train_rounds} alternating rounds of {cfg.train_steps} "
            f"steps")
    return Measurement("training", rate["before"], rate["after"], _device_name(device),
                       note), runs


def measure_flow_init(cfg: ClaimsConfig, device: torch.device) -> tuple[Measurement, dict]:
    from energy_flow.bench import bench_flow_init

    runs = {m: bench_flow_init(cfg.flows, m, device, cfg.repeats if m == "batched" else 1)
            for m in ("loop", "batched")}
    n = runs["batched"]["n_flows"]
    note = f"{n:,} flows; loop timed once, batched median of {cfg.repeats}"
    return Measurement("flow_init", runs["loop"]["median_ms"] / 1e3,
                       runs["batched"]["median_ms"] / 1e3, _device_name(device), note), runs


def measure_rounding(cfg: ClaimsConfig, device: torch.device) -> tuple[list[Measurement], dict]:
    from energy_flow.bench import bench_quantize

    config = make_config(cfg.preset, **cfg.quantize_overrides)
    runs = {m: bench_quantize(config, m, device, 1 if m == "loop" else cfg.repeats)
            for m in ("loop", "broadcast", "arithmetic")}
    loop = runs["loop"]["median_ms"] / 1e3
    where = (f"one {config.preset} batch: {runs['loop']['n_positions']:,} positions, "
             f"{runs['loop']['grid_points']:,} grid points")
    out = [
        Measurement("rounding_broadcast", loop, runs["broadcast"]["median_ms"] / 1e3,
                    _device_name(device), where + f"; [N, G, 3] distance tensor "
                    f"{runs['broadcast']['distance_bytes'] / 2**20:,.0f} MiB"),
        Measurement("rounding_arithmetic", loop, runs["arithmetic"]["median_ms"] / 1e3,
                    _device_name(device), where),
    ]
    return out, runs


def _memory_now(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"allocated_bytes": float(torch.cuda.memory_allocated(device)),
                "reserved_bytes": float(torch.cuda.memory_reserved(device)),
                "rss_bytes": float(psutil.Process().memory_info().rss)}
    return {"allocated_bytes": float("nan"), "reserved_bytes": float("nan"),
            "rss_bytes": float(psutil.Process().memory_info().rss)}


def memory_trace(config: EnergyConfig, device: torch.device, steps: int,
                 warmup: int) -> pd.DataFrame:
    """Train ``steps`` steps; steps.csv-like rows (step, phase, allocated/reserved/RSS bytes
    after each step) for ``memory_growth``."""
    from energy_flow.data import SyntheticPairs
    from energy_flow.trainer import Trainer

    torch.manual_seed(config.seed)
    trainer = Trainer(config, device)
    data = SyntheticPairs(config.embedding_dim, seed=config.seed)
    rows = []
    for i in range(steps):
        trainer.train_step(*data.batch(config.batch_size, i, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows.append({"step": i, "phase": "warmup" if i < warmup else "measured",
                     **_memory_now(device)})
    return pd.DataFrame(rows)


def measure_cleanup(cfg: ClaimsConfig, device: torch.device) -> tuple[Measurement, dict]:
    """Growth per step with cleanup off and on. Cleanup only returns the CUDA allocator's
    cache (reserved - allocated) to the device, so on CUDA "on" uses a 0-byte threshold
    (it fires whenever any cache is held, not above the 20 GiB default) and the judged
    metric is reserved memory, the memory cleanup changes; allocated memory it never
    touches. On CPU cleanup does nothing and the metric is RSS."""
    config = cfg.model_config()
    # cleanup runs every `cleanup_interval` lattice steps inside a forward pass; an interval
    # above the step limit would never fire, so "on" uses the default or the step limit.
    on_interval = max(1, min(make_config(cfg.preset).cleanup_interval, config.steps_limit))
    growth = {}
    for label, interval in (("off", 0), ("on", on_interval)):
        trace = memory_trace(replace(config, cleanup_interval=interval,
                                     cleanup_threshold_bytes=0), device,
                             cfg.cleanup_steps, cfg.cleanup_warmup)
        if device.type == "cuda":  # judge the allocator's reserved bytes
            trace = trace.drop(columns=["allocated_bytes"]).rename(
                columns={"reserved_bytes": "allocated_bytes"})
        growth[label] = memory_growth(trace, min_steps=4)
        if device.type == "cuda":
            growth[label]["metric"] = "reserved_bytes"
            growth[label]["end_reserved_bytes"] = float(trace["allocated_bytes"].iloc[-1])
    metric = growth["on"]["metric"]
    note = (f"{cfg.cleanup_steps - cfg.cleanup_warmup} measured steps, {metric}; cleanup "
            f"every {on_interval} lattice steps; verdicts off/on: {growth['off']['verdict']} / "
            f"{growth['on']['verdict']}")
    if device.type == "cuda":
        note += (f"; cleanup threshold 0 B (releases any cache); reserved at the end off/on: "
                 f"{growth['off']['end_reserved_bytes'] / 2**20:,.1f} / "
                 f"{growth['on']['end_reserved_bytes'] / 2**20:,.1f} MiB")
    else:
        note += "; cleanup only releases CUDA cache, so on CPU it cannot change anything"
    if growth["off"]["verdict"] == "stable":
        note += "; no growth without cleanup: flow state is rebuilt for every batch"
    return Measurement("memory_cleanup", growth["off"]["growth_bytes_per_step"],
                       growth["on"]["growth_bytes_per_step"], _device_name(device),
                       note), growth


def measure_pool(cfg: ClaimsConfig, device: torch.device) -> tuple[list[Measurement], dict]:
    from profiler.memory.bench import BenchConfig, run_train

    config = cfg.model_config()
    bench = BenchConfig(sections=("train",), presets=(cfg.preset,),
                        overrides={cfg.preset: dict(cfg.overrides)}, kinds=("off", "simple",
                                                                             "managed"),
                        device=str(device), warmup=cfg.pool_warmup, steps=cfg.pool_steps)
    result = run_train(bench, cfg.preset)
    rows = {r["kind"]: r for r in result["rows"]}
    off, simple, managed = rows["off"], rows["simple"], rows["managed"]
    size = (f"{config.lattice_width}x{config.lattice_height}x{config.lattice_depth}, "
            f"batch {config.batch_size}, hidden {config.carrier_hidden}")
    speed_note = (f"whole training step (forward is not timed separately), {size}; median of "
                  f"{cfg.pool_steps} interleaved steps; paired ratio to off: simple "
                  f"{simple['paired_ratio_median']:.3f}, managed "
                  f"{managed['paired_ratio_median']:.3f} (managed {managed['median_ms']:.1f} ms)")
    peak_note = (f"peak of one profiled step incl. memory the pool holds; managed "
                 f"{managed['peak_bytes'] / 2**20:.1f} MiB; allocator calls off/simple: "
                 f"{off['allocator_allocations']} / {simple['allocator_allocations']}")
    name = _device_name(device)
    speed_note += "; improvement = 1 / paired ratio (robust to load drift)"
    return [Measurement("pool_forward", off["median_ms"], simple["median_ms"], name, speed_note,
                        factor=1 / simple["paired_ratio_median"]),
            Measurement("pool_peak", off["peak_bytes"], simple["peak_bytes"], name, peak_note),
            ], result


def measure_lattice(cfg: ClaimsConfig, device: torch.device) -> tuple[Measurement, dict]:
    from profiler.memory.bench import BenchConfig, run_lattice

    bench = BenchConfig(sections=("lattice",), kinds=("off", "simple"), device=str(device),
                        budget_mib=cfg.lattice_budget_mib, lattice_max=cfg.lattice_max)
    rows = {r["kind"]: r for r in run_lattice(bench)}
    widths = {k: rows[k]["largest_width"] for k in ("off", "simple")}
    area = {k: (w * w if w else None) for k, w in widths.items()}
    note = (f"largest square lattice (cells W x W) whose trainer + two steps stay within "
            f"{cfg.lattice_budget_mib} MiB: W = {widths['off']} off, {widths['simple']} simple "
            f"(searched up to {cfg.lattice_max})")
    return Measurement("pool_scale", area["off"], area["simple"], _device_name(device),
                       note), rows


def measure_claims(cfg: ClaimsConfig, progress: Progress | None = None
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every claim measured and assessed: (table with ``CLAIMS_COLUMNS``, raw results)."""
    say = progress or (lambda _msg: None)
    device = torch.device(cfg.device)
    measured: dict[str, Measurement] = {}
    raw: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], tuple[Any, dict]]]] = [
        ("flow initialization", lambda: measure_flow_init(cfg, device)),
        ("rounding", lambda: measure_rounding(cfg, device)),
        ("training speed", lambda: measure_training(cfg, device)),
        ("memory cleanup", lambda: measure_cleanup(cfg, device)),
        ("memory pool", lambda: measure_pool(cfg, device)),
    ]
    if cfg.lattice:
        steps.append(("largest lattice", lambda: measure_lattice(cfg, device)))
    for label, run in steps:
        say(f"measuring {label} ...")
        start = time.perf_counter()
        result, details = run()
        for m in (result if isinstance(result, list) else [result]):
            measured[m.key] = m
        raw[label] = details
        say(f"  {label}: {time.perf_counter() - start:.1f} s")
    leak = raw.get("memory cleanup")
    rows = []
    for claim in CLAIMS:
        m = measured.get(claim.key)
        verdicts = (leak["off"]["verdict"], leak["on"]["verdict"]) if leak else None
        holds, factor, note = assess(claim, m, verdicts)
        if m is None:
            note = _not_measured_note(claim.key)
        rows.append({"claim": claim.claim, "before": claim.before, "after": claim.after,
                     "measured_before": m.before if m else None,
                     "measured_after": m.after if m else None, "unit": claim.unit,
                     "factor_claimed": claim.factor, "factor_measured": factor,
                     "device": m.device if m else _device_name(device), "holds": holds,
                     "note": note})
    return pd.DataFrame(rows, columns=list(CLAIMS_COLUMNS)), raw


def _not_measured_note(key: str) -> str:
    if key == "pool_oom":
        return ("an OOM rate needs a population of failing runs; the largest lattice within a "
                "budget (next row) is the measurable form of this claim")
    if key == "pool_scale":
        return "run `python -m profiler claims --lattice` (bisection of lattice sizes; slow on CPU)"
    return "not measured"
