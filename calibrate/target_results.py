"""What a target profiler measured (`TargetMeasurements`): samples, timings, energy, fit.

Shared by every target backend (torch, llama.cpp, torch-served), which subclass it for their
own setup fields, so the part files, summaries and fits read the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from calibrate.fit import fit_target_latency
from calibrate.fit_report import FitReport
from calibrate.noise import CLOCKS, TimingStats, unstable_warning
from calibrate.samples import ForwardSample, PrefillSample
from simulator.profile import TargetLatency


@dataclass(frozen=True)
class VerificationRun:
    """One (tokens, batch, context) configuration: its timing and, with a meter, its energy.

    `tokens` and `context` are per sequence (the samples hold them summed over the batch).
    `energy_j` is joules per verification (the whole batch) over a window of `window_s`
    seconds holding `window_count` verifications; `mean_w` = energy over the window / window_s.
    """

    tokens: int
    batch: int
    context: int
    stats: TimingStats
    energy_j: float | None = None
    mean_w: float | None = None
    window_s: float | None = None
    window_count: int | None = None


@dataclass(frozen=True)
class TargetMeasurements:
    """What `profile_target` measured, with what provenance needs.

    `prefill` / `forward` hold every sample the outlier rule kept (warm-ups excluded), in
    measurement order, and `prefill_rejected` / `forward_rejected` the ones it rejected
    (`calibrate.noise`); `prefill_stats` maps each prompt length to its timing, `runs` has one
    entry per verification configuration, `noise` one row per configuration and part
    ("prefill", "forward": its statistic, CV, rejected runs, passes). `energy_method` says how
    energy was measured, or is None and `energy_unavailable` says why; likewise `idle_w` /
    `idle_method` / `idle_unavailable`.
    """

    device: str
    device_name: str
    dtype: str
    model_name: str
    shape: dict[str, Any]
    prefill: tuple[PrefillSample, ...]
    forward: tuple[ForwardSample, ...]
    prefill_stats: dict[int, TimingStats]
    runs: tuple[VerificationRun, ...]
    torch_version: str
    transformers_version: str
    repetitions: int
    warmup: int
    threads: int
    energy_method: str | None = None
    energy_unavailable: str | None = None
    idle_w: float | None = None
    idle_method: str | None = None
    idle_unavailable: str | None = None
    min_window_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    prefill_rejected: tuple[PrefillSample, ...] = ()
    forward_rejected: tuple[ForwardSample, ...] = ()
    noise: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    clock: str = "wall"

    @property
    def has_energy(self) -> bool:
        return self.energy_method is not None

    def energy_per_verification(self) -> list[tuple[int, int, int, float]]:
        """(tokens, batch, context, joules per verification) of every run with energy."""
        return [
            (r.tokens, r.batch, r.context, r.energy_j) for r in self.runs if r.energy_j is not None
        ]

    def mean_active_w(self) -> float | None:
        """Mean power over all energy windows (total energy / total window time), or None."""
        windows = [r for r in self.runs if r.energy_j is not None and r.window_s]
        if not windows:
            return None
        energy = sum(r.energy_j * r.window_count for r in windows)  # type: ignore[operator]
        return energy / sum(r.window_s for r in windows)  # type: ignore[misc]

    def power_fields(self, busy: str, idle: str) -> tuple[dict[str, float], dict[str, str]]:
        """The profile's power.gpu_active_w / gpu_idle_w values and their notes (`busy` and
        `idle` say what was measured); an absent meter gives a note saying why."""
        values: dict[str, float] = {}
        notes: dict[str, str] = {}
        active_w = self.mean_active_w()
        if active_w is not None:
            values["power.gpu_active_w"] = active_w
            notes["power.gpu_active_w"] = f"{busy}: {self.energy_method}"
        else:
            notes["power.gpu_active_w"] = f"not measured: {self.energy_unavailable}"
        if self.idle_w is not None:
            values["power.gpu_idle_w"] = self.idle_w
            notes["power.gpu_idle_w"] = f"{idle}: {self.idle_method}"
        return values, notes

    def sample_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every prefill and forward sample, as a part file keeps them: the fitted ones, the
        rejected ones (`<name>_rejected`) and the noise rows per configuration
        (`noise_<name>`)."""
        rows: dict[str, list[dict[str, Any]]] = {
            "prefill": [s.to_row() for s in self.prefill],
            "forward": [s.to_row() for s in self.forward],
        }
        for name, rejected in (
            ("prefill", self.prefill_rejected),
            ("forward", self.forward_rejected),
        ):
            if rejected:
                rows[f"{name}_rejected"] = [s.to_row() for s in rejected]
        for name, noise in self.noise.items():
            rows[f"noise_{name}"] = noise
        return rows

    def warnings(self) -> list[str]:
        """One line per part whose configurations stayed unstable (`calibrate.noise`)."""
        lines = (unstable_warning(f"target {name}", rows) for name, rows in self.noise.items())
        return [line for line in lines if line]

    def fit(self) -> tuple[TargetLatency, dict[str, FitReport]]:
        """The profile's target latency model and its fit reports ("prefill", "forward")."""
        return fit_target_latency(self.prefill, self.forward)

    def lines(self) -> list[str]:
        """A human-readable summary: setup, energy status, prefill and verification medians."""
        lines = [
            f"{self.model_name} on {self.device} ({self.device_name}), {self.dtype}, "
            f"torch {self.torch_version}, transformers {self.transformers_version}, "
            f"{self.repetitions} repetitions after {self.warmup} warm-up"
            + (f", {self.threads} CPU thread(s)" if self.device == "cpu" else ""),
            f"timed by {CLOCKS.get(self.clock, self.clock)}",
            "energy: " + (self.energy_method or f"not measured ({self.energy_unavailable})"),
            "idle power: "
            + (
                f"{self.idle_w:.1f} W ({self.idle_method})"
                if self.idle_w is not None
                else f"not measured ({self.idle_unavailable})"
            ),
            "prefill (prompt length):",
        ]
        for length, s in self.prefill_stats.items():
            lines.append(
                f"  {length:>6}: {s.statistic} {1e3 * s.value_s:.3f} ms, median "
                f"{1e3 * s.median_s:.3f} ms ({s.noise_text()}, n={s.n})"
            )
        lines.append("verification (tokens x batch @ context per sequence):")
        for r in self.runs:
            energy = (
                f", {r.energy_j:.4f} J/verification at {r.mean_w:.0f} W "
                f"({r.window_count} in {r.window_s:.2f} s)"
                if r.energy_j is not None
                else ""
            )
            lines.append(
                f"  {r.tokens:>3} x {r.batch:>2} @ {r.context:>5}: {r.stats.statistic} "
                f"{1e3 * r.stats.value_s:.3f} ms, median {1e3 * r.stats.median_s:.3f} ms "
                f"({r.stats.noise_text()})" + energy
            )
        lines.extend(self.notes)
        return lines


def fit_measurements(m: TargetMeasurements) -> tuple[TargetLatency, dict[str, FitReport]]:
    """The profile's target latency model and its fit reports ("prefill", "forward")."""
    return m.fit()


__all__ = ["TargetMeasurements", "VerificationRun", "fit_measurements"]
