"""Benchmarks of the model (``python -m energy_flow bench``); every figure is a median.

Times are wall-clock milliseconds read after a device synchronize. The
training step is compared with its floor, bare ``nn.GRU`` forward + backward
over the same number of flow-steps, measured in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from energy_flow.config import EnergyConfig, make_config, parse_override
from energy_flow.data import SyntheticPairs
from energy_flow.lattice import EnergyLattice, quantize
from energy_flow.runtime import resolve_device
from energy_flow.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(milliseconds, result) of fn(), the device synchronized before and after."""
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3, value


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    return _timed(fn, device)[0]


def _summary(samples: list[float]) -> dict:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "max_ms": max(samples), "repeats": len(samples)}


class GruFloor:
    """Bare ``nn.GRU`` with the carrier's shape; forward + backward over T steps of N flows.

    ``step`` mode feeds one [1, N, F+1] step at a time carrying the hidden state,
    as the model must (each step's input depends on the last); ``sequence`` mode
    gives the whole [T, N, F+1] sequence to one call.
    """

    def __init__(self, config: EnergyConfig, device: torch.device):
        self.gru = torch.nn.GRU(config.neuron_output + 1, config.carrier_hidden,
                                config.carrier_layers).to(device)
        self.features = config.neuron_output + 1
        self.device = device
        self._inputs: dict[tuple[int, int], torch.Tensor] = {}

    def inputs(self, flows: int, steps: int) -> torch.Tensor:
        """The [T, N, F+1] input, made once per shape and outside any timed region."""
        if (flows, steps) not in self._inputs:
            self._inputs = {(flows, steps): torch.randn(steps, flows, self.features,
                                                        device=self.device)}
        return self._inputs[(flows, steps)]

    def run(self, flows: int, steps: int, mode: str = "step") -> None:
        x = self.inputs(flows, steps)
        if mode == "sequence":
            out, _ = self.gru(x)
            out.sum().backward()
            return
        hidden, total = None, 0.0
        for t in range(steps):
            out, hidden = self.gru(x[t:t + 1], hidden)
            total = total + out.sum()
        total.backward()


def bench_gru_floor(config: EnergyConfig, device: str | torch.device = "cpu", repeats: int = 5,
                    flows: int | None = None, steps: int | None = None) -> dict:
    """The floor: bare nn.GRU forward + backward on flows x steps flow-steps (defaults:
    the preset's initial flows and step limit). Medians of both modes and the faster one."""
    device = torch.device(device)
    flows = config.initial_flows if flows is None else flows
    steps = config.steps_limit if steps is None else steps
    floor = GruFloor(config, device)
    floor.run(flows, steps)  # warm-up; also makes the input
    out = {"flows": flows, "steps": steps, "flow_steps": flows * steps}
    for mode in ("step", "sequence"):
        samples = [_time_ms(lambda m=mode: floor.run(flows, steps, m), device)
                   for _ in range(repeats)]
        out[f"{mode}_median_ms"] = statistics.median(samples)
    out["median_ms"] = min(out["step_median_ms"], out["sequence_median_ms"])
    out["flow_steps_per_s"] = out["flow_steps"] / (out["median_ms"] / 1e3)
    return out


def bench_train(config: EnergyConfig, device: str | torch.device = "cpu", steps: int = 5,
                warmup: int = 2) -> dict:
    """Training micro-steps (Trainer.train_step) on synthetic pairs, each followed by the GRU
    floor on the flow-steps that step really processed; medians of both and their ratio."""
    device = torch.device(device)
    trainer = Trainer(config, device)
    data = SyntheticPairs(config.embedding_dim, seed=config.seed)
    floor = GruFloor(config, device)
    train_ms, floor_ms, seq_ms, flow_steps, losses = [], [], [], [], []
    for i in range(warmup + steps):
        inputs, targets = data.batch(config.batch_size, i, device)
        ms, result = _timed(lambda x=inputs, y=targets: trainer.train_step(x, y), device)
        taken = max(1, result.steps_taken)
        flows = max(1, round(result.flow_steps / taken))
        floor.inputs(flows, taken)
        f_step = _time_ms(lambda f=flows, t=taken: floor.run(f, t, "step"), device)
        f_seq = _time_ms(lambda f=flows, t=taken: floor.run(f, t, "sequence"), device)
        if i >= warmup:
            train_ms.append(ms)
            floor_ms.append(f_step)
            seq_ms.append(f_seq)
            flow_steps.append(result.flow_steps)
            losses.append(result.loss)
    median = statistics.median(train_ms)
    floor_median = min(statistics.median(floor_ms), statistics.median(seq_ms))
    mean_flow_steps = statistics.mean(flow_steps)
    return {
        "preset": config.preset, "device": str(device), "steps": steps, "warmup": warmup,
        "median_ms": median, "min_ms": min(train_ms),
        "steps_per_s": 1e3 / median,
        "flow_steps": mean_flow_steps,
        "flow_steps_per_s": mean_flow_steps / (median / 1e3),
        "floor_step_median_ms": statistics.median(floor_ms),
        "floor_sequence_median_ms": statistics.median(seq_ms),
        "floor_median_ms": floor_median,
        "ratio_to_floor": median / floor_median,
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
    }


def _flow_init_config(n_flows: int) -> EnergyConfig:
    """A lattice and batch with about n_flows initial flows (100 x 100 surface from 10k up)."""
    if n_flows >= 10_000:
        side, batch = 100, max(1, round(n_flows / 10_000))
    else:
        side, batch = max(2, math.isqrt(n_flows)), 1
    flows = side * side * batch
    return make_config("debug", lattice_width=side, lattice_height=side, batch_size=batch,
                       max_flows=max(flows, 50_000))


def bench_flow_init(n_flows: int = 100_000, method: str = "batched",
                    device: str | torch.device = "cpu", repeats: int = 5) -> dict:
    """EnergyLattice.init_flows for about n_flows flows (all per-flow state built)."""
    device = torch.device(device)
    config = _flow_init_config(n_flows)
    lattice = EnergyLattice(config)
    surface = torch.randn(config.batch_size, config.surface_size, device=device)
    lattice.init_flows(surface, method)  # warm-up
    samples = [_time_ms(lambda: lattice.init_flows(surface, method), device)
               for _ in range(repeats)]
    return {"method": method, "n_flows": config.initial_flows, "device": str(device),
            **_summary(samples)}


def bench_quantize(config: EnergyConfig, method: str = "arithmetic",
                   device: str | torch.device = "cpu", repeats: int = 5) -> dict:
    """quantize() of one batch's initial flows (B * S random positions) with the given method.

    ``copy_median_ms`` times a plain copy of the positions tensor, the memory-bandwidth
    reference; ``broadcast`` builds the [N, G, 3] distance tensor in one piece
    (``distance_bytes``), as the historical version did.
    """
    device = torch.device(device)
    n = config.initial_flows
    gen = torch.Generator().manual_seed(0)
    positions = (torch.rand(n, 3, generator=gen) * 2 - 1).to(device)
    grid = config.surface_size * (config.lattice_depth + 1)
    quantize(positions[: min(n, 64)], config, method)  # warm-up
    samples = [_time_ms(lambda: quantize(positions, config, method), device)
               for _ in range(repeats)]
    copies = [_time_ms(lambda: positions.clone(), device) for _ in range(max(repeats, 20))]
    return {"method": method, "n_positions": n, "grid_points": grid,
            "distance_bytes": n * grid * 3 * 4 if method == "broadcast" else 0,
            "device": str(device), "copy_median_ms": statistics.median(copies),
            **_summary(samples)}


def run_all(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    parts = set(args.only or ("train", "flow_init", "quantize"))
    overrides = dict(parse_override(text) for text in args.set)
    results: dict = {"device": str(device), "threads": torch.get_num_threads(),
                     "load_average_before": _load_average()}
    if "train" in parts:
        results["train"] = []
        for preset in args.preset or ["debug", "experiment"]:
            config = make_config(preset, **overrides)
            _log(f"train {preset}: {args.warmup} warm-up + {args.steps} measured steps ...")
            results["train"].append(_done(bench_train, config, device, args.steps, args.warmup))
    if "flow_init" in parts:
        results["flow_init"] = []
        for method, repeats in (("batched", args.repeats), ("loop", 1)):
            _log(f"flow init {args.flows} flows, {method} ...")
            results["flow_init"].append(_done(bench_flow_init, args.flows, method, device, repeats))
    if "quantize" in parts:
        config = make_config(args.quantize_preset, **overrides)
        results["quantize"] = []
        for method, repeats in (("arithmetic", max(args.repeats, 20)),
                                ("broadcast", args.repeats), ("loop", 1)):
            _log(f"quantize {config.initial_flows} positions ({args.quantize_preset}), "
                 f"{method} ...")
            results["quantize"].append(_done(bench_quantize, config, method, device, repeats))
    results["load_average_after"] = _load_average()
    return results


def _load_average() -> float | None:
    """1-minute load average of the host (CPU figures are only comparable on a quiet host)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _done(measure, *args):
    """Run one measurement and say how long it took (a line after every long pause)."""
    start = time.perf_counter()
    result = measure(*args)
    _log(f"  done in {time.perf_counter() - start:.1f} s")
    return result


def format_table(results: dict) -> str:
    lines = [f"device {results['device']}, {results['threads']} threads; medians; host load "
             f"{results['load_average_before']} -> {results['load_average_after']}"]
    for r in results.get("train", []):
        lines.append(
            f"train {r['preset']:<10} {r['median_ms']:10.1f} ms/step  {r['steps_per_s']:8.3f} "
            f"steps/s  {r['flow_steps_per_s']:12.0f} flow-steps/s  GRU floor "
            f"{r['floor_median_ms']:.1f} ms (step {r['floor_step_median_ms']:.1f}, sequence "
            f"{r['floor_sequence_median_ms']:.1f})  ratio {r['ratio_to_floor']:.2f}x")
    for r in results.get("flow_init", []):
        lines.append(f"flow init {r['method']:<10} {r['n_flows']} flows  {r['median_ms']:10.3f} ms")
    for r in results.get("quantize", []):
        extra = f" ({r['distance_bytes'] / 1e9:.2f} GB distance tensor)" \
            if r["distance_bytes"] else ""
        lines.append(f"quantize {r['method']:<10} {r['n_positions']} positions "
                     f"{r['median_ms']:12.3f} ms  (copy of positions {r['copy_median_ms']:.4f} "
                     f"ms){extra}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    results = run_all(args)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0
