"""The simulator's acceptance draws in a validation: with real acceptance nothing ties the
simulator's acceptance stream to the testbed's (the target decides), so each real session is
simulated several times with seeds of its own and the results averaged: the fitted model's
expectation, not one random draw of it. With synthetic acceptance the testbed replays the
simulator's own stream: one draw, the session's seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from simulator.scenario import SweepPoint

DRAW_STRIDE = 1_000_000
"""Apart from a session's own seed, its further acceptance draws take seed + k * DRAW_STRIDE."""


def draw_seeds(seed: int, draws: int) -> list[int]:
    """The simulator's seeds for one session's `draws` acceptance streams (its own first)."""
    if draws < 1:
        raise ValueError(f"draw_seeds: draws must be at least 1 (got {draws})")
    return [seed + k * DRAW_STRIDE for k in range(draws)]


ACCEPTANCE_DRAWS = 16
"""With real acceptance: acceptance streams the simulator draws per real session, averaged
(`draw_seeds`). One draw's TPT has a standard deviation of 2.2-4.4% over seeds on
testbed_cpu_real (18 requests x 48 tokens, 32 seeds; docs/validation.md), as large as the
goals; the mean of 16 draws a quarter of it."""


def acceptance_draws(acceptance: str) -> int:
    """Simulated acceptance draws per real session for a run with `acceptance` (real,
    synthetic)."""
    return ACCEPTANCE_DRAWS if acceptance == "real" else 1


def with_draws(points: Sequence[SweepPoint], draws: int) -> list[SweepPoint]:
    """`points` with every seed replaced by its `draws` simulator seeds (draw_seeds)."""
    if draws == 1:
        return list(points)
    moved = []
    for point in points:
        model = point.scenario.model
        seeds = [s for seed in model.seeds for s in draw_seeds(seed, draws)]
        scenario = replace(point.scenario, model=model.model_copy(update={"seeds": seeds}))
        moved.append(replace(point, scenario=scenario))
    return moved
