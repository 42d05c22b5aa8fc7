"""``make gpu-check`` without CUDA (one line, exit 2) and its hardware-independent parts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from profiler.gpucheck import (
    CHECKS,
    gru_flops_per_flow_step,
    render_markdown,
    tf32_peak,
    write_report,
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "profiler.gpucheck", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device (torch 2.")
    assert not (tmp_path / "out").exists()


def test_the_makefile_target_runs_the_module():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    target = makefile.split("\ngpu-check:", 1)[1].split("\n\n", 1)[0]
    assert "-m profiler.gpucheck" in target


def test_tf32_peaks_and_gru_flops():
    assert tf32_peak("NVIDIA H100 80GB HBM3") == 494.7  # the SXM part
    assert tf32_peak("NVIDIA H100 PCIe") == 378.0
    assert tf32_peak("NVIDIA H100 NVL") is None  # not in the table: no share claimed
    assert tf32_peak("NVIDIA H200") == 494.7
    assert tf32_peak("NVIDIA A100-SXM4-80GB") == 156.0
    assert tf32_peak("Tesla T4") is None
    # 1 layer, hidden 2, input 3: forward 2*3*2*(3+2) = 60 FLOPs, x3 with backward
    assert gru_flops_per_flow_step(2, 3, 1) == 180.0
    assert gru_flops_per_flow_step(2, 3, 2) == 180.0 + 3 * 2 * 3 * 2 * (2 + 2)


def test_the_report_is_written_in_md_and_json(tmp_path):
    report = {"ok": False, "finished_at": "2026-01-01T00:00:00Z", "elapsed_s": 12.0,
              "tests": {"ok": False, "tests": 9, "failures": 0, "skipped": 1,
                        "skipped_tests": ["tests.test_nvml::test_x"], "failed_tests": []},
              "checks": {"syncs": {"ok": True, "syncs": 6, "lattice_steps": 5, "budget": 6},
                         "nvml_power": {"ok": False, "power_w_max": 3.1}}}
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "gpu-check.json").read_text()) == report
    md = (tmp_path / "gpu-check.md").read_text()
    assert "Overall: **FAIL**" in md and "9 run, 0 failed, 1 skipped: FAIL" in md
    assert "- tests.test_nvml::test_x" in md
    assert '| syncs | pass | `{"syncs": 6, "lattice_steps": 5, "budget": 6}` |' in md
    assert "| nvml_power | FAIL |" in md
    assert render_markdown(report) == md
    assert list(CHECKS)[:3] == ["environment", "categories", "syncs"]


def test_its_session_runner_works_on_any_device(tmp_path):
    from profiler.gpucheck import run_session

    meta = run_session(tmp_path / "r", "full", 5, device=torch.device("cpu"), tolerance_bytes=0)
    assert meta["status"] == "complete" and meta["steps_completed"] == 5
    assert meta["attribution"]["ok"] and meta["attribution"]["tolerance_bytes"] == 0
    assert meta["nvml"]["reason"] == "NVML unavailable: not sampled on a cpu run"
