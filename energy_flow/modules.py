"""The learned parts of the model: EmbeddingMapper, SimpleNeuron, EnergyCarrier."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from energy_flow.config import EnergyConfig


class EmbeddingMapper(nn.Module):
    """768-d embedding -> energy on the W*H surface (row-major [H, W])."""

    def __init__(self, config: EnergyConfig):
        super().__init__()
        hidden, surface = config.mapper_hidden, config.surface_size
        self.encode = nn.Sequential(
            nn.Linear(config.embedding_dim, hidden), nn.GELU(), nn.LayerNorm(hidden),
            nn.Linear(hidden, surface), nn.Tanh(),
        )
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))
        self.positional = nn.Parameter(
            0.02 * torch.randn(config.lattice_height, config.lattice_width)
        )

    def forward(self, embeddings: Tensor) -> Tensor:
        surface = self.encode(embeddings) * self.scale + self.bias  # [B, S]
        return surface + self.positional.flatten()


class SurfaceCollector(nn.Module):
    """The reverse direction, surface [B, S] -> 768-d embedding (inference only, not in the loss)."""

    def __init__(self, config: EnergyConfig):
        super().__init__()
        hidden = config.mapper_hidden
        self.decode = nn.Sequential(
            nn.Linear(config.surface_size, hidden), nn.GELU(), nn.LayerNorm(hidden),
            nn.Linear(hidden, config.embedding_dim),
        )

    def forward(self, surface: Tensor) -> Tensor:
        return F.normalize(self.decode(surface), dim=-1)


class SimpleNeuron(nn.Module):
    """(position [N, 3], energy [N, 1]) -> features [N, neuron_output]; positions are already normalized."""

    def __init__(self, config: EnergyConfig):
        super().__init__()
        hidden = config.neuron_hidden
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, config.neuron_output),
        )

    def forward(self, positions: Tensor, energy: Tensor) -> Tensor:
        return self.net(torch.cat([positions, energy[:, None]], dim=1))


class EnergyCarrier(nn.Module):
    """One GRU step for every live flow, then the energy and displacement heads.

    Heads: energy Hc -> Hc/2 -> GELU -> 1 -> tanh; displacement Hc -> 64 ->
    GELU -> 3, clamped. Their first layers are stored as one Linear(Hc, Hc/2 + 64)
    (same parameters, one matmul). With position memory on, the last P
    positions go through Linear(3P, Hc/4) and a Linear(Hc + Hc/4, Hc) fuses
    them with the GRU output before the heads (no activation between the fuse
    and the heads' first layer, which lets the two be applied as one product).

    Inputs: features [N, F], energy [N], hidden [L, N, Hc] (None = zeros) and
    the position history [N, P, 3]. Returns (new energy [N], displacement
    [N, 3] clamped to +-0.5, new hidden [L, N, Hc]).
    """

    def __init__(self, config: EnergyConfig):
        super().__init__()
        hc = config.carrier_hidden
        self.clamp = config.gru_clamp
        self.gru = nn.GRU(config.neuron_output + 1, hc, config.carrier_layers)
        # The first layers of both heads read the same features: one matmul, then split.
        self.head_split = (max(1, hc // 2), 64)
        self.head_in = nn.Linear(hc, sum(self.head_split))  # energy Hc/2 | displacement 64
        self.energy_out = nn.Linear(self.head_split[0], 1)
        self.displacement_out = nn.Linear(self.head_split[1], 3)
        self.position_memory: nn.Linear | None = None
        self.fuse: nn.Linear | None = None
        if config.position_memory:
            memory = max(1, hc // 4)
            self.position_memory = nn.Linear(3 * config.position_history, memory)
            self.fuse = nn.Linear(hc + memory, hc)
        self._init_gru()
        self._init_displacement(config.initial_drift)

    def _init_displacement(self, drift: float) -> None:
        """Start with a steady move toward the z = +1 plane: zero weights and a z bias of
        ``drift`` per step. A randomly initialised head moves flows ~0.05 per step, so with z
        starting at 0 almost none reaches a plane within the step limit; and its x/y output,
        which follows every change of the features upstream, carries flows out of their cells
        (x/y moves then come only from what this layer learns)."""
        self.displacement_out.weight.data.zero_()
        self.displacement_out.bias.data.zero_()
        self.displacement_out.bias.data[2] = drift

    def _init_gru(self) -> None:
        hc = self.gru.hidden_size
        for name, param in self.gru.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                for gate in range(3):
                    nn.init.orthogonal_(param.data[gate * hc:(gate + 1) * hc])
            elif name.startswith("bias_ih"):
                param.data.zero_()
                param.data[hc:2 * hc] = 1.0  # update gate (PyTorch gate order: r, z, n)
            else:
                param.data.zero_()

    def gru_from_zero(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``self.gru(x[None], None)`` computed without the recurrent matmuls.

        With a zero hidden state W_hh h = 0, so each layer's hidden gates are
        its bias b_hh: r = sigmoid(W_ir x + b_ir + b_hr), z likewise,
        n = tanh(W_in x + b_in + r * b_hn), h' = (1 - z) * n. Same result,
        about 60% fewer GRU FLOPs on a flow's first step.
        """
        gru, layer_input, layers = self.gru, x, []
        for layer in range(gru.num_layers):
            gates = F.linear(layer_input, getattr(gru, f"weight_ih_l{layer}"),
                             getattr(gru, f"bias_ih_l{layer}"))  # [N, 3Hc]
            b_r, b_z, b_n = getattr(gru, f"bias_hh_l{layer}").chunk(3)
            g_r, g_z, g_n = gates.chunk(3, dim=1)
            r = torch.sigmoid(g_r + b_r)
            z = torch.sigmoid(g_z + b_z)
            n = torch.tanh(g_n + r * b_n)
            layer_input = n - z * n  # [N, Hc]
            layers.append(layer_input)
        return layer_input[None], torch.stack(layers)

    def forward(self, features: Tensor, energy: Tensor, hidden: Tensor | None,
                history: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        x = torch.cat([features, energy[:, None]], dim=1).float()  # [N, F+1]
        x = torch.nan_to_num(x, nan=0.0).clamp(-self.clamp, self.clamp)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if hidden is None:
                out, new_hidden = self.gru_from_zero(x)
            else:
                out, new_hidden = self.gru(x[None], hidden)  # out [1, N, Hc]; hidden [L, N, Hc]
        # |GRU output| <= 1 by construction, so only non-finite values need replacing.
        out = torch.nan_to_num(out[0], nan=0.0, posinf=self.clamp, neginf=-self.clamp)
        if self.position_memory is not None and history is not None:
            memory = self.position_memory(history.flatten(1))  # [N, Hc/4]
            fused_in = torch.cat([out, memory.to(out.dtype)], dim=1)  # [N, Hc + Hc/4]
            # fuse (Hc + Hc/4 -> Hc) and head_in (Hc -> Hc/2 + 64) are both linear with nothing
            # between them, so they are applied as one product of their weights: same function
            # and gradients, half the per-flow multiply-adds.
            weight = self.head_in.weight @ self.fuse.weight  # [Hc/2 + 64, Hc + Hc/4]
            bias = torch.addmv(self.head_in.bias, self.head_in.weight, self.fuse.bias)
            heads = F.linear(fused_in, weight, bias)
        else:
            heads = self.head_in(out)
        energy_h, displacement_h = F.gelu(heads).split(self.head_split, dim=1)
        new_energy = torch.tanh(self.energy_out(energy_h))[:, 0]
        displacement = self.displacement_out(displacement_h).clamp(-0.5, 0.5)
        return new_energy, displacement, new_hidden
