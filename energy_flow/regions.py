"""Named ``record_function`` scopes for the model's regions.

A profiler attributes time and memory to the innermost scope whose name starts
with ``REGION_PREFIX``. Scopes cost nothing measurable when no profiler runs.
The names import without torch, so run-directory readers can share them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.profiler import record_function

REGION_PREFIX = "energy_flow."
REGIONS = (
    "mapper", "flow_init", "neuron", "carrier", "spawn", "collect", "loss",
    "backward", "optimizer",
)


def region(name: str) -> record_function:
    """``with region("carrier"): ...`` marks a model region for the profiler."""
    from torch.profiler import record_function

    if name not in REGIONS:
        raise ValueError(f"unknown region {name!r}; known: {', '.join(REGIONS)}")
    return record_function(REGION_PREFIX + name)


def region_of(scope_name: str) -> str | None:
    """The region a scope name denotes (``"energy_flow.carrier"`` -> ``"carrier"``), else None."""
    if scope_name.startswith(REGION_PREFIX):
        name = scope_name[len(REGION_PREFIX):]
        return name if name in REGIONS else None
    return None
