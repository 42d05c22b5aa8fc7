"""Profiling and memory diagnostics for the energy_flow model (and any workload like it)."""
