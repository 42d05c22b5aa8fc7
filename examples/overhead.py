"""Light-mode cost of ``profiler.profile`` per step in the example transformer loop.

    OMP_NUM_THREADS=1 python examples/overhead.py [PAIRS]

Rotates, in one process, a plain training step, one instrumented with three
``prof.phase`` blocks and ``prof.step(...)`` inside ``profiler.profile(mode="light")``, and
a second plain step (the control: what two identical steps differ by on this machine);
prints the paired medians of (instrumented - plain) and (control - plain) in microseconds
and as a percentage of the plain median step, and the instrumented steps' mean cost
(which includes the rare steps that flush steps.csv and TensorBoard scalars).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from transformer import BATCH, SEQ, TransformerWorkload, batch

import profiler


def plain(w: TransformerWorkload, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(w.module(x).flatten(0, 1), y.flatten())
    loss.backward()
    w.opt.step()
    w.opt.zero_grad(set_to_none=True)


def instrumented(prof, w: TransformerWorkload, x: torch.Tensor, y: torch.Tensor) -> None:
    with prof.phase("forward"):
        loss = nn.functional.cross_entropy(w.module(x).flatten(0, 1), y.flatten())
    with prof.phase("backward"):
        loss.backward()
    with prof.phase("optimizer"):
        w.opt.step()
        w.opt.zero_grad(set_to_none=True)
    prof.step(loss=loss, samples=BATCH, tokens=BATCH * SEQ)


def main(pairs: int = 200, warmup: int = 20) -> None:
    w = TransformerWorkload(torch.device("cpu"))
    data = [batch(i, w.device) for i in range(8)]
    base, diffs, control = [], [], []
    kinds = ("plain", "profiled", "control")
    with tempfile.TemporaryDirectory() as tmp, \
            profiler.profile(f"{tmp}/run", mode="light", model=w.module, log=None) as prof:
        for i in range(warmup + pairs):
            x, y = data[i % len(data)]
            times = {}
            for kind in kinds[i % 3:] + kinds[:i % 3]:
                t0 = time.perf_counter()
                instrumented(prof, w, x, y) if kind == "profiled" else plain(w, x, y)
                times[kind] = time.perf_counter() - t0
            if i >= warmup:
                base.append(times["plain"])
                diffs.append(times["profiled"] - times["plain"])
                control.append(times["control"] - times["plain"])
    step_us = statistics.median(base) * 1e6
    cost_us = statistics.median(diffs) * 1e6
    noise_us = statistics.median(control) * 1e6
    mean_us = statistics.fmean(diffs) * 1e6
    print(f"{pairs} rounds: plain step median {step_us:.0f} us; profiler.profile light costs "
          f"{cost_us:+.1f} us per step (paired median) = {100 * cost_us / step_us:+.2f}%; "
          f"control (plain vs plain) {noise_us:+.1f} us = {100 * noise_us / step_us:+.2f}%; "
          f"mean cost {mean_us:+.1f} us")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
