"""Learning dynamics on the presets' defaults, the spawn budget, and divergence handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from energy_flow import learning
from energy_flow.config import ConfigError, apply_variant, make_config
from energy_flow.data import SyntheticPairs
from energy_flow.flow import spawn_counts, spawn_room
from energy_flow.model import EnergyFlowModel
from energy_flow.trainer import Trainer, TrainingDiverged

# The debug preset's dynamics (depth 10: 5 lattice steps, drift, noise, lr, spawn rule and
# budget, completion term) on a smaller surface and carrier.
SMALL = dict(lattice_width=8, lattice_height=8, batch_size=4, carrier_hidden=64,
             mapper_hidden=64, max_flows=5000)


def _train(cfg, steps):
    trainer = Trainer(cfg)
    data = SyntheticPairs(cfg.embedding_dim, seed=cfg.seed)
    records = []
    for i in range(steps):
        r = trainer.train_step(*data.batch(cfg.batch_size, i))
        records.append({"step": r.step, "loss": r.loss, "surface_loss": r.surface_loss,
                        "ms": 1.0, "flows_created": r.flows_created,
                        "flows_completed": r.flows_completed, "skipped": r.skipped})
    return trainer, records


def test_small_debug_config_learns_and_flows_complete():
    torch.manual_seed(0)
    cfg = make_config("debug", **SMALL)
    trainer, records = _train(cfg, 60)
    s = learning.summarize(records, first=10, last=10)
    assert trainer.skipped_steps == 0
    assert s["ratio"] <= 0.7, s  # the surface loss falls
    assert s["completion_last"] >= 0.5, s  # most flows reach a plane
    assert s["completion_first"] >= 0.5, s  # from the start: the head drifts to the plane
    assert s["flows_created_max"] <= cfg.initial_flows + cfg.spawn_limit


def test_initial_drift_reaches_the_plane_before_the_step_limit():
    for preset in ("debug", "experiment", "optimized"):
        cfg = make_config(preset)
        assert cfg.initial_drift * (cfg.steps_limit - 1) == pytest.approx(1.1), preset
    cfg = make_config("debug", **SMALL)
    model = EnergyFlowModel(cfg).eval()  # no exploration noise: the drift alone
    out = model(*SyntheticPairs(cfg.embedding_dim).batch(cfg.batch_size, 0))
    assert out.stats.flows_completed == out.stats.flows_created == cfg.initial_flows
    assert out.stats.steps_taken == cfg.steps_limit - 1
    assert out.completion_loss.item() == 0.0


def test_spawn_budget_holds_under_an_exploding_config():
    torch.manual_seed(0)
    # Every move spawns up to 3 children, with noise and a high lr: without a budget the
    # flows multiply step after step.
    wild = dict(SMALL, spawn_threshold=0.01, max_spawn_per_step=3, exploration_noise=0.1,
                max_flows=100_000, lr=1e-2, displacement_lr_scale=1.0, convergence_patience=100,
                convergence_threshold=1.0)
    unbounded = EnergyFlowModel(make_config("debug", **wild, spawn_budget=1000.0))
    x, y = SyntheticPairs(768).batch(4, 0)
    assert unbounded(x, y).stats.flows_created > 10 * 256
    cfg = make_config("debug", **wild)
    _, records = _train(cfg, 5)
    assert cfg.spawn_limit == 64  # 0.25 x 256 initial flows
    assert all(r["flows_created"] == 256 + 64 for r in records)  # the budget is used, and holds


def test_spawn_room_is_capacity_and_budget_on_the_device():
    kept = torch.tensor(900)
    assert spawn_room(1000, kept, 500).item() == 100  # capacity binds
    assert spawn_room(1000, kept, 30).item() == 30  # budget binds
    assert spawn_room(1000, kept, -5).item() == 0
    assert spawn_room(800, kept, 30).item() == 0
    length = torch.full((6,), 0.9)
    keep = torch.ones(6, dtype=torch.bool)
    room = spawn_room(1000, keep.sum(), 4)
    assert room.dim() == 0  # a tensor: the cut needs no host sync
    assert spawn_counts(length, keep, 0.15, 3, room).tolist() == [3, 1, 0, 0, 0, 0]


def test_optimized_preset_first_step_fits_its_capacity():
    cfg = make_config("optimized")
    assert cfg.initial_flows == 320_000 and cfg.max_flows == 1_000_000
    for preset in ("debug", "experiment", "optimized"):
        c = make_config(preset)
        assert c.initial_flows + c.spawn_limit <= c.max_flows, preset
    # The first step of optimized at its worst: every flow moves far enough for 3 children.
    keep = torch.ones(cfg.initial_flows, dtype=torch.bool)
    length = torch.full((cfg.initial_flows,), 1.0)
    children = spawn_counts(length, keep, cfg.spawn_threshold, cfg.max_spawn_per_step,
                            spawn_room(cfg.max_flows, keep.sum(), cfg.spawn_limit))
    assert children.sum().item() == cfg.spawn_limit == 80_000
    assert cfg.initial_flows + children.sum().item() <= cfg.max_flows


def test_spawn_budget_is_validated():
    with pytest.raises(ConfigError, match="spawn_budget"):
        make_config("debug", spawn_budget=-1.0)
    with pytest.raises(ConfigError, match="max_consecutive_skips"):
        make_config("debug", max_consecutive_skips=-1)
    with pytest.raises(ConfigError, match="plane_drift"):
        make_config("debug", plane_drift=0.7)
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="lr_warmup must be an integer >= 0"):
            make_config("debug", lr_warmup=bad)
    assert make_config("experiment").lr_warmup == 5 and make_config("debug").lr_warmup == 0


def test_before_variant_has_the_same_learning_dynamics(make_tiny):
    cfg = make_tiny()
    runs = {}
    for variant in ("after", "before"):
        torch.manual_seed(0)
        _, records = _train(apply_variant(cfg, variant), 4)
        runs[variant] = [(r["loss"], r["flows_created"], r["flows_completed"]) for r in records]
    assert runs["before"] == runs["after"]


def test_consecutive_non_finite_steps_stop_with_the_cause(make_tiny):
    cfg = make_tiny(lr=1e30, max_consecutive_skips=3)
    trainer = Trainer(cfg)
    data = SyntheticPairs(cfg.embedding_dim, seed=0)
    results = []
    with pytest.raises(TrainingDiverged) as info:
        for i in range(10):
            results.append(trainer.train_step(*data.batch(cfg.batch_size, i)))
    message = str(info.value)
    assert "became non-finite at step 2" in message and "lr too high?" in message
    assert "3 consecutive skipped steps" in message
    assert [r.skipped for r in results] == [False, True, True]
    assert results[1].cause.startswith(("positions", "energies", "loss", "weights"))
    assert trainer.skipped_steps == 3


def test_a_skipped_step_in_between_does_not_stop_training(make_tiny):
    trainer = Trainer(make_tiny(max_consecutive_skips=2))
    data = SyntheticPairs(768, seed=0)
    for i in range(4):
        x, y = data.batch(2, i)
        if i in (0, 2):
            x = x.clone()
            x[0, 0] = float("nan")
        trainer.train_step(x, y)
    assert trainer.skipped_steps == 2 and trainer.consecutive_skips == 0


def test_train_cli_divergence_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "energy_flow", "train", "--preset", "debug", "--steps", "8",
         "--set", "lattice_width=4", "--set", "lattice_height=4", "--set", "batch_size=2",
         "--set", "lr=1e30"],
        capture_output=True, text=True, timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "non-finite at step 2" in last
    assert "lr too high?" in last and "5 consecutive skipped steps" in last


def test_summarize_windows_and_criterion():
    records = [{"step": i + 1, "loss": 1.0 if i < 20 else 0.5, "surface_loss": None,
                "ms": 100.0 + i, "flows_created": 100, "flows_completed": 40 if i < 20 else 80,
                "skipped": False} for i in range(300)]
    s = learning.summarize(records)
    assert (s["first"], s["last"]) == (20, 50)
    assert s["first_loss"] == 1.0 and s["last_loss"] == 0.5 and s["ratio"] == 0.5
    assert s["completion_first"] == 0.4 and s["completion_last"] == 0.8
    assert s["loss_ok"] and s["completion_ok"]
    assert s["ms_first"] == 111.5 and s["ms_last"] == 389.5  # medians of steps 3-22, 281-300
    assert learning.windows(50) == (10, 10)
    with pytest.raises(ValueError, match="no training steps"):
        learning.summarize([])


def test_train_out_summary_and_curves_cli(tmp_path):
    run = tmp_path / "run.jsonl"
    sets = ["lattice_width=4", "lattice_height=4", "batch_size=2", "carrier_hidden=16",
            "carrier_layers=1", "mapper_hidden=32", "max_flows=1000"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "energy_flow", "train", "--steps", "6", "--summary",
         "--out", str(run), *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in run.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["surface_loss"] > 0 and r["completion_loss"] >= 0 for r in records)
    assert "debug: 6 steps (0 skipped); mean surface loss first 1" in proc.stdout
    # The progress line: loss and the share of flows completed on a plane.
    assert "step 6/6 loss " in proc.stderr and "flows (" in proc.stderr
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "energy_flow", "curves", f"tiny={run}",
                           "--out", str(png)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert proc.stdout.startswith("tiny: 6 steps")
    proc = subprocess.run([sys.executable, "-m", "energy_flow", "curves",
                           str(tmp_path / "missing.jsonl")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 2 and "no such file" in proc.stderr
