"""Significance of a before/after difference on per-step samples.

The statistic of a metric is a quantile (median, p90) of its per-step samples.
``compare_samples`` returns the ratio new / base of that statistic with a
seeded percentile-bootstrap confidence interval (base and new resampled
independently), and ``verdict`` turns it into better / worse / within noise:
a difference counts only when the interval excludes 1 AND the ratio is beyond
the noise threshold. With fewer than ``min_samples`` samples on either side
there is no interval and the verdict is always "within noise".

The noise threshold of a noisy metric (times, RSS) is the larger of a floor
and twice the drift of either run, where drift is the relative difference
between the medians of the first and second half of the run's measured steps
(how much the metric moves within one run without any change to the code).
Deterministic metrics (allocator bytes and counts with fixed seeds) use the
floor alone. A memory difference smaller than ``min_bytes`` is noise whatever
its ratio (a 200-byte category that doubles is not a regression); likewise a
time difference smaller than ``min_ms`` (a 0.2 ms bookkeeping remainder that
grows by 0.04 ms between two processes is not a regression).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BETTER, WORSE, NOISE = "better", "worse", "within noise"


@dataclass(frozen=True)
class StatsConfig:
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    min_samples: int = 5
    noisy_floor: float = 0.05  # relative noise threshold floor for times, RSS
    deterministic_floor: float = 0.02  # for allocator bytes / counts
    drift_factor: float = 2.0
    min_bytes: int = 64 * 1024  # memory differences below this are noise whatever the ratio
    min_ms: float = 0.5  # time differences below this are noise whatever the ratio

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if self.min_samples < 2:
            raise ValueError(f"min_samples must be >= 2, got {self.min_samples}")
        if self.noisy_floor < 0 or self.deterministic_floor < 0 or self.min_bytes < 0 \
                or self.min_ms < 0:
            raise ValueError("noise floors must be >= 0")


@dataclass(frozen=True)
class Comparison:
    base: float  # statistic of the base samples
    new: float
    ratio: float  # new / base (nan when base is 0 and new is not)
    ci_low: float  # confidence interval of the ratio (nan without enough samples)
    ci_high: float


def statistic(samples: np.ndarray | None, q: float) -> float:
    """The ``q`` quantile of the finite samples (nan when there are none)."""
    if samples is None:
        return float("nan")
    samples = _finite(samples)
    return float(np.quantile(samples, q)) if samples.size else float("nan")


def ratio_of(base: float, new: float) -> float:
    """new / base; 1 when both are 0, inf when only base is 0 and new is positive."""
    if base == 0:
        if new == 0:
            return 1.0
        return float("inf") if new > 0 else float("nan")
    return new / base


def compare_samples(base: np.ndarray, new: np.ndarray, q: float,
                    config: StatsConfig) -> Comparison:
    """Statistic ``q`` of both sample sets, their ratio and its bootstrap interval."""
    base, new = _finite(base), _finite(new)
    b_stat, n_stat = statistic(base, q), statistic(new, q)
    ratio = ratio_of(b_stat, n_stat) if base.size and new.size else float("nan")
    lo = hi = float("nan")
    if min(base.size, new.size) >= config.min_samples and not np.isnan(ratio):
        rng = np.random.default_rng(config.seed)
        b_boot = bootstrap_quantile(np.sort(base), q, config.resamples, rng)
        n_boot = bootstrap_quantile(np.sort(new), q, config.resamples, rng)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(b_boot == 0, np.where(n_boot == 0, 1.0, np.inf), n_boot / b_boot)
        alpha = (1 - config.confidence) / 2
        # order statistics, not interpolation: conservative, and exact with infinite ratios
        lo = float(np.quantile(ratios, alpha, method="lower"))
        hi = float(np.quantile(ratios, 1 - alpha, method="higher"))
    return Comparison(b_stat, n_stat, ratio, lo, hi)


def bootstrap_quantile(sorted_samples: np.ndarray, q: float, resamples: int,
                       rng: np.random.Generator) -> np.ndarray:
    """``resamples`` draws of the ``q`` quantile (numpy's linear interpolation) of a
    bootstrap resample of ``sorted_samples``, without building the resamples.

    A resample element is ``x[floor(U * n)]`` for a uniform U, so the k-th smallest
    element of a resample is ``x[floor(U_(k) * n)]`` where U_(k), the k-th order
    statistic of n uniforms, is Beta(k, n + 1 - k); the next one is
    U_(k) + (1 - U_(k)) * Beta(1, n - k). Exact, and O(resamples) instead of
    O(resamples * n).
    """
    x = np.asarray(sorted_samples, dtype=np.float64)
    n = x.size
    h = (n - 1) * q
    k = int(np.floor(h)) + 1  # 1-based rank of the lower order statistic
    frac = h - (k - 1)
    u1 = rng.beta(k, n + 1 - k, resamples)
    low = x[np.minimum((u1 * n).astype(np.int64), n - 1)]
    if frac <= 0 or k >= n:
        return low
    u2 = u1 + (1 - u1) * rng.beta(1, n - k, resamples)
    high = x[np.minimum((u2 * n).astype(np.int64), n - 1)]
    return low + frac * (high - low)


def drift(samples: np.ndarray) -> float:
    """Relative difference of the medians of the first and second half (0 if < 4 samples)."""
    samples = _finite(samples)
    if samples.size < 4:
        return 0.0
    half = samples.size // 2
    first, second = np.median(samples[:half]), np.median(samples[-half:])
    scale = max(abs(first), abs(second))
    return float(abs(second - first) / scale) if scale > 0 else 0.0


def noise_threshold(base: np.ndarray, new: np.ndarray, noisy: bool, config: StatsConfig) -> float:
    """Relative threshold below which a difference is noise (see module docstring)."""
    if not noisy:
        return config.deterministic_floor
    return max(config.noisy_floor, config.drift_factor * max(drift(base), drift(new)))


def verdict(ratio: float, ci_low: float, ci_high: float, threshold: float,
            lower_is_better: bool, single_value: bool = False) -> str:
    """better / worse / within noise for a ratio new / base.

    The threshold is symmetric in ratio: beyond noise means above 1 + t or below
    1 / (1 + t), so a metric and its inverse (time, throughput) agree.

    A per-step metric without an interval (too few samples) is always within
    noise. A ``single_value`` metric (one number per run, such as the run's
    peak) has no interval: the ratio alone decides against the threshold.
    """
    has_ci = not (np.isnan(ci_low) or np.isnan(ci_high))
    if np.isnan(ratio) or (not has_ci and not single_value):
        return NOISE
    up = ratio > 1 + threshold and (not has_ci or ci_low > 1)
    down = ratio < 1 / (1 + threshold) and (not has_ci or ci_high < 1)
    if up:
        return WORSE if lower_is_better else BETTER
    if down:
        return BETTER if lower_is_better else WORSE
    return NOISE


def _finite(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    return samples[np.isfinite(samples)]
