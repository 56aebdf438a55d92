"""Compute speed as a function of time: `t_s, factor` traces and a thermal-throttling model.

A machine's speed moves: a CPU shares its cores, a phone throttles after sustained drafting, a
GPU shares its memory bandwidth. A compute trace is a step function of time multiplying the
scenario's compute factor (looped past its end like a bandwidth trace, simulator/link.py, or
holding its last value); a step of work started at t takes its time at compute factor 1
divided by compute_factor x factor(t). The thermal model (the profile's `edge_thermal`) heats
with the edge's busy time and cools while it idles, and slows the draft by 1 - depth x heat.

Both are read along a clock that moves forward (`SpeedCursor`: amortised O(1) per read, no
search per token); the edge and the cloud call them only while a trace or the thermal model
is present (without one the engine's hot path is what it was).
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path

from simulator.inputs import read_step_trace
from simulator.profile import MIN_SPEED_FACTOR, ThermalProfile

"""Latest step time accepted in a compute trace (about 30 years)."""
MAX_SPEED_FACTOR = 1e6
"""Fastest factor accepted in a compute trace (as the cloud's compute_factor)."""


class ComputeTrace:
    """A piecewise-constant speed factor from a `t_s, factor` trace; loops (or holds its last
    value) past the end. As for bandwidth traces, the looping period is the last time stamp
    plus the mean step length."""

    def __init__(self, times_s: list[float], factors: list[float], repeat: bool, source: str):
        self.times = times_s
        self.factors = factors
        self.source = source
        steps = len(times_s)
        self.repeat = repeat and steps > 1
        self.period = (
            times_s[-1] + (times_s[-1] - times_s[0]) / (steps - 1) if steps > 1 else math.inf
        )

    @classmethod
    def from_csv(cls, path: Path, repeat: bool) -> ComputeTrace:
        """Read a trace CSV with columns t_s, factor (a header row is required): times finite,
        from 0 and increasing strictly, factors finite in [MIN_SPEED_FACTOR, MAX_SPEED_FACTOR];
        anything else is a one-line ConfigError naming the file and the line."""
        times, values = read_step_trace(
            path, "compute trace", "factor", MIN_SPEED_FACTOR, MAX_SPEED_FACTOR
        )
        return cls(times, values, repeat, str(path))

    @property
    def constant(self) -> float | None:
        """The factor where it never changes (the trace is then a plain compute factor)."""
        first = self.factors[0]
        return first if all(f == first for f in self.factors) else None

    @property
    def fastest(self) -> float:
        """The largest factor (bounds how soon any work can finish)."""
        return max(self.factors)

    def at(self, t_s: float) -> float:
        """The factor at time t (a search: for one-off reads; `SpeedCursor` along a clock)."""
        return self.factors[self._index(self._fold(t_s)[0])]

    def _fold(self, t_s: float) -> tuple[float, float]:
        """(time within the period, start of that period)."""
        if self.repeat and t_s >= self.period:
            base = (t_s // self.period) * self.period
            return t_s - base, base
        return t_s, 0.0

    def _index(self, offset_s: float) -> int:
        return max(bisect.bisect_right(self.times, offset_s) - 1, 0)

    def segment(self, t_s: float) -> tuple[float, float, float]:
        """(factor, start, end) of the step holding time t, in absolute time."""
        offset, base = self._fold(t_s)
        index = self._index(offset)
        if index + 1 < len(self.times):
            end = base + self.times[index + 1]
        else:
            end = base + self.period if self.repeat else math.inf
        return self.factors[index], base + self.times[index], end


class SpeedCursor:
    """Reads a trace at non-decreasing times: the current step is kept, so a read costs a
    comparison until the clock passes the step's end (an earlier time is searched again)."""

    __slots__ = ("end_s", "factor", "start_s", "trace")

    def __init__(self, trace: ComputeTrace) -> None:
        self.trace = trace
        self.factor, self.start_s, self.end_s = trace.segment(0.0)

    def at(self, t_s: float) -> float:
        """The factor at time t."""
        if not self.start_s <= t_s < self.end_s:
            self.factor, self.start_s, self.end_s = self.trace.segment(t_s)
        return self.factor


class Thermal:
    """A first-order thermal state of an edge: heat in [0, 1] relaxes towards 1 with time
    constant `heat_tau_s` while the edge computes, towards 0 with `cool_tau_s` while it idles;
    the edge runs at 1 - depth x heat of its speed (starts cold)."""

    __slots__ = ("cool_tau_s", "depth", "heat", "heat_tau_s", "idle_from_s")

    def __init__(self, profile: ThermalProfile) -> None:
        self.depth = profile.depth
        self.heat_tau_s = profile.heat_tau_s
        self.cool_tau_s = profile.cool_tau_s
        self.heat = 0.0
        self.idle_from_s = 0.0

    def factor(self, t_s: float) -> float:
        """The throttling factor for work starting at t (after cooling since the last work)."""
        idle = t_s - self.idle_from_s
        if idle > 0.0:
            self.heat *= math.exp(-idle / self.cool_tau_s)
            self.idle_from_s = t_s
        return 1.0 - self.depth * self.heat

    def busy(self, t_s: float, duration_s: float) -> None:
        """The edge computed from t for `duration_s`: it heats."""
        self.heat = 1.0 - (1.0 - self.heat) * math.exp(-duration_s / self.heat_tau_s)
        self.idle_from_s = t_s + duration_s


class EdgeSpeed:
    """An edge's speed over time beyond its constant compute factor: a compute trace, the
    thermal model, or both, and optionally a trace of its prompt prefill's own speed (a
    testbed replay measures the draft's prefill and decoding apart: they drift apart).
    `scale(t, work_s)` is the duration of a draft step of `work_s` (seconds at the edge's
    constant factor) started at t, `scale_prefill` that of the prompt's prefill; `next_s` is
    when the edge must next ask (+inf: the factor stays 1 from here on; the edge then reads its
    precomputed times unchanged)."""

    __slots__ = ("cursor", "next_s", "prefill_cursor", "thermal")

    def __init__(
        self,
        trace: ComputeTrace | None,
        thermal: Thermal | None,
        prefill_trace: ComputeTrace | None = None,
    ) -> None:
        self.cursor = SpeedCursor(trace) if trace is not None else None
        self.prefill_cursor = SpeedCursor(prefill_trace) if prefill_trace is not None else None
        self.thermal = thermal
        self.next_s = -math.inf if (trace is not None or thermal is not None) else math.inf

    def factor(self, t_s: float) -> float:
        """The speed factor for work starting at t (a read: no work is done)."""
        factor = self.cursor.at(t_s) if self.cursor is not None else 1.0
        return factor * self.thermal.factor(t_s) if self.thermal is not None else factor

    def scale(self, t_s: float, work_s: float) -> float:
        """The time `work_s` started at t takes; sets `next_s`."""
        factor = 1.0
        cursor = self.cursor
        if cursor is not None:
            factor = cursor.at(t_s)
        thermal = self.thermal
        if thermal is not None:
            factor *= thermal.factor(t_s)
        duration = work_s / factor if factor != 1.0 else work_s
        if thermal is not None:
            thermal.busy(t_s, duration)
            self.next_s = -math.inf
        elif cursor is not None:
            self.next_s = cursor.end_s if cursor.factor == 1.0 else -math.inf
        return duration

    def scale_prefill(self, t_s: float, work_s: float) -> float:
        """The time the prompt's prefill of `work_s` started at t takes: at the prefill trace's
        factor where there is one (the draft steps' cursor and `next_s` untouched), else as a
        draft step (`scale`)."""
        cursor = self.prefill_cursor
        if cursor is None:
            return self.scale(t_s, work_s)
        factor = cursor.at(t_s)
        thermal = self.thermal
        if thermal is not None:
            factor *= thermal.factor(t_s)
        duration = work_s / factor
        if thermal is not None:
            thermal.busy(t_s, duration)
            self.next_s = -math.inf
        return duration


def edge_speed(
    trace: ComputeTrace | None,
    thermal: ThermalProfile | None,
    prefill_trace: ComputeTrace | None = None,
) -> EdgeSpeed | None:
    """The edge's time-varying speed, or None where it has none (constant compute factor)."""
    if trace is None and thermal is None and prefill_trace is None:
        return None
    return EdgeSpeed(trace, Thermal(thermal) if thermal is not None else None, prefill_trace)


__all__ = ["ComputeTrace", "EdgeSpeed", "SpeedCursor", "Thermal", "edge_speed"]
