"""The load rule (``profiler.analyze.load``) on constructed records: which CPU share it
compares (the measured steps' on CPU, the whole run's otherwise) and what it downgrades."""

from __future__ import annotations

import pandas as pd
import pytest

from profiler.analyze import load


def _meta(device: str, own_busy_cores: float, threads: int = 1) -> dict:
    return {"device": {"type": device},
            "host_load": {"logical_cpus": 2, "threads": {"torch_threads": threads},
                          "under_load": True,
                          "during": {"own_busy_cores": own_busy_cores, "other_busy_cores": 1.5,
                                     "other_busy_share": 0.75, "loadavg_1m_max": 3.0}}}


def _samples(wall_ms: float, cpu_ms: float | None, n: int = 10) -> pd.DataFrame:
    frame = pd.DataFrame({"step": range(n), "wall_ms": [wall_ms] * n})
    if cpu_ms is not None:
        frame["cpu_ms"] = [cpu_ms] * n
    return frame


def _summary(verdict: str) -> pd.DataFrame:
    return pd.DataFrame({"section": ["time", "throughput", "memory"],
                         "metric": ["step time", "samples per second", "peak tensor memory"],
                         "kind": ["timed", "timed", "exact"],
                         "verdict": [verdict, verdict, "equal"],
                         "rule": ["r1", "r2", "r3"]})


def test_measured_share_is_cpu_time_over_wall_time_per_usable_cpu():
    meta = _meta("cpu", 0.5, threads=4)  # 4 threads on 2 CPUs: 2 usable
    steps = pd.DataFrame({"wall_ms": [10.0, 30.0, None], "cpu_ms": [15.0, 45.0, 99.0]})
    assert load.measured_cpu_share(meta, steps) == pytest.approx(60 / 40 / 2)
    assert load.cpu_share(meta, steps) == pytest.approx(0.75)
    # older runs (no cpu_ms) and CUDA runs use the whole run's share
    assert load.measured_cpu_share(meta, steps.drop(columns="cpu_ms")) is None
    assert load.cpu_share(meta, steps.drop(columns="cpu_ms")) == pytest.approx(0.25)
    assert load.measured_cpu_share(_meta("cuda", 0.5), steps) is None
    assert load.measured_cpu_share({"device": {"type": "cpu"}}, steps) is None  # no record


def test_competition_during_the_measured_steps_explains_a_slowdown_the_whole_run_hides():
    # both runs got half a CPU over the whole run, but the base's measured steps got half
    # a CPU while the new run's had one to themselves: base 2x slower is competition
    base, new = _meta("cpu", 0.5), _meta("cpu", 0.5)
    samples = {"base": _samples(40.0, 20.0), "new": _samples(21.0, 20.0)}
    judged = load.downgrade_timing(_summary("better"), base, new, samples)
    assert list(judged["verdict"]) == [load.INCONCLUSIVE, load.INCONCLUSIVE, "equal"]
    assert judged["rule"].iloc[0] == ("r1; would be better, but the base run was slower and "
                                      "got over 10% less CPU share than the other run "
                                      "(CPU share 0.50 base, 0.95 new)")
    # without the per-step figures the whole-run shares are equal: the verdict would stand
    assert list(load.downgrade_timing(_summary("better"), base, new)["verdict"]) == \
        ["better", "better", "equal"]
    table = load.load_table(base, new, samples).set_index("item")
    row = table.loc["CPU share of the measured steps (CPU runs: the load rule's figure)"]
    assert (row["base"], row["new"]) == ("0.50", "0.95")


def test_a_slowdown_with_the_same_measured_share_keeps_its_verdict():
    # the whole runs differ in share (competition outside the measured steps), the measured
    # steps do not: the new run is slower for its own reasons
    base, new = _meta("cpu", 0.9), _meta("cpu", 0.4)
    samples = {"base": _samples(20.0, 19.0), "new": _samples(30.0, 28.5)}
    judged = load.downgrade_timing(_summary("worse"), base, new, samples)
    assert list(judged["verdict"]) == ["worse", "worse", "equal"]
    assert list(judged["rule"]) == ["r1", "r2", "r3"]
    # and the whole-run shares alone would have excused it
    assert list(load.downgrade_timing(_summary("worse"), base, new)["verdict"])[:2] == \
        [load.INCONCLUSIVE] * 2


def test_cuda_runs_compare_the_whole_runs_share():
    base, new = _meta("cuda", 0.9), _meta("cuda", 0.5)
    samples = {"base": _samples(20.0, 19.0), "new": _samples(30.0, 28.5)}  # ignored on CUDA
    judged = load.downgrade_timing(_summary("worse"), base, new, samples)
    assert list(judged["verdict"])[:2] == [load.INCONCLUSIVE] * 2
    assert judged["rule"].iloc[0].endswith("(CPU share 0.90 base, 0.50 new)")
