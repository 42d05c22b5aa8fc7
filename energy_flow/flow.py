"""FlowProcessor: moves every live flow one lattice step at a time, all at once.

Per step: neuron -> carrier -> move (clamp, reflect, noise) -> terminate on the
planes z = -1 / z = +1 -> spawn children -> compact the live set. The only host
sync per step is one small list of counts (live flows next step, completions,
spawns, non-finite positions and energies) that the loop condition needs; the
spawn budget and the capacity cut children on the device, before that sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from energy_flow.config import EnergyConfig
from energy_flow.lattice import EnergyLattice, FlowState, quantize
from energy_flow.modules import EnergyCarrier, SimpleNeuron
from energy_flow.regions import region
from energy_flow.workspace import Workspace


def reflect_xy(positions: Tensor) -> Tensor:
    """Mirror x/y overshoot about the walls: x < -1 -> -2 - x, x > 1 -> 2 - x."""
    xy = positions[:, :2]
    xy = torch.where(xy < -1.0, -2.0 - xy, torch.where(xy > 1.0, 2.0 - xy, xy))
    return torch.cat([xy, positions[:, 2:]], dim=1)


def advance(positions: Tensor, displacement: Tensor, noise: Tensor | None,
            reflection: bool) -> tuple[Tensor, Tensor]:
    """Move flows; returns (next positions [N, 3] in [-1, 1], plane [N] int8: 0 live, -1/+1 completed).

    The displacement is already clamped to +-0.5 per component. With reflection
    on, x/y overshoot is mirrored back before the clamp (a clamp first would
    leave nothing to reflect); the clamp then bounds every component. Noise
    is added after that and the same reflect + clamp runs again. A flow whose
    z reaches -1 or +1 is completed there (z is exactly on the plane).
    """
    moved = positions + displacement
    if reflection:
        moved = reflect_xy(moved)
    moved = moved.clamp(-1.0, 1.0)
    if noise is not None:
        moved = moved + noise
        if reflection:
            moved = reflect_xy(moved)
        moved = moved.clamp(-1.0, 1.0)
    z = moved[:, 2].detach()
    plane = (z >= 1.0).to(torch.int8) - (z <= -1.0).to(torch.int8)
    return moved, plane


class NonFiniteFlows(FloatingPointError):
    """Positions or energies of live flows became NaN or infinite (``what``, at lattice ``step``)."""

    def __init__(self, what: str, step: int):
        super().__init__(f"{what} became non-finite at lattice step {step}")
        self.what = what
        self.step = step


def spawn_counts(length: Tensor, keep: Tensor, threshold: float, max_spawn: int,
                 room: Tensor | int) -> Tensor:
    """Children per flow [N] int64: min(floor(L / thr) - 1, max_spawn) for live flows that moved
    L > thr, cut (in flow order) so that no more than ``room`` children are made in all.

    ``room`` may be a 0-d tensor (capacity left and the spawn budget left, computed on the
    device): the cut is a cumulative sum, so no host sync is needed.
    """
    want = (torch.floor(length / threshold) - 1).clamp_(0, max_spawn).long() * keep
    before = torch.cumsum(want, 0) - want
    return torch.minimum(want, (room - before).clamp_min(0))


def spawn_room(max_flows: int, kept: Tensor, budget_left: int) -> Tensor:
    """The most children one step may add (0-d int64, on the device of ``kept``, no host
    sync): the capacity left after the ``kept`` (0-d) flows, and what is left of the spawn
    budget."""
    return (max_flows - kept).clamp(min=0, max=max(0, budget_left))


def collect_weight(energy: Tensor, distance: Tensor, age: Tensor) -> Tensor:
    """w = |e| / (1 + distance to the plane) * (1 + 0.1 * steps)."""
    return energy.abs() / (1.0 + distance) * (1.0 + 0.1 * age.to(energy.dtype))


@dataclass
class FlowRun:
    """What one forward's flow loop produced: collection records and counters."""

    keys: list[Tensor] = field(default_factory=list)
    weights: list[Tensor] = field(default_factory=list)
    energies: list[Tensor] = field(default_factory=list)
    moved: list[Tensor] = field(default_factory=list)  # per record: flow left its origin (bool)
    created: int = 0
    completed: int = 0
    projected: int = 0
    projected_distance: Tensor | None = None  # [P] distance of each projected flow to its plane
    live_peak: int = 0
    steps_taken: int = 0
    flow_steps: int = 0
    cleanups: int = 0  # cleanup_memory_safe calls made


class FlowProcessor:
    """Runs the lattice steps of one forward pass."""

    def __init__(self, config: EnergyConfig, neuron: SimpleNeuron, carrier: EnergyCarrier,
                 lattice: EnergyLattice, workspace: Workspace):
        self.config = config
        self.neuron = neuron
        self.carrier = carrier
        self.lattice = lattice
        self.workspace = workspace
        # Optional observer called as on_step(step, state) after every lattice step (tests, tools).
        self.on_step: Callable[[int, FlowState], None] | None = None

    def run(self, state: FlowState, batch_size: int, training: bool,
            scratch: list[Tensor]) -> FlowRun:
        """Move the flows until none is live, convergence or the step limit.

        Workspace tensors taken here are appended to ``scratch``; the caller
        releases them once the forward pass no longer needs them.
        """
        cfg, ws = self.config, self.workspace
        spill = batch_size * cfg.surface_size
        run = FlowRun(created=state.count, live_peak=state.count)
        spawn_limit, initial = cfg.spawn_limit, state.count
        best_completed, stale = 0, 0
        for step in range(cfg.steps_limit):
            n = state.count
            if n == 0:
                break
            run.steps_taken += 1
            run.flow_steps += n
            with region("neuron"):
                features = self.neuron(state.positions, state.energy)
            with region("carrier"):
                history = state.history if cfg.position_memory else None
                energy, displacement, hidden = self.carrier(
                    features, state.energy, state.hidden, history)
                noise = None
                if training and cfg.exploration_noise > 0:
                    noise = ws.empty((n, 3), dtype=torch.float32, device=state.positions.device,
                                     category="noise").normal_(0.0, cfg.exploration_noise)
                    scratch.append(noise)
                nxt, plane = advance(state.positions, displacement.float(), noise,
                                     cfg.boundary_reflection)
                completed = plane != 0
            with region("collect"):
                self._record(run, state, nxt, energy, completed, spill, scratch)
            with region("spawn"):
                budget_left = spawn_limit - (run.created - initial)
                state, counts = self._next_state(state, nxt, energy, hidden, completed,
                                                 run.created, budget_left, scratch)
            live, done, spawned, bad_positions, bad_energies = counts
            if bad_positions or bad_energies:
                raise NonFiniteFlows("positions" if bad_positions else "energies", step + 1)
            if self.on_step is not None:
                self.on_step(step, state)
            run.completed += done
            run.created += spawned
            run.live_peak = max(run.live_peak, live)
            if cfg.cleanup_interval and (step + 1) % cfg.cleanup_interval == 0:
                cleanup_memory_safe(nxt.device, cfg.cleanup_threshold_bytes)
                run.cleanups += 1
            # Patience counts steps without new completions once flows have begun to complete:
            # before the first one arrives there is no completion rate to converge.
            if run.completed > best_completed:
                best_completed, stale = run.completed, 0
            elif run.completed:
                stale += 1
            if step + 1 >= cfg.convergence_min_steps and (
                run.completed >= cfg.convergence_threshold * run.created
                or stale >= cfg.convergence_patience
            ):
                break
        if state.count:
            with region("collect"):
                self._project(run, state, scratch)
        return run

    def _record(self, run: FlowRun, state: FlowState, nxt: Tensor, energy: Tensor,
                completed: Tensor, spill: int, scratch: list[Tensor]) -> None:
        """Collection records for this step: completed flows keyed, the rest sent to the spill bin."""
        cfg = self.config
        n, device = state.count, nxt.device
        keys = self.workspace.empty((n,), dtype=torch.long, device=device, category="collect")
        scratch.append(keys)
        cell = quantize(nxt, cfg)
        torch.add(state.batch * cfg.surface_size, cell, out=keys)
        keys.masked_fill_(~completed, spill)
        # A completed flow sits on its plane: distance 0; it has lived age + 1 steps.
        weight = collect_weight(energy, torch.zeros_like(energy), state.age + 1)
        run.keys.append(keys)
        run.weights.append(weight)
        run.energies.append(energy)
        run.moved.append((nxt.detach() != state.origin).any(dim=1) & completed)

    def _project(self, run: FlowRun, state: FlowState, scratch: list[Tensor]) -> None:
        """Flows still inside at the end go to the nearer plane and are collected."""
        cfg = self.config
        z = state.positions[:, 2]
        distance = 1.0 - z.abs()
        cell = quantize(state.positions, cfg)
        keys = state.batch * cfg.surface_size + cell
        run.keys.append(keys)
        run.weights.append(collect_weight(state.energy, distance, state.age))
        run.energies.append(state.energy)
        run.moved.append((state.positions.detach() != state.origin).any(dim=1))
        run.projected = state.count
        run.projected_distance = distance

    def _next_state(self, state: FlowState, nxt: Tensor, energy: Tensor, hidden: Tensor,
                    completed: Tensor, next_id: int, budget_left: int,
                    scratch: list[Tensor]) -> tuple[FlowState, list[int]]:
        """Drop completed flows, add spawned children after their parents, within both the
        capacity (max_flows) and what is left of the spawn budget.

        Returns the next state and [live, completed, spawned, non-finite positions,
        non-finite energies] (one host sync); on a non-finite count the state is not built.
        """
        cfg, ws = self.config, self.workspace
        n, device = state.count, nxt.device
        keep = ~completed
        if cfg.movement_spawning and cfg.max_spawn_per_step > 0:
            length = (nxt.detach() - state.positions.detach()).norm(dim=1)
            children = spawn_counts(length, keep, cfg.spawn_threshold, cfg.max_spawn_per_step,
                                    spawn_room(cfg.max_flows, keep.sum(), budget_left))
        else:
            children = torch.zeros(n, dtype=torch.long, device=device)
        repeats = keep.long() + children
        bad_positions = (~torch.isfinite(nxt.detach())).sum()
        bad_energies = (~torch.isfinite(energy.detach())).sum()
        counts = torch.stack([repeats.sum(), completed.sum(), children.sum(), bad_positions,
                              bad_energies]).tolist()  # the step's host sync
        live, done, spawned = counts[:3]
        if counts[3] or counts[4]:
            return state, counts
        history = ws.empty(tuple(state.history.shape), dtype=torch.float32, device=device,
                           category="flow_state")
        scratch.append(history)
        history[:, :-1] = state.history[:, 1:]
        history[:, -1] = nxt.detach()
        if spawned == 0 and done == 0:
            state = FlowState(positions=nxt, energy=energy, hidden=hidden, batch=state.batch,
                              age=state.age + 1, flow_id=state.flow_id, parent=state.parent,
                              origin=state.origin, history=history)
            return state, counts
        src = torch.repeat_interleave(torch.arange(n, device=device), repeats, output_size=live)
        first = torch.cumsum(repeats, 0) - repeats
        is_child = torch.arange(live, device=device) - first[src] > 0  # [live]
        child = is_child[:, None]
        new_ids = next_id - 1 + torch.cumsum(is_child.long(), 0)  # ids of children
        hist_new = ws.empty((live,) + tuple(history.shape[1:]), dtype=torch.float32,
                            device=device, category="flow_state")
        scratch.append(hist_new)
        torch.where(child[:, :, None], state.history[src], history[src], out=hist_new)
        state = FlowState(
            positions=torch.where(child, state.positions[src], nxt[src]),
            energy=energy[src],
            hidden=hidden.index_select(1, src),
            batch=state.batch[src],
            age=torch.where(is_child, 0, state.age[src] + 1),
            flow_id=torch.where(is_child, new_ids, state.flow_id[src]),
            parent=torch.where(is_child, state.flow_id[src], state.parent[src]),
            origin=torch.where(child, state.positions.detach()[src], state.origin[src]),
            history=hist_new,
        )
        return state, counts


def cleanup_memory_safe(device: torch.device, threshold_bytes: int) -> bool:
    """Release cached (not live) device memory when the cache exceeds the threshold.

    Finished flows' storage is already dropped when the live set is compacted
    each step; this only returns the allocator's unused cache to the device.
    Returns True when memory was released. No effect on CPU.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    reserved = torch.cuda.memory_reserved(device)
    if reserved - torch.cuda.memory_allocated(device) <= threshold_bytes:
        return False
    torch.cuda.empty_cache()
    return True
