"""Profiling any training loop: ``profiler.profile(...)`` in-process, the examples and
``--workload`` through real subprocesses, per-module attribution, HolisticTraceAnalysis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import profiler
from profiler.analyze import steps as step_rules
from profiler.analyze.report import ReportConfig, build_report
from profiler.cli import main
from profiler.collect.modules import ModuleScopes, auto_depth
from profiler.errors import RunDirError
from profiler.parse.run import load_run
from profiler.rundir import (
    LEGACY_RUN_JSON,
    OPTIONAL_STEPS_COLUMNS,
    RUN_JSON,
    STEPS_COLUMNS,
    trace_files,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64))
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


def train(run_dir: Path, steps: int = 8, mode: str = "full", fail_at: int | None = None,
          **options) -> profiler.Profile:
    torch.manual_seed(0)
    model = Mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with profiler.profile(run_dir, mode=mode, model=model, optimizer=opt, log=None,
                          **options) as prof:
        for i in range(steps):
            x, y = torch.randn(16, 32), torch.randn(16, 1)
            with prof.phase("forward"):
                out = model(x)
                with torch.profiler.record_function("my_loss"):
                    loss = nn.functional.mse_loss(out, y) + 0 * out.pow(2).mean()
            with prof.phase("backward"):
                loss.backward()
            if fail_at == i:
                torch.empty(1 << 60, dtype=torch.uint8)  # the CPU allocator refuses: real OOM
            with prof.phase("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            prof.step(loss=loss, samples=16, lr=opt.param_groups[0]["lr"])
    return prof


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlp")
    return [train(root / name) for name in ("a", "b")]


def test_profile_writes_a_run_directory_of_the_user_loop(mlp_runs):
    prof = mlp_runs[0]
    assert prof.status == "complete"
    meta = json.loads((prof.run_dir / RUN_JSON).read_text())
    assert meta["status"] == "complete" and meta["steps_completed"] == 8
    assert meta["config"]["workload"] == "user loop" and meta["config"]["preset"] is None
    steps = pd.read_csv(prof.run_dir / "steps.csv")
    assert list(steps.columns[: len(STEPS_COLUMNS)]) == list(STEPS_COLUMNS)
    assert "lr" in steps.columns and (steps["lr"] == 1e-3).all()  # step(**fields) -> columns
    assert not set(OPTIONAL_STEPS_COLUMNS) & set(steps.columns)  # no energy_flow columns
    assert steps["phase"].tolist() == ["warmup"] * 3 + ["measured"] * 5
    assert steps["traced"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]  # wait 2, warmup 1, active 3
    parts = steps[["forward_ms", "backward_ms", "optimizer_ms"]]
    assert (parts > 0).all().all() and (parts.sum(axis=1) <= steps["wall_ms"]).all()
    assert steps["loss"].notna().all() and (steps["samples"] == 16).all()
    assert len(trace_files(prof.run_dir)) == 1


def _same_figures_as_every_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The tensor counter, host load and measured-step figures every profile path records."""
    meta = json.loads((run_dir / RUN_JSON).read_text())
    steps = pd.read_csv(run_dir / "steps.csv")
    assert meta["device"]["allocator_stats"] == "tensor counter (counting CPU allocator)"
    measured = steps[steps["phase"] == "measured"]
    assert (measured["alloc_count"] > 0).all() and (measured["alloc_bytes"] > 0).all()
    assert (measured["peak_bytes"] >= measured["allocated_bytes"]).all()
    assert steps["reserved_bytes"].isna().all()
    # process figures: the first step, then every monitor interval (10 steps); a run of
    # known length (--workload) samples its last step too
    sampled = (steps["step"] == 0) | ((steps["step"] + 1) % 10 == 0)
    other = ~sampled & (steps["step"] != steps["step"].max())
    assert steps.loc[sampled, ["heap_bytes", "rss_bytes"]].notna().all().all()
    assert steps.loc[other, ["heap_bytes", "rss_bytes"]].isna().all().all()
    load = meta["host_load"]
    assert load["cpu_model"] and isinstance(load["under_load"], bool)
    mask = step_rules.measured_mask(steps)
    t = meta["timings"]
    assert t["measured_steps"] == int(mask.sum())
    assert t["step_ms_median"] == pytest.approx(float(steps.loc[mask, "wall_ms"].median()))
    return steps, meta


def test_user_loop_counts_tensors_and_host_load_like_the_energy_flow_path(mlp_runs):
    a, meta = _same_figures_as_every_run(mlp_runs[0].run_dir)
    b, _ = _same_figures_as_every_run(mlp_runs[1].run_dir)
    assert meta["timings"]["measured_steps"] == 2  # steps 6 and 7: measured, not traced
    assert meta["timings"]["samples_per_s"] == pytest.approx(
        float((16 * 1000.0 / a.loc[step_rules.measured_mask(a), "wall_ms"]).median()))
    assert meta["trace"]["heap_trimmed"] in (True, False)
    # same seed, same loop: the allocations of every step are identical
    assert a["alloc_count"].tolist() == b["alloc_count"].tolist()
    assert a["alloc_bytes"].tolist() == b["alloc_bytes"].tolist()


def test_module_attribution_adds_up_with_user_scopes_and_backward(mlp_runs):
    run_dir = mlp_runs[0].run_dir
    meta = json.loads((run_dir / RUN_JSON).read_text())
    check = meta["attribution"]
    assert check["ok"] and check["tolerance_bytes"] == 0
    assert check["sum_categories_bytes"] == check["allocator_total_bytes"]
    assert check["module_depth"] == 2  # auto: every module of this small model
    alloc = pd.read_csv(run_dir / "allocations.csv")
    grown = alloc[alloc["bytes"] > 0]
    by_region = grown.groupby("region")["bytes"].sum()
    # forward: each Linear's output; backward: its weight gradient (op aten::mm in a
    # backward node) lands on the module whose forward made the node
    for module, (fan_in, fan_out) in {"encoder.0": (32, 64), "encoder.2": (64, 64),
                                      "head": (64, 1)}.items():
        rows = grown[grown["region"] == module]
        assert (rows["bytes"] == 16 * fan_out * 4).any(), module  # forward output [16, out]
        assert (rows["bytes"] == fan_in * fan_out * 4).any(), module  # weight gradient
    assert {"my_loss", "optimizer"} <= set(by_region.index)
    # the root's own work (torch.relu between encoder and head) is the root's: [16, 64] floats
    assert (grown.loc[grown["region"] == "Mlp", "bytes"] == 16 * 64 * 4).any()
    memory = pd.read_csv(run_dir / "memory_by_category.csv")
    region = memory[memory["view"] == "region"]
    assert {"Mlp", "encoder", "encoder.0", "encoder.1", "encoder.2", "head", "other"} <= set(
        region["category"])
    assert not {"mapper", "carrier"} & set(region["category"])  # no energy_flow regions
    last = region[region["step"] == region["step"].max()]
    assert last["live_bytes"].sum() == check["allocator_total_bytes"]


def test_report_compares_two_user_loop_runs_without_flow_metrics(mlp_runs):
    base, new = (load_run(p.run_dir) for p in mlp_runs)
    report = build_report(base, new, ReportConfig())
    metrics = set(report.summary["metric"])
    assert "samples per second" in metrics and "step time" in metrics
    assert not any("flow" in m for m in metrics)
    assert "peak [region/encoder.0]" in metrics


def test_failures_inside_the_block_leave_their_status(tmp_path):
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        train(tmp_path / "oom", steps=6, fail_at=4)
    meta = json.loads((tmp_path / "oom" / RUN_JSON).read_text())
    assert meta["status"] == "oom" and meta["steps_completed"] == 4
    assert "allocated_bytes" in meta["memory_at_failure"]
    with pytest.raises(ZeroDivisionError):
        with profiler.profile(tmp_path / "failed", mode="light", log=None) as prof:
            prof.step(loss=1.0)
            1 / 0  # noqa: B018
    meta = json.loads((tmp_path / "failed" / RUN_JSON).read_text())
    assert meta["status"] == "failed" and meta["error"]["type"] == "ZeroDivisionError"
    assert pd.read_csv(tmp_path / "failed" / "steps.csv")["loss"].tolist() == [1.0]


def test_a_user_loop_keeps_the_record_as_it_goes_and_holds_its_name(tmp_path):
    run_dir = tmp_path / "live"
    with profiler.profile(run_dir, mode="light", monitor_interval=2, log=None) as prof:
        for i in range(5):
            prof.step(loss=float(i))
            if i == 3:  # two heartbeats so far: steps 0-3 on disk, a running record
                steps = pd.read_csv(run_dir / "steps.csv")
                assert steps["step"].tolist() == [0, 1, 2, 3]
                assert steps["loss"].tolist() == [0.0, 1.0, 2.0, 3.0]
                meta = json.loads((run_dir / RUN_JSON).read_text())
                assert meta["status"] == "running"
                assert meta["heartbeat"]["pid"] == os.getpid()
                assert meta["heartbeat"]["steps_completed"] in (2, 4)  # the 2nd: background
                assert load_run(run_dir).status == "running"  # its writer is alive
                with pytest.raises(RunDirError, match="in use by another profile"):
                    with profiler.profile(run_dir, mode="light", overwrite=True, log=None):
                        pass
    meta = json.loads((run_dir / RUN_JSON).read_text())
    assert meta["status"] == "complete" and meta["steps_completed"] == 5
    assert meta["heartbeat"]["phase"] == "finished" and meta["timings"]["heartbeats"] == 2
    assert pd.read_csv(run_dir / "steps.csv")["step"].tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["live"]  # lock released, nothing staged


def test_cpu_light_steps_are_recorded_at_the_heartbeat_or_after_at_most_a_few_seconds(
        tmp_path, monkeypatch):
    def recorded_after_each_step(name: str) -> list[int]:
        seen = []
        with profiler.profile(tmp_path / name, mode="light", monitor_interval=3,
                              log=None) as prof:
            for i in range(7):
                prof.step(loss=float(i))
                seen.append(len(prof.session.rows))
        steps = pd.read_csv(tmp_path / name / "steps.csv")
        assert steps["step"].tolist() == list(range(7))  # every row, the last ones at the end
        assert steps["loss"].tolist() == [float(i) for i in range(7)]
        return seen

    # captured, then recorded in threes at the heartbeats
    assert recorded_after_each_step("batched") == [0, 0, 3, 3, 3, 6, 6]
    # a step older than DEFER_MAX_S is recorded at the next step at the latest
    monkeypatch.setattr(profiler.api, "DEFER_MAX_S", 0.0)
    assert recorded_after_each_step("timely") == [1, 2, 3, 4, 5, 6, 7]


def test_cpu_light_rows_captured_between_heartbeats_match_rows_read_at_each_step(tmp_path):
    def run(name: str, interval: int) -> tuple[pd.DataFrame, profiler.Profile]:
        torch.manual_seed(0)
        model = Mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        total = torch.zeros(())
        with profiler.profile(tmp_path / name, mode="light", model=model, log=None,
                              monitor_interval=interval) as prof:
            assert prof.phase("forward") is prof.phase("forward")  # one object per name
            for _ in range(12):
                x, y = torch.randn(16, 32), torch.randn(16, 1)
                with prof.phase("forward"):
                    loss = nn.functional.mse_loss(model(x), y)
                    with prof.phase("forward") as inner:  # nested in itself: its own clock
                        assert inner is prof
                with prof.phase("backward"):
                    loss.backward()
                with prof.phase("optimizer"):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                total += 1  # changed in place after step(): its value is read at the step
                prof.step(loss=loss, total=total)
        return pd.read_csv(tmp_path / name / "steps.csv"), prof

    batched, prof = run("batched", 5)   # rows captured, recorded every 5 steps
    each, _ = run("each", 1)            # every row read and recorded at its step
    assert prof.status == "complete"
    assert batched["total"].tolist() == [float(i) for i in range(1, 13)]
    counts = ["allocated_bytes", "peak_bytes", "alloc_count", "alloc_bytes"]
    assert batched[counts].equals(each[counts])  # deterministic: same figures either way
    assert (batched["alloc_count"] > 0).all() and batched["loss"].notna().all()
    sampled = batched["step"].isin([0, 4, 9])  # the first step and the heartbeats
    assert batched.loc[sampled, ["heap_bytes", "rss_bytes"]].notna().all().all()
    assert batched.loc[~sampled, ["heap_bytes", "rss_bytes"]].isna().all().all()
    parts = batched[["forward_ms", "backward_ms", "optimizer_ms"]]
    assert (parts > 0).all().all() and (parts.sum(axis=1) <= batched["wall_ms"]).all()
    # a step's wall time runs from the end of the one before (or of its heartbeat's
    # bookkeeping) to its own end
    ends = batched["end_ts"].diff().iloc[1:] * 1e3
    assert (batched["wall_ms"].iloc[1:] <= ends + 0.1).all()


def test_bad_arguments_raise_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        profiler.profile(tmp_path / "x", mode="fast")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        profiler.profile(tmp_path / "x", model=object())
    assert not (tmp_path / "x").exists()
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True replaces it"):
        profiler.profile(tmp_path / "x")


def test_auto_depth_keeps_categories_readable():
    names = ["", "encoder", "encoder.layers"] + [f"encoder.layers.{i}" for i in range(12)] + [
        f"encoder.layers.{i}.{part}" for i in range(12) for part in ("attn", "mlp", "norm")]
    assert auto_depth(names) == 3  # depth 4 would give 51 categories
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2,
                                  enable_nested_tensor=False)
    scopes = ModuleScopes(model, depth=2)
    assert scopes.categories == ["TransformerEncoder", "layers", "layers.0", "layers.1"]


def _run(cmd, cwd=ROOT, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


@pytest.mark.slow
def test_examples_run_as_scripts_and_as_workloads(tmp_path):
    # the transformer through profiler.profile in its own script
    proc = _run([sys.executable, str(EXAMPLES / "transformer.py"), str(tmp_path / "t"), "8"])
    assert proc.returncode == 0, proc.stderr
    t = load_run(tmp_path / "t")
    assert t.status == "complete" and "tokens" in t.steps.columns
    assert t.meta["attribution"]["ok"]
    regions = set(t.memory.loc[t.memory["view"] == "region", "category"])
    assert {"embed", "encoder.layers.0.self_attn", "encoder.layers.1.linear1", "head"} <= regions
    # the CNN from its file, and the transformer by module name, through --workload
    proc = _run([sys.executable, "-m", "profiler", "profile", "--workload",
                 "examples/cnn.py:make_workload", "--steps", "7", "--out", str(tmp_path),
                 "--name", "c"])
    assert proc.returncode == 0, proc.stderr
    c = load_run(tmp_path / "c")
    assert c.meta["config"]["workload"] == "examples/cnn.py:make_workload"
    regions = set(c.memory.loc[c.memory["view"] == "region", "category"])
    assert {"0.0", "1.0", "loss"} <= regions and c.meta["attribution"]["ok"]
    assert "flow-steps" not in proc.stdout and "samples/s" in proc.stdout
    _same_figures_as_every_run(tmp_path / "c")
    proc = _run([sys.executable, "-m", "profiler", "profile", "--workload",
                 "transformer:make_workload", "--mode", "light", "--steps", "4", "--out",
                 str(tmp_path), "--name", "m"], cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    assert load_run(tmp_path / "m").steps["tokens"].tolist() == [256] * 4


@pytest.mark.parametrize("spec, extra, message", [
    ("nothing_here", [], "expected module:factory or path/to/file.py:factory"),
    ("examples/missing.py:make", [], "no file examples/missing.py"),
    ("examples/cnn.py:nope", [], "has no callable 'nope'"),
    ("no_such_package.mod:make", [], "cannot import no_such_package.mod"),
    ("examples/cnn.py:make_workload", ["--preset", "experiment"],
     "--preset applies to the energy_flow workload only"),
])
def test_bad_workload_specs_give_one_clear_error(tmp_path, capsys, monkeypatch, spec, extra,
                                                 message):
    monkeypatch.chdir(ROOT)  # specs are relative to where the command runs
    code = main(["profile", "--workload", spec, *extra, "--out", str(tmp_path), "--name", "bad"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error:") and message in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_ctrl_c_in_a_user_loop_leaves_an_interrupted_run(tmp_path):
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "transformer.py"),
                             str(tmp_path / "stop"), "100000"], stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=ROOT)
    try:
        seen = ""
        while "step 10 " not in seen:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, seen
            seen += line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    meta = json.loads((tmp_path / "stop" / RUN_JSON).read_text())
    assert meta["status"] == "interrupted" and meta["error"]["message"] == "stopped by SIGINT"
    assert len(pd.read_csv(tmp_path / "stop" / "steps.csv")) == meta["steps_completed"] >= 10


# HTA 0.5 uses pandas calls that pandas itself now deprecates: their warnings are HTA's
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_holistic_trace_analysis_loads_a_run_directory_as_it_is(mlp_runs):
    hta = pytest.importorskip("hta.trace_analysis")
    run_dir = mlp_runs[0].run_dir
    analyzer = hta.TraceAnalysis(trace_dir=str(run_dir))
    trace = analyzer.t.get_trace(0)
    names = set(analyzer.t.symbol_table.sym_table)
    assert {"ProfilerStep#3", "module::encoder.0", "aten::addmm"} <= names
    assert len(trace) > 100


def test_old_run_directories_with_run_json_still_load(mlp_runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(mlp_runs[0].run_dir, old)
    (old / RUN_JSON).rename(old / LEGACY_RUN_JSON)
    run = load_run(old)
    assert run.status == "complete" and run.meta["steps_completed"] == 8
