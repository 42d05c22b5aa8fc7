"""Lattice geometry: quantization, flow creation and surface collection.

Coordinates are normalized to [-1, 1] on every axis: x from [0, W-1], y from
[0, H-1], z from [0, D]. The surface index of a position is iy * W + ix
(row-major [H, W], the mapper's layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from energy_flow.config import ROUNDING_CHOICES, EnergyConfig
from energy_flow.workspace import TorchWorkspace, Workspace


def normalize(value: Tensor | float, lo: float, hi: float) -> Tensor | float:
    return 2.0 * (value - lo) / (hi - lo) - 1.0


def denormalize(value: Tensor | float, lo: float, hi: float) -> Tensor | float:
    return (value + 1.0) * 0.5 * (hi - lo) + lo


def _quantize_arithmetic(positions: Tensor, width: int, height: int) -> Tensor:
    ix = torch.round((positions[:, 0] + 1.0) * (0.5 * (width - 1))).clamp_(0, width - 1)
    iy = torch.round((positions[:, 1] + 1.0) * (0.5 * (height - 1))).clamp_(0, height - 1)
    return (iy * width + ix).long()


def _grid_points(config: EnergyConfig, device: torch.device) -> Tensor:
    """Every lattice point in normalized coordinates, [G, 3] with G = W * H * (D + 1)."""
    w, h, d = config.lattice_width, config.lattice_height, config.lattice_depth
    xs = normalize(torch.arange(w, device=device, dtype=torch.float32), 0, w - 1)
    ys = normalize(torch.arange(h, device=device, dtype=torch.float32), 0, h - 1)
    zs = normalize(torch.arange(d + 1, device=device, dtype=torch.float32), 0, d)
    gz, gy, gx = torch.meshgrid(zs, ys, xs, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)


def _surface_of_grid_index(index: Tensor, config: EnergyConfig) -> Tensor:
    return index % config.surface_size  # grid is ordered (z, y, x): the remainder is iy*W+ix


def _quantize_broadcast(positions: Tensor, config: EnergyConfig) -> Tensor:
    """The historical version: the full [N, G, 3] distance tensor, then argmin (O(N*G) memory)."""
    grid = _grid_points(config, positions.device)
    distance = (positions[:, None, :] - grid[None, :, :]).pow_(2).sum(-1)  # [N, G, 3] -> [N, G]
    return _surface_of_grid_index(distance.argmin(dim=1), config)


def _quantize_loop(positions: Tensor, config: EnergyConfig) -> Tensor:
    """The historical version: one flow at a time, distance to every grid point."""
    grid = _grid_points(config, positions.device)
    out = torch.empty(positions.shape[0], dtype=torch.long, device=positions.device)
    for i in range(positions.shape[0]):
        out[i] = (grid - positions[i]).pow(2).sum(-1).argmin()
    return _surface_of_grid_index(out, config)


def quantize(positions: Tensor, config: EnergyConfig, method: str | None = None) -> Tensor:
    """Surface index iy * W + ix [N] (int64) of normalized positions [N, 3]."""
    method = config.rounding if method is None else method
    if method not in ROUNDING_CHOICES:
        raise ValueError(f"rounding method must be one of {ROUNDING_CHOICES}, got {method!r}")
    positions = positions.detach().float()
    if method == "arithmetic":
        return _quantize_arithmetic(positions, config.lattice_width, config.lattice_height)
    if method == "broadcast":
        return _quantize_broadcast(positions, config)
    return _quantize_loop(positions, config)


@dataclass
class FlowState:
    """Every live flow, struct of arrays; rebuilt for every forward pass.

    positions [N, 3] and energy [N] carry autograd history; hidden [L, N, Hc]
    too (None before the first step means zeros). The rest are plain data.
    """

    positions: Tensor
    energy: Tensor
    hidden: Tensor | None
    batch: Tensor  # [N] int64 sample index
    age: Tensor  # [N] int64 lattice steps lived
    flow_id: Tensor  # [N] int64
    parent: Tensor  # [N] int64, -1 for initial flows
    origin: Tensor  # [N, 3] where the flow was created (detached)
    history: Tensor  # [N, P, 3] last P positions, oldest first (detached)

    @property
    def count(self) -> int:
        return self.positions.shape[0]


class EnergyLattice:
    """Creates the initial flows of a batch and collects completed flows into a surface."""

    def __init__(self, config: EnergyConfig, workspace: Workspace | None = None):
        self.config = config
        self.workspace = workspace if workspace is not None else TorchWorkspace()

    def cell_positions(self, device: torch.device) -> Tensor:
        """Normalized (x, y, 0) of each surface cell, [S, 3] in surface order."""
        w, h = self.config.lattice_width, self.config.lattice_height
        xs = normalize(torch.arange(w, device=device, dtype=torch.float32), 0, w - 1)
        ys = normalize(torch.arange(h, device=device, dtype=torch.float32), 0, h - 1)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
        return torch.stack([gx, gy, torch.zeros_like(gx)], dim=-1).reshape(-1, 3)

    def init_flows(self, surface_energy: Tensor, method: str | None = None) -> FlowState:
        """One flow per (sample, cell) on the centre plane; energy from the surface [B, S]."""
        method = self.config.flow_init if method is None else method
        batch_size, surface = surface_energy.shape
        if surface != self.config.surface_size:
            raise ValueError(f"surface has {surface} cells, the lattice {self.config.surface_size}")
        if batch_size * surface > self.config.max_flows:
            raise ValueError(
                f"{batch_size * surface} initial flows exceed max_flows={self.config.max_flows}"
            )
        if method == "batched":
            return self._init_batched(surface_energy)
        if method == "loop":
            return self._state(*self._init_loop(surface_energy))
        raise ValueError(f"flow_init must be 'loop' or 'batched', got {method!r}")

    def _init_batched(self, surface_energy: Tensor) -> FlowState:
        batch_size, surface = surface_energy.shape
        device = surface_energy.device
        cells = self.cell_positions(device)  # [S, 3]
        positions = cells.repeat(batch_size, 1)  # [B*S, 3]
        batch = torch.arange(batch_size, device=device).repeat_interleave(surface)
        return self._state(positions, surface_energy.reshape(-1), batch, cells)

    def _init_loop(self, surface_energy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The historical version: one flow at a time."""
        batch_size, _ = surface_energy.shape
        w, h = self.config.lattice_width, self.config.lattice_height
        device = surface_energy.device
        positions, energy, batch = [], [], []
        for b in range(batch_size):
            for iy in range(h):
                for ix in range(w):
                    positions.append(torch.tensor(
                        [normalize(float(ix), 0, w - 1), normalize(float(iy), 0, h - 1), 0.0],
                        device=device,
                    ))
                    energy.append(surface_energy[b, iy * w + ix])
                    batch.append(b)
        return (torch.stack(positions), torch.stack(energy),
                torch.tensor(batch, dtype=torch.long, device=device))

    def _state(self, positions: Tensor, energy: Tensor, batch: Tensor,
               cells: Tensor | None = None) -> FlowState:
        """The per-flow bookkeeping around positions/energy/batch. With ``cells`` [S, 3]
        (positions = cells repeated per sample) origin and history are filled by
        contiguous per-sample block copies instead of a strided broadcast."""
        n, device = positions.shape[0], positions.device
        ws, steps = self.workspace, self.config.position_history
        age = ws.zeros((n,), dtype=torch.long, device=device, category="flow_state")
        flow_id = ws.empty((n,), dtype=torch.long, device=device, category="flow_state")
        torch.arange(n, device=device, out=flow_id)
        parent = ws.empty((n,), dtype=torch.long, device=device, category="flow_state").fill_(-1)
        origin = ws.empty((n, 3), dtype=torch.float32, device=device, category="flow_state")
        history = ws.empty((n, steps, 3), dtype=torch.float32, device=device, category="flow_state")
        if cells is None:
            origin.copy_(positions.detach())
            history.copy_(positions.detach()[:, None, :].expand(n, steps, 3))
        else:
            blocks = n // cells.shape[0]
            origin.view(blocks, -1).copy_(cells.reshape(1, -1).expand(blocks, -1))
            cell_history = cells[:, None, :].expand(-1, steps, 3).reshape(1, -1)  # [1, S*P*3]
            history.view(blocks, -1).copy_(cell_history.expand(blocks, -1))
        return FlowState(positions=positions, energy=energy, hidden=None, batch=batch, age=age,
                         flow_id=flow_id, parent=parent, origin=origin, history=history)

    def collect(self, keys: Tensor, weights: Tensor, energies: Tensor, batch_size: int) -> Tensor:
        """Surface [B, S] from collected flows.

        keys [M] = batch * S + cell (a key >= B * S marks "not collected"),
        weights [M], energies [M]. Within each key the weights are softmaxed
        and the output is the sum of softmax * energy; empty cells are 0.
        """
        groups = batch_size * self.config.surface_size
        ws, device = self.workspace, weights.device
        keys = keys.clamp(max=groups)  # one spill bin for everything not collected
        weights = weights.float()
        peak = ws.empty((groups + 1,), dtype=torch.float32, device=device, category="collect")
        peak.fill_(float("-inf"))
        peak.scatter_reduce_(0, keys, weights.detach(), reduce="amax", include_self=True)
        exp = torch.exp(weights - peak.gather(0, keys))  # [M], <= 1
        total = torch.zeros(groups + 1, device=device).index_add(0, keys, exp)
        numer = torch.zeros(groups + 1, device=device).index_add(0, keys, exp * energies.float())
        surface = numer[:groups] / total[:groups].clamp_min(1e-30)  # empty groups: 0 / tiny = 0
        ws.release(peak)
        return surface.view(batch_size, self.config.surface_size)
