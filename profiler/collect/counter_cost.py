"""Per-step cost of the CPU tensor counter, measured side by side in one process.

    OMP_NUM_THREADS=1 python -m profiler.collect.counter_cost --preset debug --steps 40

Runs the energy_flow workload bare (no synchronization, no reads) and installs the
counting allocator for every other step: pairs (2k, 2k+1) alternate which of the
two steps counts, so drift cancels. Prints the median per-step time with and
without the counter, the paired-median difference in ms and percent, and the
allocations per step (the cost is per allocation). Because a step's time varies
more than the counter costs, it also times the counter alone: blocks of
``torch.empty`` allocations and frees, alternately with and without the counter,
and multiplies the paired-median cost per allocation by the allocations per step.
Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def measure(preset: str, steps: int, warmup: int, overrides: dict) -> dict:
    from energy_flow.config import make_config
    from profiler.collect import tensor_counter
    from profiler.collect.workload import make_energy_flow_workload

    config = make_config(preset, **overrides)
    torch.manual_seed(config.seed)
    tensor_counter.install()
    workload = make_energy_flow_workload(config, torch.device("cpu"), "off")
    off: list[float] = []
    on: list[float] = []
    diffs: list[float] = []
    allocs: list[int] = []
    pair: dict[bool, float] = {}
    for i in range(warmup + steps):
        counted = (i % 2) == ((i // 2) % 2)
        (tensor_counter.install if counted else tensor_counter.uninstall)()
        before = tensor_counter.read().alloc_count
        t0 = time.perf_counter()
        workload.step(i, None)
        ms = (time.perf_counter() - t0) * 1e3
        if counted:
            allocs.append(tensor_counter.read().alloc_count - before)
        if i < warmup:
            continue
        (on if counted else off).append(ms)
        pair[counted] = ms
        if i % 2 == 1 and len(pair) == 2:
            diffs.append(pair[True] - pair[False])
            pair = {}
    tensor_counter.uninstall()
    return {"steps": steps, "pairs": len(diffs), "off_ms_median": statistics.median(off),
            "on_ms_median": statistics.median(on),
            "cost_ms_paired_median": statistics.median(diffs),
            "cost_pct": 100 * statistics.median(diffs) / statistics.median(off),
            "allocations_per_step": statistics.median(allocs)}


def per_allocation_ns(blocks: int = 40, per_block: int = 20_000) -> float:
    """Paired-median extra CPU nanoseconds per allocate + free of a small CPU tensor."""
    from profiler.collect import tensor_counter

    def block() -> float:  # thread CPU time: preemption by other processes is not counted
        t0 = time.thread_time_ns()
        for _ in range(per_block):
            torch.empty(256)
        return (time.thread_time_ns() - t0) / per_block

    diffs = []
    for b in range(blocks):
        order = (True, False) if b % 2 == 0 else (False, True)
        times = {}
        for counted in order:
            (tensor_counter.install if counted else tensor_counter.uninstall)()
            times[counted] = block()
        diffs.append(times[True] - times[False])
    tensor_counter.uninstall()
    return statistics.median(diffs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiler.collect.counter_cost",
                                description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="debug")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    from energy_flow.config import parse_override

    ns = per_allocation_ns()
    r = measure(args.preset, args.steps, args.warmup,
                dict(parse_override(t) for t in args.overrides))
    per_step_ms = ns * r["allocations_per_step"] / 1e6
    print(f"counter alone: {ns:+.1f} ns per allocation (paired median of 40 blocks of "
          f"20,000 allocate + free); x {r['allocations_per_step']:.0f} allocations = "
          f"{per_step_ms:+.3f} ms per step = {100 * per_step_ms / r['off_ms_median']:+.3f}% "
          f"of the median bare step")
    print(f"{r['pairs']} step pairs, {r['allocations_per_step']:.0f} tensor allocations per "
          f"step: without counter {r['off_ms_median']:.2f} ms, with {r['on_ms_median']:.2f} "
          f"ms; paired-median cost {r['cost_ms_paired_median']:+.3f} ms per step "
          f"({r['cost_pct']:+.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
