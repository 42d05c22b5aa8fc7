"""Trainer: phases, accumulation, non-finite steps, checkpoints."""

from __future__ import annotations

import pytest
import torch

from energy_flow.data import SyntheticPairs
from energy_flow.trainer import CheckpointError, Trainer


def _pairs(cfg, step=0):
    return SyntheticPairs(cfg.embedding_dim, seed=5).batch(cfg.batch_size, step)


def test_phases_are_reported_in_order(tiny):
    trainer = Trainer(tiny)
    phases = []
    result = trainer.train_step(*_pairs(tiny), on_phase=phases.append)
    assert phases == ["forward", "backward", "optimizer"]
    assert result.step == 1 == trainer.step and result.samples == 2
    assert result.grad_norm is not None and result.grad_norm > 0
    assert result.lr == tiny.lr


def test_gradient_accumulation_steps_every_k(make_tiny):
    cfg = make_tiny(grad_accumulation=3)
    trainer = Trainer(cfg)
    stepped = [trainer.train_step(*_pairs(cfg, i)).optimizer_stepped for i in range(6)]
    assert stepped == [False, False, True, False, False, True]
    assert trainer.optimizer_steps == 2


def test_non_finite_loss_is_skipped_and_counted(tiny):
    trainer = Trainer(tiny)
    before = [p.detach().clone() for p in trainer.params]
    x, y = _pairs(tiny)
    x = x.clone()
    x[0, 0] = float("nan")
    phases = []
    result = trainer.train_step(x, y, on_phase=phases.append)
    assert result.skipped and not result.optimizer_stepped
    assert trainer.skipped_steps == 1
    assert phases == ["forward", "backward", "optimizer"]
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.params, strict=True))
    assert not trainer.train_step(*_pairs(tiny, 1)).skipped  # training goes on


def test_clipping_bounds_the_update_norm(tiny):
    trainer = Trainer(tiny)
    trainer.train_step(*_pairs(tiny))
    trainer.optimizer.zero_grad()
    out = trainer.model(*_pairs(tiny, 1))
    (out.loss * 1e6).backward()
    norm = trainer._clip()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params
                                                  if p.grad is not None]))
    assert norm > tiny.global_clip and total <= tiny.global_clip * 1.001


def test_checkpoint_round_trip(tmp_path, tiny):
    trainer = Trainer(tiny.replace(lr=1e-3))
    for i in range(2):
        trainer.train_step(*_pairs(tiny, i))
    trainer.end_epoch(0.5)
    path = tmp_path / "ck" / "model.pt"
    trainer.save_checkpoint(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp left
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["lattice_width"] == 4 and raw["step"] == 2
    other = Trainer(tiny.replace(lr=1e-3, seed=9))
    assert not torch.equal(other.params[0], trainer.params[0])
    other.load_checkpoint(path)
    assert other.step == 2
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, other.model.state_dict()[name]), name
    # The mapper (frozen, defines the target space) travels with the checkpoint.
    assert torch.equal(other.model.mapper.positional, trainer.model.mapper.positional)
    a = trainer.train_step(*_pairs(tiny, 5))
    b = other.train_step(*_pairs(tiny, 5))
    assert a.step == b.step == 3


def test_lr_warmup_ramps_each_group_then_holds(tmp_path, make_tiny):
    cfg = make_tiny(lr=1e-3, lr_warmup=4, displacement_lr_scale=0.5)
    trainer = Trainer(cfg)
    lrs = [(trainer.train_step(*_pairs(cfg, i)).lr, trainer.optimizer.param_groups[1]["lr"])
           for i in range(3)]
    assert lrs == [pytest.approx((k * 2.5e-4, k * 1.25e-4)) for k in (1, 2, 3)]
    # a checkpoint taken during the ramp resumes it where it was
    path = tmp_path / "ramp.pt"
    trainer.save_checkpoint(path)
    resumed = Trainer(cfg)
    resumed.load_checkpoint(path)
    for t in (trainer, resumed):
        assert [t.train_step(*_pairs(cfg, i)).lr for i in (3, 4)] == pytest.approx([1e-3, 1e-3])
    # a plateau cut after the ramp lowers the lr for good
    for _ in range(12):
        trainer.end_epoch(1.0)
    cut = trainer.optimizer.param_groups[0]["lr"]
    assert cut == pytest.approx(1e-4)
    assert trainer.train_step(*_pairs(cfg, 5)).lr == pytest.approx(cut)


def test_a_checkpoint_from_before_the_warm_up_still_trains(tmp_path, make_tiny):
    cfg = make_tiny(lr=1e-3)
    trainer = Trainer(cfg)
    trainer.train_step(*_pairs(cfg, 0))
    state = trainer.state_dict()
    for group in state["optimizer"]["param_groups"]:
        del group["target_lr"]  # what an older version saved
    path = tmp_path / "old.pt"
    torch.save(state, path)
    resumed = Trainer(cfg)
    resumed.load_checkpoint(path)
    assert resumed.train_step(*_pairs(cfg, 1)).lr == pytest.approx(1e-3)
    resumed.end_epoch(1.0)  # the plateau bookkeeping reads the goal too


def test_lr_warmup_ramp_aims_at_a_plateau_cut_lr(make_tiny):
    cfg = make_tiny(lr=1e-3, lr_warmup=4)
    trainer = Trainer(cfg)
    trainer.train_step(*_pairs(cfg, 0))
    for _ in range(12):  # ReduceLROnPlateau (patience 10, factor 0.1) cuts once
        trainer.end_epoch(1.0)
    assert [trainer.train_step(*_pairs(cfg, i)).lr for i in (1, 2, 3, 4)] == \
        pytest.approx([5e-5, 7.5e-5, 1e-4, 1e-4])


def test_checkpoint_mismatch_names_each_field(tmp_path, tiny):
    path = tmp_path / "model.pt"
    Trainer(tiny).save_checkpoint(path)
    other = Trainer(tiny.replace(carrier_hidden=8, lattice_width=5, max_flows=2000))
    with pytest.raises(CheckpointError) as info:
        other.load_checkpoint(path)
    message = str(info.value)
    assert "carrier_hidden: checkpoint 16 != config 8" in message
    assert "lattice_width: checkpoint 4 != config 5" in message
    assert "lattice_height" not in message and "max_flows" not in message


def test_checkpoint_bad_files(tmp_path, tiny):
    trainer = Trainer(tiny)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        trainer.load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        trainer.load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an energy_flow checkpoint"):
        trainer.load_checkpoint(other)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_with_bf16_autocast(tiny):
    trainer = Trainer(tiny, device="cuda")
    results = [trainer.train_step(*_pairs(tiny, i)) for i in range(3)]
    assert all(not r.skipped for r in results)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trainer.params)
    assert trainer.model.carrier.gru.weight_hh_l0.grad is None  # zeroed after the step
