"""The mixing-coefficient schedule of AM-mixup (mixup.md 4.1): the gap g(q) = lam(q) - 1/2 moves
from g0 = lam_start - 1/2 toward g1 = final_gap > 0 over training progress q in [0, 1], so lam
approaches the midpoint without reaching it (interpretation: the paper's schedule is unknown)."""
from __future__ import annotations

import math

SCHEDULES = ("exp", "linear", "cosine", "const")


def check_schedule(schedule: str, lam_start: float, final_gap: float) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (0.5 <= float(lam_start) <= 1.0):
        raise ValueError(f"lam_start must lie in [0.5, 1], got {lam_start}")
    g0 = float(lam_start) - 0.5
    if not (0.0 <= float(final_gap) <= g0):
        raise ValueError(f"final_gap must lie in [0, lam_start - 0.5 = {g0}], got {final_gap}")
    if schedule == "exp" and final_gap <= 0 and g0 > 0:
        raise ValueError("schedule='exp' needs final_gap > 0 (an exponential never reaches the midpoint)")


def gap_at(progress: float, schedule: str, g0: float, g1: float) -> float:
    """g(q) on the host (a Python float: no device sync); q is clamped to [0, 1]."""
    q = min(max(float(progress), 0.0), 1.0)
    if schedule == "const" or g0 == g1:
        return g0
    if schedule == "exp":
        return g0 * (g1 / g0) ** q
    if schedule == "linear":
        return g0 + (g1 - g0) * q
    return g1 + (g0 - g1) * (1 + math.cos(math.pi * q)) / 2  # cosine
