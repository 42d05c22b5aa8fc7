"""Light-mode cost of ``profiler.profile`` per step in the example transformer loop.

    OMP_NUM_THREADS=1 python examples/overhead.py [ROUNDS]

Rotates, in one process, four kinds of training step of the example transformer:
- ``plain``: the loop without the profiler, the CPU allocator torch's own (the profiler's
  counting allocator is switched off for it, outside the timed span);
- ``profiled``: three ``prof.phase`` blocks and ``prof.step(...)`` inside
  ``profiler.profile(mode="light")``, the counting allocator on;
- ``control``: a second plain step (what two identical steps differ by on this machine);
- ``timed``: a profiled step that also times the profiler's own calls from inside the loop
  (phase entries and exits, ``prof.step``): their direct cost, free of the step-to-step
  noise that the paired difference carries.
Prints the paired medians of (profiled - plain) and (control - plain) in microseconds and
as a percentage of the plain median step; the mean of (profiled - plain), which includes
the heartbeat steps (every ``monitor_interval`` steps the rows are recorded and the run
record written); and the direct cost, median over steps without a heartbeat, mean over all.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from transformer import BATCH, SEQ, TransformerWorkload, batch, profiled_step

import profiler
from profiler.collect import tensor_counter

clock = time.perf_counter


def plain(w: TransformerWorkload, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(w.module(x).flatten(0, 1), y.flatten())
    loss.backward()
    w.opt.step()
    w.opt.zero_grad(set_to_none=True)


def timed(prof, w: TransformerWorkload, x: torch.Tensor, y: torch.Tensor) -> float:
    """``profiled``, returning the seconds spent in the profiler's calls."""
    t0 = clock()
    with prof.phase("forward"):
        t1 = clock()
        loss = nn.functional.cross_entropy(w.module(x).flatten(0, 1), y.flatten())
        t2 = clock()
    t3 = clock()
    with prof.phase("backward"):
        t4 = clock()
        loss.backward()
        t5 = clock()
    t6 = clock()
    with prof.phase("optimizer"):
        t7 = clock()
        w.opt.step()
        w.opt.zero_grad(set_to_none=True)
        t8 = clock()
    t9 = clock()
    prof.step(loss=loss, samples=BATCH, tokens=BATCH * SEQ)
    t10 = clock()
    return (t1 - t0) + (t3 - t2) + (t4 - t3) + (t6 - t5) + (t7 - t6) + (t9 - t8) + (t10 - t9)


def main(rounds: int = 300, warmup: int = 20) -> None:
    w = TransformerWorkload(torch.device("cpu"))
    data = [batch(i, w.device) for i in range(8)]
    base, diffs, control, direct, direct_quiet = [], [], [], [], []
    kinds = ("plain", "profiled", "control", "timed")
    with tempfile.TemporaryDirectory() as tmp, \
            profiler.profile(f"{tmp}/run", mode="light", model=w.module, log=None) as prof:
        interval = prof.options.monitor_interval
        for i in range(warmup + rounds):
            x, y = data[i % len(data)]
            times, inside = {}, 0.0
            for kind in kinds[i % 4:] + kinds[:i % 4]:
                if kind in ("plain", "control"):
                    tensor_counter.uninstall()  # the loop as it runs without the profiler
                t0 = clock()
                if kind == "profiled":
                    profiled_step(prof, w, x, y)
                elif kind == "timed":
                    before = len(prof._pending)
                    inside = timed(prof, w, x, y)
                    heartbeat = len(prof._pending) <= before
                else:
                    plain(w, x, y)
                times[kind] = clock() - t0
                tensor_counter.install()
            if i >= warmup:
                base.append(times["plain"])
                diffs.append(times["profiled"] - times["plain"])
                control.append(times["control"] - times["plain"])
                direct.append(inside)
                if not heartbeat:
                    direct_quiet.append(inside)
    step_us = statistics.median(base) * 1e6
    cost_us = statistics.median(diffs) * 1e6
    noise_us = statistics.median(control) * 1e6
    mean_us = statistics.fmean(diffs) * 1e6
    print(f"{rounds} rounds: plain step median {step_us:.0f} us; profiler.profile light costs "
          f"{cost_us:+.1f} us per step (paired median) = {100 * cost_us / step_us:+.2f}%; "
          f"control (plain vs plain) {noise_us:+.1f} us = {100 * noise_us / step_us:+.2f}%; "
          f"mean cost {mean_us:+.1f} us (heartbeat every {interval} steps included)")
    print(f"direct: the profiler's calls take {statistics.median(direct_quiet) * 1e6:.1f} us "
          f"per step (median, steps without a heartbeat), {statistics.fmean(direct) * 1e6:.1f} "
          f"us on average over all steps = {100 * statistics.fmean(direct) * 1e6 / step_us:.2f}%")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
