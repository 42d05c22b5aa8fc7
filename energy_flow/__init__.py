"""energy_flow: GRU-driven flows carrying sentence embeddings through a 3D lattice."""

from energy_flow.config import EnergyConfig, make_config

__all__ = ["EnergyConfig", "make_config"]
