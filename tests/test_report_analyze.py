"""Report analyzers on small hand-made DataFrames with exact expected outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from profiler.analyze import categories, metadata, metrics, nvml, operators, stats
from profiler.analyze.report import regressions
from profiler.analyze.stats import BETTER, NOISE, WORSE, StatsConfig


def _steps(wall, phase=None, samples=2, flow_steps=100):
    n = len(wall)
    wall = np.asarray(wall, dtype=float)
    return pd.DataFrame({
        "step": np.arange(n), "phase": phase or ["measured"] * n, "wall_ms": wall,
        "forward_ms": wall / 2, "backward_ms": wall / 4, "optimizer_ms": wall / 8,
        "samples": samples, "flow_steps": flow_steps, "peak_bytes": 1000 + np.arange(n),
        "allocated_bytes": 500, "reserved_bytes": 800, "rss_bytes": 10_000,
    })


# --- stats --------------------------------------------------------------------------------
def test_ratio_and_drift_exact():
    assert stats.ratio_of(4.0, 5.0) == 1.25
    assert stats.ratio_of(0.0, 0.0) == 1.0
    assert stats.ratio_of(0.0, 3.0) == math.inf
    # halves [10, 10, 10] and [12, 12, 12]: |12 - 10| / 12
    assert stats.drift(np.array([10, 10, 10, 12, 12, 12.0])) == pytest.approx(2 / 12)
    assert stats.drift(np.array([1.0, 2.0, 3.0])) == 0.0  # fewer than 4 samples


def test_noise_threshold_floor_and_drift():
    cfg = StatsConfig(noisy_floor=0.05, deterministic_floor=0.02, drift_factor=2.0)
    flat = np.full(10, 5.0)
    drifting = np.array([10, 10, 10, 10, 10, 11, 11, 11, 11, 11.0])
    assert stats.noise_threshold(flat, flat, noisy=True, config=cfg) == 0.05
    assert stats.noise_threshold(flat, drifting, noisy=True, config=cfg) == pytest.approx(2 / 11)
    assert stats.noise_threshold(flat, drifting, noisy=False, config=cfg) == 0.02


@pytest.mark.parametrize("ratio, lo, hi, lower_is_better, single, expected", [
    (1.20, 1.10, 1.30, True, False, WORSE),
    (1.20, 0.95, 1.30, True, False, NOISE),   # interval includes 1
    (1.03, 1.01, 1.05, True, False, NOISE),   # below the 5% threshold
    (0.80, 0.70, 0.90, True, False, BETTER),
    (0.955, 0.94, 0.97, True, False, NOISE),  # symmetric: 1 / 1.05 = 0.952 < 0.955
    (0.950, 0.94, 0.97, True, False, BETTER),
    (0.80, 0.70, 0.90, False, False, WORSE),  # throughput went down
    (1.20, math.nan, math.nan, True, False, NOISE),  # too few samples: no interval
    (1.20, math.nan, math.nan, True, True, WORSE),   # single value: threshold decides
    (math.nan, math.nan, math.nan, True, True, NOISE),
])
def test_verdict_rules(ratio, lo, hi, lower_is_better, single, expected):
    assert stats.verdict(ratio, lo, hi, 0.05, lower_is_better, single_value=single) == expected


def test_compare_samples_constant_samples_give_exact_interval():
    cfg = StatsConfig()
    cmp = stats.compare_samples(np.full(8, 10.0), np.full(8, 15.0), 0.5, cfg)
    assert (cmp.base, cmp.new, cmp.ratio, cmp.ci_low, cmp.ci_high) == (10.0, 15.0, 1.5, 1.5, 1.5)


def test_a_metric_appearing_from_zero_is_worse():
    cmp = stats.compare_samples(np.zeros(6), np.full(6, 3.0), 0.5, StatsConfig())
    assert (cmp.ratio, cmp.ci_low, cmp.ci_high) == (math.inf, math.inf, math.inf)
    assert stats.verdict(cmp.ratio, cmp.ci_low, cmp.ci_high, 0.02, True) == WORSE


def test_memory_differences_under_min_bytes_are_noise():
    spec = metrics.MetricSpec("category", "peak [region/loss]", "x", "bytes", statistic="max",
                              noisy=False, gated=True)
    base, new = pd.DataFrame({"x": [200.0, 268.0]}), pd.DataFrame({"x": [400.0, 536.0]})
    row = metrics.compare_metrics([spec], base, new, StatsConfig(min_bytes=1024)).iloc[0]
    assert (row["ratio"], row["verdict"]) == (2.0, NOISE)
    row = metrics.compare_metrics([spec], base, new, StatsConfig(min_bytes=0)).iloc[0]
    assert (row["ratio"], row["verdict"]) == (2.0, WORSE)


def test_time_differences_under_min_ms_are_noise():
    spec = metrics.MetricSpec("time", "other (step - parts)", "x", "ms")
    base = pd.DataFrame({"x": [0.20, 0.21, 0.19, 0.20, 0.20, 0.22]})
    new = pd.DataFrame({"x": [0.30, 0.31, 0.29, 0.30, 0.30, 0.32]})
    row = metrics.compare_metrics([spec], base, new, StatsConfig(min_ms=0.5)).iloc[0]
    assert row["ratio"] == pytest.approx(1.5) and row["verdict"] == NOISE
    row = metrics.compare_metrics([spec], base, new, StatsConfig(min_ms=0.0)).iloc[0]
    assert row["verdict"] == WORSE


def test_compare_samples_without_enough_samples_has_no_interval():
    cmp = stats.compare_samples(np.array([1.0, 2, 3, 4]), np.array([2.0, 3, 4, 5]), 0.5,
                                StatsConfig(min_samples=5))
    assert (cmp.base, cmp.new, cmp.ratio) == (2.5, 3.5, 1.4)
    assert math.isnan(cmp.ci_low) and math.isnan(cmp.ci_high)


def test_compare_samples_is_seeded_and_brackets_the_ratio():
    rng = np.random.default_rng(7)
    base, new = rng.normal(10, 1, 50), rng.normal(12, 1, 50)
    a = stats.compare_samples(base, new, 0.5, StatsConfig(seed=3))
    b = stats.compare_samples(base, new, 0.5, StatsConfig(seed=3))
    assert a == b
    assert a.ci_low < a.ratio < a.ci_high and a.ci_low > 1.05


@pytest.mark.parametrize("n, q", [(7, 0.5), (10, 0.9), (40, 0.5)])
def test_bootstrap_quantile_matches_explicit_resampling(n, q):
    x = np.sort(np.random.default_rng(n).lognormal(size=n))
    fast = stats.bootstrap_quantile(x, q, 100_000, np.random.default_rng(1))
    idx = np.random.default_rng(2).integers(0, n, (100_000, n))
    slow = np.quantile(x[idx], q, axis=1)
    for p in (0.05, 0.5, 0.95):
        assert np.quantile(fast, p) == pytest.approx(np.quantile(slow, p), rel=0.03)
    assert fast.mean() == pytest.approx(slow.mean(), rel=0.01)


# --- metrics ------------------------------------------------------------------------------
def test_step_samples_derived_columns_and_warmup_excluded():
    steps = _steps([100.0, 10.0, 20.0], phase=["warmup", "measured", "measured"])
    out = metrics.step_samples(steps)
    assert out["step"].tolist() == [1, 2]
    # other = wall - (1/2 + 1/4 + 1/8) wall = wall / 8
    assert out["other_ms"].tolist() == [1.25, 2.5]
    assert out["samples_per_s"].tolist() == [200.0, 100.0]
    assert out["flow_steps_per_s"].tolist() == [10_000.0, 5_000.0]


def test_step_samples_leave_out_traced_steps():
    steps = _steps([5.0, 10.0, 50.0, 12.0])
    steps["traced"] = [0, 0, 1, 0]
    assert metrics.step_samples(steps)["wall_ms"].tolist() == [5.0, 10.0, 12.0]
    steps["traced"] = 1  # every step traced: keep them rather than nothing
    assert metrics.step_samples(steps)["wall_ms"].tolist() == [5.0, 10.0, 50.0, 12.0]


def test_compare_metrics_exact_rows():
    base = metrics.step_samples(_steps([10.0] * 6))
    new = metrics.step_samples(_steps([20.0] * 6))
    table = metrics.compare_metrics(metrics.STEP_METRICS, base, new, StatsConfig())
    assert list(table.columns) == list(metrics.SUMMARY_COLUMNS)
    row = table.iloc[0]
    assert (row["metric"], row["unit"], row["base"], row["new"], row["delta"], row["ratio"]) == (
        "step time", "ms", 10.0, 20.0, 10.0, 2.0)
    assert (row["ci_low"], row["ci_high"], row["noise_pct"], row["verdict"], row["gated"]) == (
        2.0, 2.0, 5.0, WORSE, True)
    by = table.set_index("metric")
    assert by.loc["samples per second", "ratio"] == 0.5
    assert by.loc["samples per second", "verdict"] == WORSE  # higher is better
    peak = by.loc["peak tensor memory"]  # max over steps 1000..1005: identical in both runs
    assert (peak["base"], peak["new"], peak["ratio"], peak["verdict"]) == (1005, 1005, 1.0,
                                                                           "equal")
    assert math.isnan(peak["ci_low"]) and peak["noise_pct"] == 0.0 and peak["kind"] == "exact"
    assert (by.loc["peak tensor memory", "n_base"], by.loc["peak tensor memory", "n_new"]) == (
        6, 6)
    assert "1.050" in row["rule"] and "0.952" in row["rule"]  # 1 + t and 1 / (1 + t)


def test_compare_metrics_marks_a_metric_missing_in_one_run():
    spec = metrics.MetricSpec("category", "peak [region/x]", "region/x/peak_bytes", "bytes",
                              statistic="max", noisy=False, gated=True)
    base = pd.DataFrame({"region/x/peak_bytes": [5.0, 7.0]})
    table = metrics.compare_metrics([spec], base, pd.DataFrame(), StatsConfig())
    row = table.iloc[0]
    assert (row["base"], row["verdict"], row["n_base"], row["n_new"]) == (7.0, "n/a", 2, 0)
    assert math.isnan(row["new"])


def _memory():
    rows = []
    for step in (0, 1, 2):
        rows.append({"step": step, "view": "region", "category": "carrier",
                     "live_bytes": 10 * step, "peak_bytes": 100 + step, "alloc_count": 2,
                     "alloc_bytes": 64, "pool_hits": None, "pool_misses": None})
        rows.append({"step": step, "view": "region", "category": "neuron",
                     "live_bytes": 5, "peak_bytes": 50, "alloc_count": 1,
                     "alloc_bytes": 32, "pool_hits": None, "pool_misses": None})
        rows.append({"step": step, "view": "pool", "category": "scratch", "live_bytes": 0,
                     "peak_bytes": 8, "alloc_count": 4, "alloc_bytes": 8,
                     "pool_hits": 3, "pool_misses": 1})
    return pd.DataFrame(rows)


def test_category_samples_wide_table_of_measured_steps():
    steps = _steps([1.0, 1.0, 1.0], phase=["warmup", "measured", "measured"])
    wide = metrics.category_samples(_memory(), steps)
    assert wide["region/carrier/peak_bytes"].tolist() == [101, 102]
    assert wide["pool/scratch/alloc_count"].tolist() == [4, 4]
    specs = metrics.category_specs(list(wide.columns), [], {"region/carrier": 102,
                                                           "region/neuron": 50})
    assert [s.metric for s in specs[:3]] == [
        "peak [region/carrier]", "peak [region/neuron]", "peak [pool/scratch]"]
    assert all(s.gated for s in specs[:3]) and not any(s.gated for s in specs[3:])


# --- categories ---------------------------------------------------------------------------
def test_category_timeline_and_peaks():
    steps = _steps([1.0, 1.0, 1.0], phase=["warmup", "measured", "measured"])
    timeline = categories.category_timeline(_memory())
    assert timeline.index.tolist() == [0, 1, 2]
    assert timeline["carrier"].tolist() == [0, 10, 20] and timeline["neuron"].tolist() == [5] * 3
    peaks = categories.category_peaks(_memory(), steps)
    assert peaks.to_dict() == {"carrier": 102, "neuron": 50}


def test_pool_summary_hit_rates():
    steps = _steps([1.0, 1.0, 1.0], phase=["warmup", "measured", "measured"])
    pool = categories.pool_summary(None, steps, _memory(), steps)
    row = pool.iloc[0]
    assert row["category"] == "scratch"
    assert (row["new_hits"], row["new_misses"], row["new_hit_rate"]) == (6, 2, 0.75)
    assert math.isnan(row["base_hits"]) and math.isnan(row["base_hit_rate"])
    assert categories.pool_summary(None, steps, None, steps).empty


# --- operators ----------------------------------------------------------------------------
def test_operator_deltas_per_step_and_sorted_by_change():
    base = pd.DataFrame({"name": ["mm", "gru", "add"], "count": [4, 2, 8],
                         "self_us": [400.0, 1000.0, 80.0], "total_us": [500.0, 1200.0, 80.0],
                         "self_device_us": 0.0, "total_device_us": 0.0})
    new = pd.DataFrame({"name": ["mm", "gru", "cat"], "count": [4, 2, 2],
                        "self_us": [400.0, 1600.0, 20.0], "total_us": [500.0, 2000.0, 20.0],
                        "self_device_us": 0.0, "total_device_us": 0.0})
    operator_rows = operators.operator_deltas(base, new, base_steps=2, new_steps=2, top=3)
    assert operator_rows["name"].tolist() == ["gru", "add", "cat"]
    gru = operator_rows.iloc[0]
    assert (gru["base_self_us"], gru["new_self_us"], gru["delta_self_us"]) == (500, 800, 300)
    assert (gru["delta_total_us"], gru["ratio_self"], gru["new_count"]) == (400, 1.6, 1)
    add = operator_rows.iloc[1]
    assert (add["base_self_us"], add["new_self_us"], add["delta_self_us"]) == (40, 0, -40)
    assert math.isnan(operator_rows.iloc[2]["ratio_self"])  # "cat" is new
    assert operators.operator_deltas(None, None).empty


# --- metadata -----------------------------------------------------------------------------
def _meta(preset="debug", device="cpu", width=4, variant="after", name="a"):
    return {"name": name, "status": "complete", "started_at": "t",
            "config": {"preset": preset, "variant": variant,
                       "model": {"lattice_width": width, "lattice_height": 4,
                                 "lattice_depth": 4}},
            "device": {"type": device, "name": device}, "command": ["x", name]}


def test_metadata_diff_highlights_real_differences_first():
    table = metadata.metadata_diff(_meta(name="a"), _meta(variant="before", name="b"))
    assert table.iloc[0].to_dict() == {"key": "config.variant", "base": "after",
                                       "new": "before", "differs": True}
    by = table.set_index("key")
    assert bool(by.loc["name", "differs"]) is False and by.loc["name", "new"] == "b"
    assert by.loc["command", "new"] == "x b"
    assert int(table["differs"].sum()) == 1


def test_comparability_problems_name_the_difference():
    assert metadata.comparability_problems(_meta(), _meta(variant="before")) == []
    problems = metadata.comparability_problems(_meta(), _meta(preset="experiment", width=8,
                                                              device="cuda"))
    assert problems == ["preset differs: debug vs experiment", "device type differs: cpu vs cuda",
                        "device name differs: cpu vs cuda",
                        "lattice (W x H x D) differs: 4 x 4 x 4 vs 8 x 4 x 4"]


# --- nvml ---------------------------------------------------------------------------------
def test_nvml_peaks_and_reconciliation():
    table = pd.DataFrame({
        "ts": [1.0, 2.0, 3.0], "gpu": [0, 0, 0], "used_bytes": [100.0, 300.0, 900.0],
        "total_bytes": 1000.0, "process_bytes": [50.0, 250.0, None], "util_gpu_pct": [10, 30, 50],
        "util_mem_pct": None, "power_w": [100.0, 150.0, 120.0], "temperature_c": [40, 45, 41],
        "torch_allocated_bytes": [10.0, 200.0, 0.0], "torch_cache_bytes": [5.0, 50.0, 0.0],
        "non_torch_bytes": [85.0, 40.0, 0.0], "lost": [0, 0, 1],  # last sample lost
    })
    peaks = nvml.nvml_peaks(table).iloc[0].to_dict()
    assert peaks == {"gpu": "0", "samples": 2, "peak_used_bytes": 300.0,
                     "peak_process_bytes": 250.0, "peak_power_w": 150.0,
                     "max_temperature_c": 45, "median_util_gpu_pct": 20.0}
    recon = nvml.reconcile(table).iloc[0]
    assert (recon["used_bytes"], recon["explained_bytes"], recon["residual_bytes"]) == (
        300.0, 290.0, 10.0)
    assert nvml.nvml_peaks(None).empty and nvml.reconcile(None).empty


# --- regression gate ----------------------------------------------------------------------
def test_regressions_only_gated_worse_beyond_threshold():
    summary = pd.DataFrame({
        "metric": ["step time", "forward", "peak", "samples/s", "small"],
        "verdict": [WORSE, WORSE, WORSE, WORSE, WORSE],
        "gated": [True, False, True, True, True],
        "lower_is_better": [True, True, True, False, True],
        "ratio": [1.10, 1.50, 1.30, 0.80, 1.04],
    })
    assert regressions(summary, 0.05)["metric"].tolist() == ["step time", "peak", "samples/s"]
    assert regressions(summary, 0.20)["metric"].tolist() == ["peak"]
