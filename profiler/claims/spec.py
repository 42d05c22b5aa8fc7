"""The user's before/after claims (MODEL.md section 7) and how a measurement is judged.

A claim states a "before" value, an "after" bound and an improvement factor
(the notes' own "10x", "5x", "100x"). ``assess`` compares a measurement with
both parts: the absolute bound depends on the hardware and size the notes
used, the factor much less, so the verdict is

- yes:    the after bound holds and the measured factor reaches the claimed one;
- partly: exactly one of the two holds;
- no:     neither holds.

Approximate claims ("~50 steps/s") get ``tolerance`` slack on both parts.
"""

from __future__ import annotations

from dataclasses import dataclass

YES, PARTLY, NO, NOT_MEASURED = "yes", "partly", "no", "not measured"
CLAIMS_COLUMNS = ("claim", "before", "after", "measured_before", "measured_after", "unit",
                  "factor_claimed", "factor_measured", "device", "holds", "note")


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str  # as the notes state it
    before: str  # claimed before (text)
    after: str  # claimed after (text)
    unit: str
    lower_is_better: bool
    after_bound: float | None  # after must be below (lower_is_better) or above this
    factor: float | None  # claimed improvement factor (>= 1)
    tolerance: float = 0.0  # relative slack for approximate claims


@dataclass(frozen=True)
class Measurement:
    key: str
    before: float | None  # in the claim's unit
    after: float | None
    device: str
    note: str = ""  # what was measured, on which size
    factor: float | None = None  # improvement from a paired estimate, when one exists


CLAIMS = (
    Claim("flow_init", "flow initialization, 100k+ flows (loop -> batched)", "2-5 s", "< 0.5 s",
          "s", True, 0.5, 10.0),
    Claim("training", "training speed (before -> after variant)", "~10 steps/s",
          "~50 steps/s", "steps/s", False, 50.0, 5.0, tolerance=0.2),
    Claim("rounding_broadcast", "rounding positions to the lattice (loop -> broadcast, the "
          "notes' fix)", "~0.1 s/batch", "< 0.001 s/batch", "s/batch", True, 0.001, 100.0),
    Claim("rounding_arithmetic", "rounding positions to the lattice (loop -> arithmetic)",
          "~0.1 s/batch", "< 0.001 s/batch", "s/batch", True, 0.001, 100.0),
    Claim("memory_cleanup", "memory use (cleanup off -> on): growth per step",
          "uncontrolled growth", "stable with periodic cleanup", "bytes/step", True, None, None),
    Claim("pool_forward", "tensor memory pool: forward speed (pool off -> on)", "-",
          "+15-30% forward speed", "ms", True, None, 1.15),
    Claim("pool_peak", "tensor memory pool: peak memory (pool off -> on)", "-",
          "-30-50% peak memory", "bytes", True, None, 1 / 0.7),
    Claim("pool_oom", "tensor memory pool: OOM errors", "-", "-90% OOM errors", "", True,
          None, None),
    Claim("pool_scale", "tensor memory pool: lattice size within a memory budget (off -> on)",
          "-", "2-3x larger lattices", "cells", False, None, 2.0),
)


def improvement(claim: Claim, before: float, after: float) -> float | None:
    """How many times better ``after`` is than ``before`` (> 1: improved)."""
    if claim.lower_is_better:
        return before / after if after > 0 else None
    return after / before if before > 0 else None


def assess(claim: Claim, measured: Measurement | None,
           leak_verdicts: tuple[str, str] | None = None) -> tuple[str, float | None, str]:
    """(holds, measured factor, note) for one claim. ``leak_verdicts`` (before, after) from
    ``memory_growth`` decide the memory claim."""
    if measured is None or measured.before is None or measured.after is None:
        return NOT_MEASURED, None, (measured.note if measured else "not measured here")
    if claim.key == "memory_cleanup":
        return _assess_cleanup(leak_verdicts), None, measured.note
    factor = measured.factor if measured.factor is not None else improvement(
        claim, measured.before, measured.after)
    slack = 1 + claim.tolerance
    checks = []
    if claim.after_bound is not None:
        if claim.lower_is_better:
            checks.append(measured.after < claim.after_bound * slack)
        else:
            checks.append(measured.after > claim.after_bound / slack)
    if claim.factor is not None:
        checks.append(factor is not None and factor >= claim.factor / slack)
    if not checks:
        return NOT_MEASURED, factor, measured.note
    held = sum(checks)
    holds = YES if held == len(checks) else (NO if held == 0 else PARTLY)
    return holds, factor, measured.note


def _assess_cleanup(verdicts: tuple[str, str] | None) -> str:
    if verdicts is None or "insufficient data" in verdicts:
        return NOT_MEASURED
    off, on = verdicts
    if on == "leak":
        return NO
    return YES if off == "leak" else PARTLY
