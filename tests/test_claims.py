"""Claims: the assessment rule on exact values, and ``python -m profiler claims`` at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from profiler.claims.spec import CLAIMS, NO, NOT_MEASURED, PARTLY, YES, Measurement, assess

BY_KEY = {c.key: c for c in CLAIMS}


@pytest.mark.parametrize("key, before, after, expected, factor", [
    ("flow_init", 3.0, 0.2, YES, 15.0),      # < 0.5 s and 15x >= 10x
    ("flow_init", 3.0, 0.4, PARTLY, 7.5),    # bound holds, factor short of 10x
    ("flow_init", 30.0, 0.6, PARTLY, 50.0),  # factor holds, bound missed
    ("flow_init", 1.0, 0.8, NO, 1.25),
    ("training", 10.0, 45.0, YES, 4.5),      # "~": 45 > 50 / 1.2 and 4.5 >= 5 / 1.2
    ("training", 10.0, 40.0, NO, 4.0),       # 40 < 41.67 and 4.0 < 4.17
    ("training", 20.0, 45.0, PARTLY, 2.25),  # bound holds, factor does not
    ("rounding_arithmetic", 0.1, 0.0005, YES, 200.0),
    ("pool_peak", 100.0, 60.0, YES, 100 / 60),
    ("pool_peak", 100.0, 80.0, NO, 1.25),
])
def test_assess_bound_and_factor(key, before, after, expected, factor):
    claim = BY_KEY[key]
    holds, measured_factor, _ = assess(claim, Measurement(key, before, after, "cpu"))
    assert measured_factor == pytest.approx(factor)
    assert holds == expected


def test_assess_uses_a_paired_factor_when_given():
    claim = BY_KEY["pool_forward"]
    holds, factor, _ = assess(claim, Measurement("pool_forward", 100.0, 101.0, "cpu",
                                                 factor=1.2))
    assert (holds, factor) == (YES, 1.2)


@pytest.mark.parametrize("verdicts, expected", [
    (("leak", "stable"), YES), (("stable", "stable"), PARTLY), (("leak", "leak"), NO),
    (("stable", "insufficient data"), NOT_MEASURED), (None, NOT_MEASURED),
])
def test_assess_cleanup_by_leak_verdicts(verdicts, expected):
    m = Measurement("memory_cleanup", 500.0, 10.0, "cpu", note="n")
    assert assess(BY_KEY["memory_cleanup"], m, verdicts) == (expected, None, "n")


def test_unmeasured_claim():
    assert assess(BY_KEY["pool_oom"], None)[0] == NOT_MEASURED


def _claims(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "profiler", "claims", *args],
                          capture_output=True, text=True, timeout=400,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_claims_cli_tiny(tmp_path, tiny_sets):
    tiny = tiny_sets
    proc = _claims("--device", "cpu", "--threads", "1", "--flows", "2000", "--repeats", "2",
                   "--steps", "2",
                   "--cleanup-steps", "9", "--pool-steps", "3", "--out", str(tmp_path), *tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("claims.md", "claims.csv", "claims.html", "claims.json"):
        assert (tmp_path / name).is_file()
    table = pd.read_csv(tmp_path / "claims.csv")
    assert len(table) == len(CLAIMS)
    assert list(table.columns) == ["claim", "before", "after", "measured_before",
                                   "measured_after", "unit", "factor_claimed",
                                   "factor_measured", "device", "holds", "note"]
    assert set(table["holds"]) <= {YES, PARTLY, NO, NOT_MEASURED}
    rows = table.set_index("claim")
    init = rows.loc["flow initialization, 100k+ flows (loop -> batched)"]
    assert init["measured_before"] > 0 and init["measured_after"] > 0
    assert init["factor_measured"] == pytest.approx(init["measured_before"]
                                                    / init["measured_after"])
    assert init["note"].startswith("1,936 flows")  # 2000 -> a 44 x 44 surface, one sample
    measured = table[table["holds"] != NOT_MEASURED]
    assert len(measured) == 7 and (measured["measured_before"] > -1e9).all()
    assert (measured["device"] == "cpu (1 thread)").all()
    cleanup = rows.loc["memory use (cleanup off -> on): growth per step"]
    assert "cleanup only releases CUDA cache" in cleanup["note"]
    md = (tmp_path / "claims.md").read_text()
    assert "| tensor memory pool: OOM errors | - | -90% OOM errors |" in md
    assert "flow initialization, 100k+ flows (loop -> batched)" in md


@pytest.mark.slow
def test_claims_cli_rejects_bad_override(tmp_path):
    proc = _claims("--device", "cpu", "--set", "carrier_hidden=wide", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "carrier_hidden" in proc.stderr and "expected a int" in proc.stderr
