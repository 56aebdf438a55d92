"""The timing plans the target profilers share: interleaved prefill rounds and energy windows.

Prefill rounds go over every prompt length in turn after warm-up, so a slow drift of the
machine spreads over every length; an energy window repeats synchronised verifications until
the meter's counter has moved, since NVML's advances in steps of tens of milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calibrate.noise import BEST_CASE, Repeated, TimingStats
from calibrate.samples import PrefillSample
from realrun.cloud.energy import EnergyMeter


@dataclass(frozen=True)
class PrefillTimings:
    """What `time_prefills` measured: kept and rejected samples, stats and noise per length."""

    kept: tuple[PrefillSample, ...]
    rejected: tuple[PrefillSample, ...]
    stats: dict[int, TimingStats]
    noise: list[dict[str, Any]]


def time_prefills(
    prefill_once: Callable[[int], float],
    prompts: Sequence[int],
    warmup: int,
    repetitions: int,
    say: Callable[[str], None],
    clock: str = "wall",
    statistic: str = BEST_CASE,
) -> PrefillTimings:
    """Prefill samples and per-length timing: `warmup` discarded runs per length, then
    `repetitions` rounds over every length in turn (interleaved, so drift spreads evenly);
    lengths whose times vary too much are re-measured (`calibrate.noise`: a target's prefill
    is a best-case service time, summarised by its minimum, outliers rejected; `statistic`
    TYPICAL for an edge draft's, which shares its device). `prefill_once(length)` runs and
    times one prefill, from whatever state it sets up (the draft clears its cache first)."""
    for length in prompts:
        for _ in range(warmup):
            prefill_once(length)
    repeated: Repeated[int, PrefillSample] = Repeated(prompts, statistic, clock)

    def run_round(lengths: Sequence[int]) -> list[int]:
        for length in lengths:
            seconds = prefill_once(length)
            repeated.add(length, seconds, PrefillSample(prompt_len=length, seconds=seconds))
        return list(lengths)

    for rep in range(repetitions):
        run_round(prompts)
        say(f"prefill: round {rep + 1}/{repetitions} over {len(prompts)} prompt lengths")

    def run_pass(lengths: list[int]) -> list[int]:
        for _ in range(repetitions):
            run_round(lengths)
        return lengths

    repeated.remeasure(run_pass, say, lambda length: f"prompt {length}")
    return PrefillTimings(
        kept=tuple(repeated.kept()),
        rejected=tuple(repeated.rejected()),
        stats={length: repeated.stats(length) for length in prompts},
        noise=repeated.noise_rows(lambda length: {"prompt_len": length}),
    )


MAX_WINDOW_FACTOR = 10.0
"""An energy window grows to at most this many times `min_window_s` waiting for the counter."""


def _energy_window(
    meter: EnergyMeter, verify: Callable[[], float], min_window_s: float
) -> tuple[float | None, float | None, float, int]:
    """(J per verification, mean W, window s, count) over repeated verifications.

    Repeats `verify` (which synchronises the device) until the window is >= min_window_s and
    the meter has advanced, or the window reaches MAX_WINDOW_FACTOR x min_window_s (then the
    energy is None: the meter never moved).
    """
    count = 0
    start_j, start_t = meter.read_j(), time.perf_counter()
    while True:
        verify()
        count += 1
        elapsed = time.perf_counter() - start_t
        if elapsed >= min_window_s:
            energy = meter.read_j() - start_j
            elapsed = time.perf_counter() - start_t
            if energy > 0:
                return energy / count, energy / elapsed, elapsed, count
            if elapsed >= MAX_WINDOW_FACTOR * min_window_s:
                return None, None, elapsed, count


__all__ = ["MAX_WINDOW_FACTOR", "PrefillTimings", "time_prefills"]
