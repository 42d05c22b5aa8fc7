"""The benchmark CLI runs for real (tiny settings) and writes its JSON; bad options are named."""

import json
import os
import subprocess
import sys

import pytest

from profiler.memory.bench import parse_args

METHODS = {"torch.empty", "SimpleMemoryPool", "UnifiedMemoryManager", "MemoryContext",
           "managed_memory"}


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "profiler.memory.bench", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_micro_section_writes_one_row_per_shape_write_and_method(tmp_path):
    out = tmp_path / "bench.json"
    proc = _bench("--sections", "micro", "--micro-iters", "40", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    rows = data["micro"]
    assert len(rows) == 3 * 2 * len(METHODS)
    assert {r["method"] for r in rows} == METHODS
    assert {r["shape"] for r in rows} == {"64", "256x256", "3200x256"}
    for r in rows:
        assert 0 < r["min_us"] <= r["median_us"] <= r["max_us"]
    assert "SimpleMemoryPool" in proc.stdout and f"wrote {out}" in proc.stdout
    assert "train" not in data and data["config"]["sections"] == ["micro"]


def test_bad_options_are_rejected_by_name(capsys):
    for argv, named in ((["--sections", "micro,speed"], "--sections"),
                        (["--set", "debug:warp=9"], "warp"),
                        (["--set", "batch_size=2"], "PRESET:FIELD=VALUE"),
                        (["--steps", "1"], "--steps")):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2
        assert named in capsys.readouterr().err
    cfg = parse_args(["--set", "experiment:batch_size=2", "--presets", "experiment"])
    assert cfg.overrides == {"experiment": {"batch_size": 2}} and cfg.presets == ("experiment",)
