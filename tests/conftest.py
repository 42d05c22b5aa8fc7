"""Shared fixtures: tiny model configs that run in milliseconds on a CPU."""

from __future__ import annotations

import pytest

from energy_flow.config import EnergyConfig, make_config

TINY = dict(lattice_width=4, lattice_height=4, lattice_depth=4, batch_size=2, carrier_hidden=16,
            carrier_layers=1, mapper_hidden=32, max_flows=1000)


@pytest.fixture
def make_tiny():
    """``make_tiny(**overrides)`` -> a debug config shrunk to a 4x4x4 lattice and 2 samples."""

    def build(**overrides) -> EnergyConfig:
        return make_config("debug", **{**TINY, **overrides})

    return build


@pytest.fixture
def tiny(make_tiny) -> EnergyConfig:
    return make_tiny()
