"""EnergyFlowModel: embeddings -> flows through the lattice -> output surface (and loss)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from energy_flow.config import EnergyConfig
from energy_flow.flow import FlowProcessor
from energy_flow.lattice import EnergyLattice
from energy_flow.modules import EmbeddingMapper, EnergyCarrier, SimpleNeuron, SurfaceCollector
from energy_flow.regions import region
from energy_flow.workspace import TorchWorkspace, Workspace


@dataclass
class FlowStats:
    """Counters of one forward pass (plain ints).

    flows_completed counts flows that reached a plane; flows_projected those
    still inside at the end (projected onto the nearer plane and collected);
    flows_moved the collected flows that ended away from where they started;
    cleanups the cleanup_memory_safe calls made.
    flow_steps is the sum over lattice steps of live flows (GRU rows processed).
    """

    flows_created: int = 0
    flows_completed: int = 0
    flows_live_peak: int = 0
    steps_taken: int = 0
    flow_steps: int = 0
    flows_projected: int = 0
    flows_moved: int = 0
    cleanups: int = 0


@dataclass
class ForwardOutput:
    surface: Tensor  # [B, S]
    target_surface: Tensor | None  # [B, S]
    loss: Tensor | None  # surface_loss + completion_weight * completion_loss
    stats: FlowStats
    surface_loss: Tensor | None = None  # MSE between the surface and the mapped target
    completion_loss: Tensor | None = None  # mean distance to a plane at the end, per flow


class EnergyFlowModel(nn.Module):
    def __init__(self, config: EnergyConfig, workspace: Workspace | None = None):
        super().__init__()
        self.config = config
        self.workspace = workspace if workspace is not None else TorchWorkspace()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.mapper = EmbeddingMapper(config)
            self.collector = SurfaceCollector(config)
            self.neuron = SimpleNeuron(config)
            self.carrier = EnergyCarrier(config)
        self.mapper.requires_grad_(config.mapper_trainable)
        self.collector.requires_grad_(False)
        self.lattice = EnergyLattice(config, self.workspace)
        neuron, carrier = self.neuron, self.carrier
        if config.compile:  # the per-step modules; flow counts vary, so shapes are dynamic
            neuron = torch.compile(neuron, dynamic=True)
            carrier = torch.compile(carrier, dynamic=True)
        self.processor = FlowProcessor(config, neuron, carrier, self.lattice, self.workspace)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, inputs: Tensor, targets: Tensor | None = None) -> ForwardOutput:
        if inputs.dim() != 2 or inputs.shape[1] != self.config.embedding_dim:
            raise ValueError(
                f"inputs must be [B, {self.config.embedding_dim}], got {tuple(inputs.shape)}")
        batch_size = inputs.shape[0]
        scratch: list[Tensor] = []
        with region("mapper"):
            surface_energy = self.mapper(inputs)  # [B, S]
            target_surface = None
            if targets is not None:
                if targets.shape != inputs.shape:
                    raise ValueError(f"targets {tuple(targets.shape)} must match inputs "
                                     f"{tuple(inputs.shape)}")
                with torch.no_grad():
                    target_surface = self.mapper(targets).float()
        with region("flow_init"):
            state = self.lattice.init_flows(surface_energy.float())
            scratch.extend([state.age, state.flow_id, state.parent, state.origin, state.history])
        run = self.processor.run(state, batch_size, self.training, scratch)
        with region("collect"):
            surface = self.lattice.collect(torch.cat(run.keys), torch.cat(run.weights),
                                           torch.cat(run.energies), batch_size)
            moved = torch.cat(run.moved).sum()
        loss = surface_loss = completion_loss = None
        if target_surface is not None:
            with region("loss"):
                surface_loss = F.mse_loss(surface, target_surface)
                completion_loss = surface.new_zeros(())
                if run.projected_distance is not None:
                    completion_loss = run.projected_distance.sum() / run.created
                loss = surface_loss + self.config.completion_weight * completion_loss
        stats = FlowStats(
            flows_created=run.created, flows_completed=run.completed,
            flows_live_peak=run.live_peak, steps_taken=run.steps_taken,
            flow_steps=run.flow_steps, flows_projected=run.projected,
            flows_moved=int(moved), cleanups=run.cleanups,
        )
        for tensor in scratch:
            self.workspace.release(tensor)
        self.workspace.end_step()
        return ForwardOutput(surface=surface, target_surface=target_surface, loss=loss,
                             stats=stats, surface_loss=surface_loss,
                             completion_loss=completion_loss)

    @torch.no_grad()
    def decode(self, surface: Tensor) -> Tensor:
        """Surface [B, S] -> 768-d embedding through the reverse collector (inference)."""
        return self.collector(surface)
