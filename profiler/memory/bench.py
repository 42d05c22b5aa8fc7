"""Does pooling help? ``python -m profiler.memory.bench [--sections micro,train,lattice] ...``

Three measurements, printed as tables and written to ``--out`` (JSON):

- ``micro``: microseconds per acquire + release for each pool form against
  ``torch.empty`` (median over repeats; the spread is min..max of the repeats).
- ``train``: the model trained with the workspace off / simple / managed in one
  process, the kinds interleaved step by step (rotating order, each kind with
  its own RNG stream so the losses are identical). Step time: median and
  quartiles over the measured steps, and the median of the paired per-step
  ratio to "off"; also the time spent inside the workspace's own calls
  (median per step), which the noise of a shared machine does not swamp. One extra step per kind runs under ``torch.profiler``
  (``profile_memory=True``): peak = bytes the pool holds when the step starts +
  the highest point of the running sum of the allocator's ``[memory]`` events
  during the step (parameters and optimizer state, equal for all kinds, are
  not counted); allocator calls = allocations in those events; pool hits =
  factory calls the pool served without allocating. On CUDA the allocator's
  own peak allocated / reserved are reported too.
- ``lattice``: per kind, the largest square lattice (W = H, a multiple of
  ``--lattice-step``) whose trainer creation + two training steps stay within
  ``--budget-mib`` of allocated memory, found by running it (bisection) and
  reading the peak from the profiler's memory events.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from energy_flow.config import ConfigError, make_config, parse_override
from energy_flow.data import SyntheticPairs
from energy_flow.trainer import Trainer
from profiler.memory import (
    WORKSPACE_KINDS,
    MemoryContext,
    SimpleMemoryPool,
    UnifiedMemoryManager,
    make_workspace,
    managed_memory,
)
from profiler.parse.trace import parse_trace, read_trace
from profiler.rundir import atomic_write_text

SECTIONS = ("micro", "train", "lattice")
MICRO_SHAPES = ((64,), (256, 256), (3200, 256))


@dataclass(frozen=True)
class BenchConfig:
    sections: tuple[str, ...] = SECTIONS
    presets: tuple[str, ...] = ("debug", "experiment")
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset -> fields
    kinds: tuple[str, ...] = WORKSPACE_KINDS
    device: str = "cpu"
    warmup: int = 2
    steps: int = 8
    micro_iters: int = 5000
    micro_repeats: int = 7
    budget_mib: int = 512
    lattice_batch: int = 2
    lattice_step: int = 4
    lattice_max: int = 96
    seed: int = 0
    out: Path = Path("reports/memory_bench.json")


# -- micro ----------------------------------------------------------------------------------
def _per_op_us(body: Callable[[int], None], iters: int, repeats: int) -> dict[str, float]:
    body(max(10, iters // 10))  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        body(iters)
        runs.append((time.perf_counter() - t0) / iters * 1e6)
    return {"median_us": statistics.median(runs), "min_us": min(runs), "max_us": max(runs)}


def _micro_bodies(shape: tuple[int, ...], touch: bool) -> dict[str, Callable[[int], None]]:
    pool, manager = SimpleMemoryPool(), UnifiedMemoryManager()

    def plain(n):
        for _ in range(n):
            t = torch.empty(shape)
            if touch:
                t.fill_(1.0)

    def simple(n):
        for _ in range(n):
            t = pool.get_tensor(shape)
            if touch:
                t.fill_(1.0)
            pool.return_tensor(t)

    def managed(n):
        for _ in range(n):
            t = manager.acquire_tensor(shape, category="bench")
            if touch:
                t.fill_(1.0)
            manager.release_tensor(t)

    def context(n):
        for _ in range(n):
            with MemoryContext(pool) as mem:
                t = mem.empty(shape)
                if touch:
                    t.fill_(1.0)

    @managed_memory(pool=pool)
    def decorated():
        t = torch.empty(shape)
        if touch:
            t.fill_(1.0)

    def decorator(n):
        for _ in range(n):
            decorated()

    return {"torch.empty": plain, "SimpleMemoryPool": simple, "UnifiedMemoryManager": managed,
            "MemoryContext": context, "managed_memory": decorator}


def run_micro(cfg: BenchConfig) -> list[dict[str, Any]]:
    rows = []
    for shape in MICRO_SHAPES:
        for touch in (False, True):
            iters = cfg.micro_iters if not touch or shape[0] < 1000 else max(50, cfg.micro_iters // 20)
            for method, body in _micro_bodies(shape, touch).items():
                row: dict[str, Any] = {"shape": "x".join(map(str, shape)), "write": touch,
                                       "method": method}
                row.update(_per_op_us(body, iters, cfg.micro_repeats))
                rows.append(row)
    return rows


# -- memory of one step ---------------------------------------------------------------------
def _profiled(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Run ``fn`` under torch.profiler; peak of the running sum and count of allocations."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        memory = parse_trace(read_trace(path)).memory
    want = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    mem = memory[memory["device"] == want]
    running = mem["bytes"].cumsum()
    return result, {"peak_delta_bytes": int(max(0, running.max() if len(mem) else 0)),
                    "allocations": int((mem["bytes"] > 0).sum())}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _totals(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    keys = ("hits", "misses", "held_bytes", "acquisitions")
    return {k: sum(row[k] for row in stats.values()) for k in keys}


class _TimedWorkspace:
    """Delegates to a workspace and adds up the time spent inside its calls."""

    def __init__(self, inner):
        self.inner, self.name, self.ns = inner, getattr(inner, "name", "?"), 0

    def empty(self, shape, *, dtype, device, category="scratch"):
        t0 = time.perf_counter_ns()
        out = self.inner.empty(shape, dtype=dtype, device=device, category=category)
        self.ns += time.perf_counter_ns() - t0
        return out

    def zeros(self, shape, *, dtype, device, category="scratch"):
        t0 = time.perf_counter_ns()
        out = self.inner.zeros(shape, dtype=dtype, device=device, category=category)
        self.ns += time.perf_counter_ns() - t0
        return out

    def release(self, tensor):
        t0 = time.perf_counter_ns()
        self.inner.release(tensor)
        self.ns += time.perf_counter_ns() - t0

    def end_step(self):
        t0 = time.perf_counter_ns()
        self.inner.end_step()
        self.ns += time.perf_counter_ns() - t0

    def pool_stats(self):
        return self.inner.pool_stats()


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generators a training step on ``device`` draws from: the CPU one and, on CUDA,
    that device's (random tensors made on the GPU use the GPU's generator)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


class _Runner:
    """One trainer per kind with its own RNG streams (CPU and, on CUDA, the device's),
    stepped in turn on the same batches: every kind does the same work."""

    def __init__(self, config, device: torch.device, kinds: tuple[str, ...], seed: int):
        self.device, self.config = device, config
        self.trainers, self.rng = {}, {}
        for kind in kinds:
            torch.manual_seed(seed)
            workspace = _TimedWorkspace(make_workspace(kind, device))
            self.trainers[kind] = Trainer(config, device, workspace=workspace)
            self.rng[kind] = rng_state(device)
        self.data = SyntheticPairs(seed=seed)

    def step(self, kind: str, step: int):
        inputs, targets = self.data.batch(self.config.batch_size, step, device=self.device)
        set_rng_state(self.rng[kind], self.device)
        _sync(self.device)
        t0 = time.perf_counter()
        result = self.trainers[kind].train_step(inputs, targets)
        _sync(self.device)
        elapsed = (time.perf_counter() - t0) * 1e3
        self.rng[kind] = rng_state(self.device)
        return result, elapsed


def run_train(cfg: BenchConfig, preset: str) -> dict[str, Any]:
    """Every kind trains on the same batches with its own RNG streams. On CUDA it also runs
    with deterministic algorithms (``warn_only``; ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless
    set), restored afterwards: atomic adds in scatter / index kernels would otherwise give
    identical work different losses, and a changed loss changes spawning, hence the work."""
    if torch.device(cfg.device).type != "cuda":
        return _run_train(cfg, preset)
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        out = _run_train(cfg, preset)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
    out["deterministic_algorithms"] = True
    return out


def _run_train(cfg: BenchConfig, preset: str) -> dict[str, Any]:
    device = torch.device(cfg.device)
    config = make_config(preset, **cfg.overrides.get(preset, {}))
    runner = _Runner(config, device, cfg.kinds, cfg.seed)
    times: dict[str, list[float]] = {k: [] for k in cfg.kinds}
    ws_ms: dict[str, list[float]] = {k: [] for k in cfg.kinds}
    losses: dict[str, list[float]] = {k: [] for k in cfg.kinds}
    for step in range(cfg.warmup + cfg.steps):
        shift = step % len(cfg.kinds)
        for kind in cfg.kinds[shift:] + cfg.kinds[:shift]:
            ws: Any = runner.trainers[kind].model.workspace
            ns = ws.ns
            result, ms = runner.step(kind, step)
            losses[kind].append(result.loss)
            if step >= cfg.warmup:
                times[kind].append(ms)
                ws_ms[kind].append((ws.ns - ns) / 1e6)
    rows = []
    step = cfg.warmup + cfg.steps
    for kind in cfg.kinds:
        ws = runner.trainers[kind].model.workspace
        before: Any = _totals(ws.pool_stats()) if ws.pool_stats() else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _, mem = _profiled(device, lambda kind=kind: runner.step(kind, step))  # type: ignore[misc]
        after: Any = _totals(ws.pool_stats()) if before is not None else None
        q = statistics.quantiles(times[kind], n=4) if len(times[kind]) > 1 else [times[kind][0]] * 3
        ratios = [t / o for t, o in zip(times[kind], times[cfg.kinds[0]], strict=True)]
        row = {
            "kind": kind, "median_ms": statistics.median(times[kind]), "q1_ms": q[0], "q3_ms": q[2],
            "min_ms": min(times[kind]), "max_ms": max(times[kind]),
            "paired_ratio_median": statistics.median(ratios),
            "workspace_ms_median": statistics.median(ws_ms[kind]),
            "pool_held_bytes": before["held_bytes"] if before else 0,
            "peak_bytes": (before["held_bytes"] if before else 0) + mem["peak_delta_bytes"],
            "allocator_allocations": mem["allocations"],
            "factory_calls": after["acquisitions"] - before["acquisitions"] if before else None,
            "pool_hits": after["hits"] - before["hits"] if before else None,
        }
        if device.type == "cuda":
            row["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            row["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        rows.append(row)
    reference = losses[cfg.kinds[0]]
    return {"preset": preset, "config": config.to_dict(), "warmup": cfg.warmup, "steps": cfg.steps,
            "identical_losses": all(losses[k] == reference for k in cfg.kinds),
            "flows_created_last": result.flows_created, "rows": rows}


# -- largest lattice in a budget --------------------------------------------------------------
def _lattice_peak(cfg: BenchConfig, kind: str, width: int) -> int:
    device = torch.device(cfg.device)
    b = cfg.lattice_batch
    config = make_config("debug", lattice_width=width, lattice_height=width, batch_size=b,
                         max_flows=max(50_000, 4 * b * width * width))

    def body():
        torch.manual_seed(cfg.seed)
        trainer = Trainer(config, device, workspace=make_workspace(kind, device))
        data = SyntheticPairs(seed=cfg.seed)
        for step in range(2):
            trainer.train_step(*data.batch(b, step, device=device))
        _sync(device)

    _, mem = _profiled(device, body)
    return mem["peak_delta_bytes"]


def run_lattice(cfg: BenchConfig) -> list[dict[str, Any]]:
    budget = cfg.budget_mib * 2**20
    rows = []
    for kind in cfg.kinds:
        probes: dict[int, int] = {}
        lo, hi = cfg.lattice_step, cfg.lattice_max  # lo fits (checked), hi + step does not
        probes[lo] = _lattice_peak(cfg, kind, lo)
        if probes[lo] > budget:
            rows.append({"kind": kind, "largest_width": None, "probes": probes})
            continue
        probes[hi] = _lattice_peak(cfg, kind, hi)
        if probes[hi] <= budget:
            lo = hi
        while hi - lo > cfg.lattice_step and lo != hi:
            mid = (lo + hi) // 2 // cfg.lattice_step * cfg.lattice_step
            probes[mid] = _lattice_peak(cfg, kind, mid)
            lo, hi = (mid, hi) if probes[mid] <= budget else (lo, mid)
        found: dict[str, Any] = {"kind": kind, "largest_width": lo,
                                 "peak_bytes_at_largest": probes[lo],
                                 "probes": dict(sorted(probes.items()))}
        rows.append(found)
    return rows


# -- entry point ------------------------------------------------------------------------------
def _print_tables(results: dict[str, Any]) -> None:
    for row in results.get("micro", []):
        print(f"micro {row['shape']:>9} write={int(row['write'])} {row['method']:<22}"
              f" {row['median_us']:8.2f} us  ({row['min_us']:.2f}..{row['max_us']:.2f})")
    for run in results.get("train", []):
        print(f"train {run['preset']} (identical losses: {run['identical_losses']})")
        for r in run["rows"]:
            print(f"  {r['kind']:<8} median {r['median_ms']:9.1f} ms  IQR {r['q1_ms']:.1f}..{r['q3_ms']:.1f}"
                  f"  ratio/off {r['paired_ratio_median']:.3f}"
                  f"  in workspace {r['workspace_ms_median']:.3f} ms  peak {r['peak_bytes'] / 2**20:8.1f} MiB"
                  f"  allocs {r['allocator_allocations']:6d}  pool hits {r['pool_hits']}")
    for r in results.get("lattice", []):
        print(f"lattice {r['kind']:<8} largest W=H {r['largest_width']} in "
              f"{results['config']['budget_mib']} MiB  probes(W: MiB) "
              + ", ".join(f"{w}: {b / 2**20:.0f}" for w, b in r["probes"].items()))


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m profiler.memory.bench", description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--presets", default="debug,experiment")
    p.add_argument("--set", action="append", default=[], metavar="PRESET:FIELD=VALUE",
                   help="config override for one preset, e.g. experiment:batch_size=2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--micro-iters", type=int, default=5000)
    p.add_argument("--budget-mib", type=int, default=512)
    p.add_argument("--lattice-batch", type=int, default=2)
    p.add_argument("--lattice-max", type=int, default=96)
    p.add_argument("--out", type=Path, default=Path("reports/memory_bench.json"))
    a = p.parse_args(argv)
    sections = tuple(s for s in a.sections.split(",") if s)
    if set(sections) - set(SECTIONS):
        p.error(f"--sections: choose from {', '.join(SECTIONS)}")
    overrides: dict[str, dict[str, Any]] = {}
    for item in a.set:
        preset, _, assignment = item.partition(":")
        if not assignment:
            p.error(f"--set {item!r} is not of the form PRESET:FIELD=VALUE")
        try:
            name, value = parse_override(assignment)
        except ConfigError as exc:
            p.error(f"--set {item!r}: {exc}")
        overrides.setdefault(preset, {})[name] = value
    if a.steps < 2 or a.warmup < 0:
        p.error("--steps must be >= 2 and --warmup >= 0")
    return BenchConfig(sections=sections, presets=tuple(a.presets.split(",")), overrides=overrides,
                       device=a.device, warmup=a.warmup, steps=a.steps, micro_iters=a.micro_iters,
                       budget_mib=a.budget_mib, lattice_batch=a.lattice_batch,
                       lattice_max=a.lattice_max, out=a.out)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    results: dict[str, Any] = {
        "config": {**asdict(cfg), "out": str(cfg.out)},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(cfg.device) if cfg.device.startswith("cuda") else "cpu",
    }
    if "micro" in cfg.sections:
        results["micro"] = run_micro(cfg)
    if "train" in cfg.sections:
        results["train"] = [run_train(cfg, preset) for preset in cfg.presets]
    if "lattice" in cfg.sections:
        results["lattice"] = run_lattice(cfg)
    _print_tables(results)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.out, json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
