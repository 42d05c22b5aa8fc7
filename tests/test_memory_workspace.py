"""make_workspace: the pools plugged into the real model give the same training run."""

import pytest
import torch

from energy_flow.data import SyntheticPairs
from energy_flow.trainer import Trainer
from energy_flow.workspace import TorchWorkspace, Workspace
from profiler.memory import WORKSPACE_KINDS, make_workspace
from profiler.memory.manager import POOL_STAT_KEYS


def _train(config, kind: str, steps: int) -> tuple[list[float], Workspace]:
    torch.manual_seed(0)
    workspace = make_workspace(kind, torch.device("cpu"))
    trainer = Trainer(config, "cpu", workspace=workspace)
    data = SyntheticPairs(seed=0)
    losses = [trainer.train_step(*data.batch(config.batch_size, s)).loss for s in range(steps)]
    return losses, workspace


def test_every_kind_trains_to_identical_losses(tiny_config):
    runs = {kind: _train(tiny_config, kind, 4) for kind in WORKSPACE_KINDS}
    reference = runs["off"][0]
    assert all(loss > 0 for loss in reference)
    for kind in ("simple", "managed"):
        assert runs[kind][0] == reference, kind
    assert isinstance(runs["off"][1], TorchWorkspace) and runs["off"][1].pool_stats() == {}
    for kind in ("simple", "managed"):
        stats = runs[kind][1].pool_stats()
        assert stats, kind
        for category, row in stats.items():
            assert set(row) == set(POOL_STAT_KEYS), (kind, category)
            assert all(type(v) is int for v in row.values())
            assert row["live_bytes"] == 0  # the model returned every scratch tensor
            assert row["hits"] + row["misses"] == row["acquisitions"] == row["releases"]
        assert sum(r["hits"] for r in stats.values()) > 0
    assert set(runs["managed"][1].pool_stats()) >= {"flow_state", "collect"}
    assert set(runs["simple"][1].pool_stats()) == {"all"}


def test_workspaces_satisfy_the_protocol_and_unknown_kinds_are_named():
    for kind in WORKSPACE_KINDS:
        assert isinstance(make_workspace(kind, "cpu"), Workspace)
    with pytest.raises(ValueError, match="off, simple, managed"):
        make_workspace("turbo", "cpu")
