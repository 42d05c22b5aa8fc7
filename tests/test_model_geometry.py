"""Quantization, flow creation, movement, spawning and collection on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from energy_flow.flow import advance, reflect_xy, spawn_counts
from energy_flow.lattice import EnergyLattice, normalize, quantize


def test_quantize_arithmetic_on_grid_points_and_corners(make_tiny):
    cfg = make_tiny(lattice_width=5, lattice_height=3)
    # (x, y) raw grid coordinates -> expected iy * W + ix
    raw = torch.tensor([[0, 0], [4, 0], [0, 2], [4, 2], [2, 1], [3, 2]], dtype=torch.float32)
    pos = torch.stack([normalize(raw[:, 0], 0, 4), normalize(raw[:, 1], 0, 2),
                       torch.zeros(6)], dim=1)
    assert quantize(pos, cfg, "arithmetic").tolist() == [0, 4, 10, 14, 7, 13]
    # Slightly off-grid and out-of-range positions round / clamp to the nearest cell.
    off = torch.tensor([[-1.2, -1.0, 0.0], [1.0, 1.3, 0.0], [-0.49, 0.01, 0.5]])
    assert quantize(off, cfg, "arithmetic").tolist() == [0, 14, 1 * 5 + 1]


@pytest.mark.parametrize("method", ["broadcast", "loop"])
def test_quantize_variants_agree(make_tiny, method):
    cfg = make_tiny(lattice_width=6, lattice_height=5, lattice_depth=3)
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(300, 3, generator=gen) * 2 - 1
    expected = quantize(pos, cfg, "arithmetic")
    got = quantize(pos, cfg, method)
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)
    assert expected.min() >= 0 and expected.max() < cfg.surface_size
    assert len(set(expected.tolist())) > 20  # spread over many cells, not a constant


def test_quantize_rejects_unknown_method(tiny):
    with pytest.raises(ValueError, match="rounding method"):
        quantize(torch.zeros(1, 3), tiny, "nearest")


def test_flow_init_variants_identical(make_tiny):
    cfg = make_tiny(lattice_width=5, lattice_height=3, batch_size=3)
    lattice = EnergyLattice(cfg)
    surface = torch.randn(3, cfg.surface_size)
    fast = lattice.init_flows(surface, "batched")
    slow = lattice.init_flows(surface, "loop")
    for name in ("positions", "energy", "batch", "age", "flow_id", "parent", "origin", "history"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.count == 45 and fast.hidden is None
    # Flow k of sample b sits on cell k of the surface, on the centre plane, with its energy.
    k = 7  # ix = 2, iy = 1
    assert fast.positions[2 * 15 + k].tolist() == [0.0, 0.0, 0.0]
    assert fast.positions[0].tolist() == [-1.0, -1.0, 0.0]
    assert fast.energy[2 * 15 + k] == surface[2, k]
    assert fast.batch.tolist() == [0] * 15 + [1] * 15 + [2] * 15
    assert torch.equal(quantize(fast.positions, cfg), torch.arange(15).repeat(3))


def test_flow_init_rejects_over_capacity(make_tiny):
    cfg = make_tiny(max_flows=40)
    with pytest.raises(ValueError, match="exceed max_flows"):
        EnergyLattice(cfg).init_flows(torch.zeros(3, cfg.surface_size))


def test_advance_terminates_on_both_planes():
    pos = torch.tensor([[0.0, 0.0, 0.8], [0.0, 0.0, -0.7], [0.0, 0.0, 0.1], [0.5, 0.5, 0.9]])
    disp = torch.tensor([[0.0, 0.0, 0.4], [0.0, 0.0, -0.5], [0.0, 0.0, 0.2], [0.0, 0.0, 0.05]])
    nxt, plane = advance(pos, disp, None, reflection=True)
    assert plane.tolist() == [1, -1, 0, 0]
    assert nxt[0, 2] == 1.0 and nxt[1, 2] == -1.0  # snapped onto the plane
    assert nxt[2, 2] == pytest.approx(0.3) and nxt[3, 2] == pytest.approx(0.95)


def test_advance_reflects_xy_and_keeps_it():
    pos = torch.tensor([[0.9, -0.9, 0.0], [-0.8, 0.7, 0.0]])
    disp = torch.tensor([[0.3, -0.3, 0.0], [-0.5, 0.1, 0.0]])
    nxt, plane = advance(pos, disp, None, reflection=True)
    assert torch.allclose(nxt, torch.tensor([[0.8, -0.8, 0.0], [-0.7, 0.8, 0.0]]))
    assert plane.tolist() == [0, 0]
    clamped, _ = advance(pos, disp, None, reflection=False)
    assert torch.allclose(clamped, torch.tensor([[1.0, -1.0, 0.0], [-1.0, 0.8, 0.0]]))
    assert torch.allclose(reflect_xy(torch.tensor([[1.2, -1.5, 3.0]])),
                          torch.tensor([[0.8, -0.5, 3.0]]))


@pytest.mark.parametrize("reflection", [True, False])
def test_advance_stays_in_box_with_large_noise(reflection):
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(5000, 3, generator=gen) * 2 - 1
    disp = (torch.rand(5000, 3, generator=gen) - 0.5)  # within +-0.5, as the carrier clamps
    noise = torch.randn(5000, 3, generator=gen) * 2.0
    nxt, plane = advance(pos, disp, noise, reflection)
    assert nxt.min() >= -1.0 and nxt.max() <= 1.0
    assert torch.equal(plane != 0, nxt[:, 2].abs() == 1.0)
    assert (plane == 1).any() and (plane == -1).any()


def test_spawn_counts_rule_and_capacity():
    length = torch.tensor([0.1, 0.35, 0.5, 0.9, 0.9])
    keep = torch.tensor([True, True, True, True, False])
    # floor(L / 0.15) - 1 = [-1, 1, 2, 5, 5] -> clamp to [0, 3]; completed flows spawn nothing.
    assert spawn_counts(length, keep, 0.15, 3, 100).tolist() == [0, 1, 2, 3, 0]
    assert spawn_counts(length, keep, 0.15, 1, 100).tolist() == [0, 1, 1, 1, 0]
    # Only 4 more flows fit: children are granted in flow order until the room is used up.
    assert spawn_counts(length, keep, 0.15, 3, torch.tensor(4)).tolist() == [0, 1, 2, 1, 0]
    assert spawn_counts(length, keep, 0.15, 3, 0).tolist() == [0, 0, 0, 0, 0]


def test_collect_matches_hand_computed_softmax(make_tiny):
    cfg = make_tiny(lattice_width=2, lattice_height=2)
    lattice = EnergyLattice(cfg)
    # Sample 0 cell 1 gets two flows, sample 1 cell 3 one flow, key 8 (>= B*S) is spilled.
    keys = torch.tensor([1, 1, 7, 8])
    weights = torch.tensor([0.5, 1.5, 0.3, 9.0])
    energies = torch.tensor([0.2, -0.6, 0.9, 5.0])
    surface = lattice.collect(keys, weights, energies, batch_size=2)
    p0 = math.exp(0.5) / (math.exp(0.5) + math.exp(1.5))
    expected = torch.zeros(2, 4)
    expected[0, 1] = p0 * 0.2 + (1 - p0) * -0.6
    expected[1, 3] = 0.9
    assert surface.shape == (2, 4)
    assert torch.allclose(surface, expected, atol=1e-6)


def test_collect_gradient_flows_to_energies(tiny):
    lattice = EnergyLattice(tiny)
    energies = torch.tensor([0.4, -0.2, 0.7], requires_grad=True)
    weights = energies.abs() * 2
    surface = lattice.collect(torch.tensor([0, 0, 5]), weights, energies, batch_size=2)
    surface.sum().backward()
    assert energies.grad is not None and energies.grad.abs().sum() > 0
    assert energies.grad[2] == pytest.approx(1.0)  # alone in its cell: d(e)/de = 1
