"""`python -m energy_flow` run for real in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from energy_flow.trainer import Trainer

pytestmark = pytest.mark.slow  # subprocesses / servers: end-to-end

@pytest.fixture
def _run(tiny_sets):
    """``_run(*args)``: ``python -m energy_flow`` on the tiny config."""

    def run(*args, timeout=120):
        sets = tiny_sets
        return subprocess.run([sys.executable, "-m", "energy_flow", *args, *sets],
                              capture_output=True, text=True, timeout=timeout,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})

    return run


def test_train_jsonl_and_checkpoint_on_a_data_file(tmp_path, _run):
    ckpt, data = tmp_path / "out.pt", tmp_path / "pairs.pt"
    torch.save({"input_embeddings": torch.randn(3, 768),
                "target_embeddings": torch.randn(3, 768)}, data)
    proc = _run("train", "--preset", "debug", "--steps", "3", "--jsonl", "--device", "cpu",
                "--checkpoint", str(ckpt), "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"step", "loss", "ms", "flows_created", "flows_completed", "flows_live_peak",
                "steps_taken"} <= set(r)
        assert r["loss"] > 0 and r["ms"] > 0 and r["flows_created"] >= 32
        assert r["steps_taken"] >= 1
    assert "step 3/3" in proc.stderr  # progress goes to stderr
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and state["config"]["carrier_hidden"] == 16


def test_train_resume_from_checkpoint(tmp_path, tiny, _run):
    ckpt = tmp_path / "start.pt"
    Trainer(tiny).save_checkpoint(ckpt)
    proc = _run("train", "--steps", "1", "--jsonl", "--resume", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 1  # step counter continues from 0


def test_bad_override_and_bad_data_are_clear_errors(tmp_path, _run):
    proc = _run("train", "--steps", "1", "--set", "lattice_widht=3")
    assert proc.returncode == 2
    assert "unknown config field 'lattice_widht'" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad.pt"
    torch.save({"input_embeddings": torch.zeros(2, 768)}, bad)
    proc = _run("train", "--steps", "1", "--data", str(bad))
    assert proc.returncode == 2
    assert "missing key(s) target_embeddings" in proc.stderr
