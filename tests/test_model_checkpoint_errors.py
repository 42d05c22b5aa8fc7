"""Damaged checkpoints: one line naming the file and the field or tensors; nothing loaded.
Out-of-range options refused. Checkpoints follow the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from energy_flow.config import ConfigError
from energy_flow.trainer import CheckpointError, Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_ARGS = ["--set", "lattice_width=4", "--set", "lattice_height=4", "--set", "lattice_depth=4",
             "--set", "batch_size=2", "--set", "carrier_hidden=16", "--set", "carrier_layers=1",
             "--set", "mapper_hidden=32", "--set", "max_flows=1000"]


@pytest.fixture
def saved(tmp_path, make_tiny):
    trainer = Trainer(make_tiny())
    x = torch.randn(2, trainer.config.embedding_dim)
    trainer.train_step(x, torch.randn(2, trainer.config.embedding_dim))
    path = tmp_path / "model.pt"
    trainer.save_checkpoint(path)
    return path, make_tiny


def damage(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def first_param(state):
    return next(k for k, v in state["model"].items() if v.is_floating_point() and v.dim() == 2)


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.pop("optimizer"), "missing field(s) optimizer"),
    (lambda s: s.update(config=[1, 2]), "field 'config' must be a dict, got list"),
    (lambda s: s.update(step="three"), "field 'step' must be a non-negative integer"),
    (lambda s: s["model"].update({first_param(s): torch.zeros(3, 3)}),
     "field 'model': tensor(s) of the wrong shape: "),
    (lambda s: s["model"].pop(first_param(s)), "field 'model': missing tensor(s) "),
    (lambda s: s["model"][first_param(s)].view(-1).__setitem__(0, float("nan")),
     "field 'model': NaN / inf in tensor(s) "),
    (lambda s: next(iter(s["optimizer"]["state"].values()))["exp_avg"].view(-1)
     .__setitem__(0, float("inf")), "field 'optimizer': NaN / inf in tensor(s) state[0].exp_avg"),
    (lambda s: s["optimizer"].update(param_groups=[]),
     "field 'optimizer': 0 parameter group(s) do not match"),
    (lambda s: s.update(version=7), "field 'version' is 7; this code reads checkpoints up to"),
])
def test_damaged_checkpoint_is_one_line_naming_file_and_field(saved, edit, expected):
    path, make_tiny = saved
    state = torch.load(path, weights_only=True)
    name = first_param(state)
    damage(path, edit)
    fresh = Trainer(make_tiny(seed=5))
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        fresh.load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message
    if expected.startswith("field 'model'"):
        assert name in message  # the tensor is named
    for k, v in fresh.model.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k]), k


def test_cli_resume_from_damaged_checkpoint_is_one_line(saved):
    path, _ = saved
    damage(path, lambda s: s.pop("optimizer"))
    done = subprocess.run([sys.executable, "-m", "energy_flow", "train", "--steps", "1",
                           "--resume", str(path), *TINY_ARGS], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {path}: not an energy_flow checkpoint: missing field(s) optimizer")


def test_checkpoint_follows_the_umask(tmp_path, make_tiny):
    old = os.umask(0o027)
    try:
        Trainer(make_tiny()).save_checkpoint(tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o640


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("lr", float("nan")),
                                          ("weight_decay", -0.1), ("global_clip", 0.0),
                                          ("param_clip", float("inf")), ("seed", -3)])
def test_out_of_range_options_are_refused(make_tiny, field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be a finite number"):
        make_tiny(**{field: value})


def test_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_part(tmp_path):
    from robust_helpers import fill, tiny_tmpfs

    with tiny_tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk, 8 * 1024)
        done = subprocess.run([sys.executable, "-m", "energy_flow", "train", "--steps", "1",
                               "--checkpoint", str(disk / "m.pt"), *TINY_ARGS],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "No space left on device" in done.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
