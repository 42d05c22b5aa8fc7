"""The model end to end: shapes, ranges, gradients, and the original bugs (MODEL.md section 8)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from energy_flow.config import ConfigError, make_config
from energy_flow.data import SyntheticPairs
from energy_flow.model import EnergyFlowModel
from energy_flow.modules import EnergyCarrier
from energy_flow.trainer import Trainer


def _pairs(cfg, step=0):
    return SyntheticPairs(cfg.embedding_dim, seed=3).batch(cfg.batch_size, step)


def test_forward_shapes_ranges_and_stats(tiny):
    model = EnergyFlowModel(tiny)
    x, y = _pairs(tiny)
    out = model(x, y)
    assert out.surface.shape == (2, 16) and out.target_surface.shape == (2, 16)
    assert torch.isfinite(out.surface).all()
    assert out.surface.abs().max() <= 1.0  # softmax-weighted means of tanh energies
    assert out.surface_loss.item() == pytest.approx(
        F.mse_loss(out.surface, out.target_surface).item())
    # The completion term: mean distance to the nearer plane of the projected flows, per flow.
    assert 0 < out.completion_loss.item() <= out.stats.flows_projected / out.stats.flows_created
    assert out.loss.shape == () and out.loss.item() == pytest.approx(
        out.surface_loss.item() + tiny.completion_weight * out.completion_loss.item())
    s = out.stats
    assert all(isinstance(v, int) for v in vars(s).values())
    assert s.flows_created >= 32 and s.flows_live_peak <= tiny.max_flows
    assert s.steps_taken == tiny.steps_limit or s.flows_projected == 0
    assert s.flows_completed + s.flows_projected == s.flows_created
    assert 32 <= s.flow_steps <= s.flows_live_peak * s.steps_taken
    assert model(x).loss is None


def test_positions_stay_in_box_every_step_with_noise(make_tiny):
    cfg = make_tiny(exploration_noise=0.4, lattice_depth=12, spawn_threshold=0.05)
    model = EnergyFlowModel(cfg)
    seen = []

    def check(step, state):
        seen.append(state.count)
        assert state.positions.min() >= -1.0 and state.positions.max() <= 1.0
        assert state.history.min() >= -1.0 and state.history.max() <= 1.0
        assert state.hidden.shape == (cfg.carrier_layers, state.count, cfg.carrier_hidden)

    model.processor.on_step = check
    out = model(*_pairs(cfg))
    assert len(seen) == out.stats.steps_taken >= 2


def test_flows_really_move_and_age(make_tiny):
    # Original bug 1: an integer mask froze most flows.
    cfg = make_tiny(movement_spawning=False)
    model = EnergyFlowModel(cfg).eval()
    ages = []
    model.processor.on_step = lambda step, state: ages.append(state.age.clone())
    out = model(*_pairs(cfg))
    s = out.stats
    assert s.flows_moved >= 0.95 * (s.flows_completed + s.flows_projected)
    assert ages[0].tolist() == [1] * ages[0].numel()  # every surviving flow aged by one step
    assert (ages[-1] == len(ages)).all()


def test_spawning_grows_flows_within_capacity(make_tiny):
    cfg = make_tiny(spawn_threshold=0.01, max_spawn_per_step=3, max_flows=60, lattice_depth=20,
                    convergence_patience=100, convergence_threshold=1.0, spawn_budget=100.0,
                    exploration_noise=0.05)
    out = EnergyFlowModel(cfg)(*_pairs(cfg))
    assert out.stats.flows_created > 32  # children were made
    assert out.stats.flows_live_peak == 60  # and capped by the capacity
    roomy = EnergyFlowModel(cfg.replace(max_flows=10_000))(*_pairs(cfg))
    assert roomy.stats.flows_live_peak > 60


def test_no_state_leaks_between_batches(tiny):
    # Original bugs 2 and 3: history and completed flows carried over into the next batch.
    a, b = _pairs(tiny, 0), _pairs(tiny, 1)
    model = EnergyFlowModel(tiny).eval()
    model(*a)
    after_a = model(*b).surface
    fresh = EnergyFlowModel(tiny).eval()(*b).surface
    assert torch.equal(after_a, fresh)


def test_eval_is_deterministic_and_training_adds_noise(tiny):
    model = EnergyFlowModel(tiny)
    x, y = _pairs(tiny)
    model.eval()
    assert torch.equal(model(x).surface, model(x).surface)
    model.train()
    torch.manual_seed(0)
    first = model(x).surface
    torch.manual_seed(1)
    assert not torch.equal(first, model(x).surface)


@pytest.mark.parametrize("memory", [True, False])
def test_gradients_reach_neuron_carrier_and_position_memory(make_tiny, memory):
    cfg = make_tiny(position_memory=memory)
    model = EnergyFlowModel(cfg)
    model(*_pairs(cfg)).loss.backward()
    for name, module in (("neuron", model.neuron), ("carrier", model.carrier)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert model.carrier.gru.weight_hh_l0.grad.abs().sum() > 0
    assert model.neuron.net[0].weight.grad.abs().sum() > 0
    if memory:
        assert model.carrier.position_memory.weight.grad.abs().sum() > 0
    else:
        assert model.carrier.position_memory is None
    assert all(p.grad is None for p in model.mapper.parameters())  # frozen by default


def test_trainable_mapper_gets_gradients(make_tiny):
    cfg = make_tiny(mapper_trainable=True)
    model = EnergyFlowModel(cfg)
    model(*_pairs(cfg)).loss.backward()
    assert model.mapper.encode[0].weight.grad.abs().sum() > 0


def test_two_training_steps_both_update_weights(tiny):
    trainer = Trainer(tiny.replace(lr=1e-3))
    before = [p.detach().clone() for p in trainer.params]
    first = trainer.train_step(*_pairs(tiny, 0))
    middle = [p.detach().clone() for p in trainer.params]
    second = trainer.train_step(*_pairs(tiny, 1))
    assert first.optimizer_stepped and second.optimizer_stepped
    assert not first.skipped and not second.skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, middle, strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(middle, trainer.params, strict=True))


def test_loss_decreases_on_learnable_task(make_tiny):
    cfg = make_tiny(lr=3e-3, batch_size=4)
    trainer = Trainer(cfg)
    data = SyntheticPairs(cfg.embedding_dim, seed=1)
    losses = [trainer.train_step(*data.batch(4, i)).loss for i in range(50)]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert trainer.skipped_steps == 0


def test_gru_from_zero_equals_nn_gru(make_tiny):
    carrier = EnergyCarrier(make_tiny(carrier_layers=3, carrier_hidden=24))
    for name, p in carrier.gru.named_parameters():
        if "bias" in name:
            torch.nn.init.normal_(p)
    x = torch.randn(50, 65)
    out, hidden = carrier.gru(x[None])
    out0, hidden0 = carrier.gru_from_zero(x)
    assert torch.allclose(out, out0, atol=1e-6) and torch.allclose(hidden, hidden0, atol=1e-6)


def test_carrier_init_and_head_ranges(tiny):
    carrier = EnergyCarrier(tiny)
    hc = tiny.carrier_hidden
    assert torch.equal(carrier.gru.bias_ih_l0[hc:2 * hc], torch.ones(hc))
    w = carrier.gru.weight_hh_l0[:hc]
    assert torch.allclose(w @ w.T, torch.eye(hc), atol=1e-5)
    n = 200
    energy, disp, hidden = carrier(torch.randn(n, 64) * 50, torch.randn(n), None,
                                   torch.rand(n, 5, 3) * 2 - 1)
    assert energy.abs().max() <= 1.0 and disp.abs().max() <= 0.5
    assert hidden.shape == (1, n, hc)


def test_presets_cover_their_initial_flows():
    # Original bug 6: the optimized preset asked for more flows than its capacity.
    for preset in ("debug", "experiment", "optimized"):
        cfg = make_config(preset)
        assert cfg.max_flows >= 2 * cfg.initial_flows, preset
    assert make_config("optimized").initial_flows == 320_000
    with pytest.raises(ConfigError, match="max_flows"):
        make_config("debug", max_flows=100)


@pytest.mark.parametrize("interval", [0, 2])
def test_cleanup_runs_at_the_configured_interval(make_tiny, interval):
    cfg = make_tiny(max_steps=5, convergence_min_steps=5, cleanup_interval=interval,
                    movement_spawning=False)
    out = EnergyFlowModel(cfg)(*_pairs(cfg))
    assert out.stats.cleanups == (out.stats.steps_taken // interval if interval else 0)
    assert out.stats.steps_taken >= 4 or out.stats.flows_projected == 0


def test_position_history_holds_the_last_positions(make_tiny):
    cfg = make_tiny(movement_spawning=False, max_steps=3, convergence_min_steps=3, plane_drift=0.2)
    model = EnergyFlowModel(cfg).eval()
    start = model.lattice.cell_positions(torch.device("cpu")).repeat(2, 1)
    states = []
    model.processor.on_step = lambda step, state: states.append(
        (state.positions.detach().clone(), state.history.clone(), state.flow_id.clone()))
    model(*_pairs(cfg))
    pos1, hist1, ids1 = states[0]
    assert torch.equal(hist1[:, -1], pos1)  # newest entry: where the flow is now
    assert torch.equal(hist1[:, -2], start[ids1])  # before that: where it started
    assert torch.equal(hist1[:, 0], start[ids1])  # older slots still hold the start
    assert not torch.equal(hist1[:, -1], hist1[:, -2])
    assert len(states) >= 2
    pos2, hist2, ids2 = states[1]
    row = {int(i): k for k, i in enumerate(ids1)}
    prev = torch.stack([pos1[row[int(i)]] for i in ids2])
    assert torch.equal(hist2[:, -2], prev) and torch.equal(hist2[:, -1], pos2)


def test_fused_heads_equal_fuse_then_head_layers(tiny):
    carrier = EnergyCarrier(tiny)
    n = 40
    features, energy = torch.randn(n, 64), torch.randn(n)
    history = torch.rand(n, 5, 3) * 2 - 1
    new_energy, disp, _ = carrier(features, energy, None, history)
    # The same heads computed the long way: GRU output, fuse, then the heads' first layer.
    x = torch.cat([features, energy[:, None]], dim=1)
    out = carrier.gru(x[None])[0][0]
    fused = carrier.fuse(torch.cat([out, carrier.position_memory(history.flatten(1))], dim=1))
    e_h, d_h = F.gelu(carrier.head_in(fused)).split(carrier.head_split, dim=1)
    assert torch.allclose(new_energy, torch.tanh(carrier.energy_out(e_h))[:, 0], atol=1e-5)
    assert torch.allclose(disp, carrier.displacement_out(d_h).clamp(-0.5, 0.5), atol=1e-5)
