"""Repeated timings on a machine that may be busy: outlier rules, robust summary, re-measurement.

Every profiler measures each configuration (a token count at a context, a prompt length, ...)
several times. Other work on the machine only ever adds time: a preempted forward pass takes
its own time plus however long the process waited (on this 2-core VM with two CPU hogs, a
2.3 ms verification of the tiny test model took 2.3 ms or 5-20 ms, either mode half the time).
`Repeated` collects each configuration's times and applies:

1. **A summary statistic and its outlier rule**, chosen by what the quantity is:
   - BEST_CASE ("min") for a best-case service time such as a target's forward pass or
     prefill on a server that does nothing else. As `timeit` advises, the lower values show
     what the machine can do and higher ones are other processes interfering; a median would
     be the slow mode as soon as half the runs were preempted. Rule: a run more than
     BEST_CASE_BAND (25%) slower than the configuration's fastest is interference (a quiet
     machine's runs here spread by a CV of 0.4-2%, at most about 17% for sub-millisecond
     prefills; preempted ones take 2-8x).
   - TYPICAL ("median") where the quantity varies legitimately (an edge draft sharing its
     device, decode steps in a duty cycle). Rule: a run above median + OUTLIER_MADS (3) x
     sigma, sigma = 1.4826 x MAD (the median absolute deviation scaled to a normal sample's
     standard deviation, at least MIN_SPREAD_FRACTION = 1% of the median so that nearly equal
     times do not reject ordinary jitter) is an outlier. One-sided: interference only slows.
   Rejected runs stay in the part file (`<name>_rejected`) but are not fitted.
2. **Noise figures** per configuration, in the part file (`noise_<name>` rows): the
   coefficient of variation of all its runs (`cv`: sample standard deviation / mean; what the
   machine did) and of the kept ones (`cv_kept`), runs kept and rejected, passes.
3. **Re-measurement**: a configuration is unstable when its kept runs vary by more than
   UNSTABLE_CV (10%, pyperf's threshold for warning that a benchmark "seems unstable") or the
   rule rejected more than half its runs (the kept ones may then be a lucky few). Unstable
   configurations are measured again: up to REMEASURE_PASSES (2) more passes, each as long
   as the first. Those still unstable are named in one warning line (`unstable_warning`);
   the profile is fitted all the same, and its notes carry the figures (`noise_line`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

BEST_CASE = "min"
"""Summary of a best-case service time (a forward pass, a prefill): the fastest run."""

TYPICAL = "median"
"""Summary of a quantity with legitimate variance (an edge's draft step): the median."""

STATISTICS = (BEST_CASE, TYPICAL)

BEST_CASE_BAND = 0.25
"""BEST_CASE rule: a run more than this fraction slower than the fastest is interference."""

OUTLIER_MADS = 3.0
"""TYPICAL rule: a run above median + this many sigma (1.4826 x MAD) is an outlier."""

MAD_TO_SIGMA = 1.4826
"""MAD x this = the standard deviation of a normal sample (a robust sigma)."""

MIN_SPREAD_FRACTION = 0.01
"""Floor of the TYPICAL rule's sigma, as a fraction of the median."""

UNSTABLE_CV = 0.10
"""A configuration whose kept runs vary by more than this (CV) is re-measured, then named."""

REMEASURE_PASSES = 2
"""At most this many extra passes of an unstable configuration (each as long as the first)."""

CLOCKS = {
    "wall": "wall-clock time (perf_counter)",
    "cpu": "CPU time (one compute thread: its own; more: the process's / threads; a "
    "preempted run's waiting is not counted)",
}
"""What a run's time is read from (`calibrate.served`'s `clock`)."""

RULES = {
    BEST_CASE: f"runs > {1 + BEST_CASE_BAND:g} x the fastest rejected",
    TYPICAL: f"runs > median + {OUTLIER_MADS:g} x 1.4826 MAD rejected",
}
"""Each statistic's outlier rule, in words (for notes)."""

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")


def _check_statistic(statistic: str) -> str:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)} (got {statistic!r})")
    return statistic


def rejected_mask(seconds: Sequence[float] | np.ndarray, statistic: str) -> np.ndarray:
    """True for each run `statistic`'s outlier rule rejects (module docstring). The TYPICAL
    rule rejects nothing from fewer than 3 runs (no spread to judge by)."""
    values = np.asarray(seconds, dtype=float)
    if _check_statistic(statistic) == BEST_CASE:
        if values.size == 0:
            return np.zeros(0, dtype=bool)
        return values > (1.0 + BEST_CASE_BAND) * float(values.min())
    if values.size < 3:
        return np.zeros(values.size, dtype=bool)
    median = float(np.median(values))
    sigma = max(
        MAD_TO_SIGMA * float(np.median(np.abs(values - median))), MIN_SPREAD_FRACTION * median
    )
    return values > median + OUTLIER_MADS * sigma


def coefficient_of_variation(seconds: Sequence[float] | np.ndarray) -> float:
    """Sample standard deviation / mean; NaN for fewer than 2 times (not measured)."""
    values = np.asarray(seconds, dtype=float)
    if values.size < 2 or not values.mean() > 0:
        return math.nan
    return float(values.std(ddof=1) / values.mean())


@dataclass(frozen=True)
class TimingStats:
    """One configuration's times (seconds): the robust summary and the noise figures.

    Over the kept runs (the outlier rule's survivors): `value_s` (the `statistic`: "min" or
    "median"), `median_s`, `min_s`, `max_s`, `iqr_s`, `cv_kept`; `cv` over all runs; `n` kept,
    `n_rejected` rejected, `passes` the measurement passes taken (1 + re-measurements).
    """

    n: int
    median_s: float
    min_s: float
    max_s: float
    iqr_s: float
    cv: float = math.nan
    cv_kept: float = math.nan
    n_rejected: int = 0
    statistic: str = TYPICAL
    value_s: float = math.nan
    passes: int = 1

    @classmethod
    def of(cls, seconds: Sequence[float], statistic: str = TYPICAL, passes: int = 1) -> TimingStats:
        """The summary of `seconds` after `statistic`'s outlier rule (`rejected_mask`)."""
        values = np.asarray(seconds, dtype=float)
        if values.size == 0:
            raise ValueError("TimingStats.of: no times to summarise")
        rejected = rejected_mask(values, statistic)
        kept = values[~rejected]
        q25, q50, q75 = np.percentile(kept, [25, 50, 75])
        return cls(
            n=int(kept.size),
            median_s=float(q50),
            min_s=float(kept.min()),
            max_s=float(kept.max()),
            iqr_s=float(q75 - q25),
            cv=coefficient_of_variation(values),
            cv_kept=coefficient_of_variation(kept),
            n_rejected=int(rejected.sum()),
            statistic=statistic,
            value_s=float(kept.min() if statistic == BEST_CASE else q50),
            passes=int(passes),
        )

    @property
    def relative_spread(self) -> float:
        """IQR / median of the kept times."""
        return self.iqr_s / self.median_s if self.median_s > 0 else math.nan

    @property
    def unstable(self) -> bool:
        """Whether the kept runs vary by more than UNSTABLE_CV, or more than half the runs
        were rejected."""
        varied = not math.isnan(self.cv_kept) and self.cv_kept > UNSTABLE_CV
        return varied or self.n_rejected > self.n

    def noise_text(self) -> str:
        """'CV 1.2% (kept 0.8%), 1 rejected, 2 passes' (the parts that apply)."""
        if math.isnan(self.cv):
            return "CV n/a"
        cv = f"CV {100 * self.cv:.1f}%"
        if self.n_rejected:
            cv += f" (kept {100 * self.cv_kept:.1f}%)" if not math.isnan(self.cv_kept) else ""
            cv += f", {self.n_rejected} rejected"
        return cv + (f", {self.passes} passes" if self.passes > 1 else "")


class Repeated(Generic[K, S]):
    """The repeated samples of a set of configurations, in measurement order.

    `add(key, seconds, sample)` records one run (`sample` is what the part stores, e.g. a
    ForwardSample); `remeasure(run_pass)` re-measures unstable configurations (see the module
    docstring); `kept()` / `rejected()` split the samples by the outlier rule, in the order
    they were measured; `stats(key)` summarises one configuration.
    """

    def __init__(self, keys: Iterable[K], statistic: str, clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)} (got {clock!r})")
        self.statistic = _check_statistic(statistic)
        self.clock = clock
        self._times: dict[K, list[float]] = {key: [] for key in keys}
        self._order: list[tuple[K, int, S]] = []
        self._passes: dict[K, int] = dict.fromkeys(self._times, 1)

    @property
    def keys(self) -> list[K]:
        return list(self._times)

    def add(self, key: K, seconds: float, sample: S) -> None:
        """Record one kept run of configuration `key` (KeyError for an unknown key)."""
        times = self._times[key]
        self._order.append((key, len(times), sample))
        times.append(float(seconds))

    def times(self, key: K) -> list[float]:
        """Every time measured for `key` (rejected ones included), in order."""
        return list(self._times[key])

    def stats(self, key: K) -> TimingStats:
        return TimingStats.of(self._times[key], self.statistic, self._passes[key])

    def unstable(self, among: Iterable[K] | None = None) -> list[K]:
        """Configurations (of `among`, default all) whose kept times vary by more than
        UNSTABLE_CV."""
        keys = self._times if among is None else among
        return [key for key in keys if self._times[key] and self.stats(key).unstable]

    def remeasure(
        self,
        run_pass: Callable[[list[K]], Iterable[K]],
        say: Callable[[str], None],
        label: Callable[[K], str],
        passes: int = REMEASURE_PASSES,
        among: Iterable[K] | None = None,
    ) -> None:
        """While some configurations are unstable, and at most `passes` times: call
        `run_pass(unstable keys)`, which measures them again (calling `add`) and returns the
        keys it measured (a superset where configurations can only be measured together).
        `among` limits the check to those configurations (default: all)."""
        candidates = None if among is None else list(among)
        for number in range(passes):
            keys = self.unstable(candidates)
            if not keys:
                return
            names = ", ".join(label(key) for key in keys[:4]) + (" ..." if len(keys) > 4 else "")
            say(f"re-measuring {len(keys)} unstable configuration(s), pass {number + 2}: {names}")
            for key in set(run_pass(keys)):
                self._passes[key] += 1

    def _masks(self) -> dict[K, np.ndarray]:
        return {key: rejected_mask(times, self.statistic) for key, times in self._times.items()}

    def _select(self, rejected: bool, grouped: bool) -> list[S]:
        masks = self._masks()
        order = self._order
        if grouped:
            rank = {key: r for r, key in enumerate(self._times)}
            order = sorted(order, key=lambda item: (rank[item[0]], item[1]))
        return [sample for key, i, sample in order if bool(masks[key][i]) == rejected]

    def kept(self, grouped: bool = False) -> list[S]:
        """The samples the outlier rule keeps, in measurement order (`grouped`: by
        configuration, in the order of `keys`, then in measurement order)."""
        return self._select(False, grouped)

    def rejected(self, grouped: bool = False) -> list[S]:
        """The samples the outlier rule rejects, ordered as `kept`."""
        return self._select(True, grouped)

    def noise_rows(self, fields: Callable[[K], Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One row per configuration for the part file: its `fields` (e.g. tokens, context)
        and its noise figures."""
        rows = []
        for key in self._times:
            if not self._times[key]:
                continue
            s = self.stats(key)
            rows.append(
                {
                    **fields(key),
                    "statistic": s.statistic,
                    "value_s": s.value_s,
                    "median_s": s.median_s,
                    "cv": None if math.isnan(s.cv) else s.cv,
                    "cv_kept": None if math.isnan(s.cv_kept) else s.cv_kept,
                    "n_kept": s.n,
                    "n_rejected": s.n_rejected,
                    "passes": s.passes,
                    "unstable": s.unstable,
                    "clock": self.clock,
                }
            )
        return rows


NOISE_FIELDS = (
    "statistic",
    "value_s",
    "median_s",
    "cv",
    "cv_kept",
    "n_kept",
    "n_rejected",
    "passes",
    "unstable",
    "clock",
)
"""The columns `Repeated.noise_rows` adds after a configuration's own fields."""

NOISE_PREFIX = "noise_"
"""A part's `samples` key holding noise rows: noise_<what> (e.g. noise_forward)."""


def row_label(row: Mapping[str, Any]) -> str:
    """A configuration's name from its noise row: 'tokens 3, context 24'."""
    return ", ".join(f"{key} {value}" for key, value in row.items() if key not in NOISE_FIELDS)


def noise_line(
    rows: Sequence[Mapping[str, Any]], label: Callable[[Mapping[str, Any]], str] = row_label
) -> str:
    """One line for the profile's notes from `Repeated.noise_rows`: median and largest CV,
    rejected runs, re-measured and still unstable configurations."""
    if not rows:
        return "no configurations measured"
    cvs = [(row["cv"], row) for row in rows if row.get("cv") is not None]
    kept = sum(int(row["n_kept"]) for row in rows)
    rejected = sum(int(row["n_rejected"]) for row in rows)
    remeasured = sum(1 for row in rows if int(row["passes"]) > 1)
    unstable = [row for row in rows if row.get("unstable")]
    statistic = rows[0]["statistic"]
    clock = CLOCKS.get(rows[0].get("clock", "wall"), "wall-clock time")
    if cvs:
        worst_cv, worst = max(cvs, key=lambda item: item[0])
        spread = (
            f"CV of all runs per configuration median "
            f"{100 * float(np.median([c for c, _ in cvs])):.1f}%, max {100 * worst_cv:.1f}% "
            f"({label(worst)})"
        )
    else:
        spread = "CV not measured (one run per configuration)"
    return (
        f"measurement noise: {spread}; {rejected} of {kept + rejected} runs rejected "
        f"({RULES.get(statistic, statistic)}); {remeasured} of {len(rows)} configurations "
        f"re-measured, {len(unstable)} still unstable; fitted on the kept runs, summary "
        f"statistic {statistic}; timed by {clock}"
    )


def unstable_warning(
    what: str,
    rows: Sequence[Mapping[str, Any]],
    label: Callable[[Mapping[str, Any]], str] = row_label,
) -> str | None:
    """One warning line naming `what`'s configurations that stayed unstable, or None."""
    unstable = [row for row in rows if row.get("unstable")]
    if not unstable:
        return None
    names = ", ".join(
        f"{label(row)} (CV {100 * float(row['cv'] or 0):.0f}%, {row['n_rejected']} of "
        f"{int(row['n_kept']) + int(row['n_rejected'])} rejected)"
        for row in unstable[:6]
    )
    more = f" and {len(unstable) - 6} more" if len(unstable) > 6 else ""
    return (
        f"warning: {what}: {len(unstable)} configuration(s) stayed unstable after "
        f"{REMEASURE_PASSES} re-measurements (kept runs' CV > {100 * UNSTABLE_CV:.0f}% or most "
        f"runs rejected): {names}{more}; "
        f"the machine is busy: close other work or pin threads (docs/calibration.md)"
    )


def noise_notes(kind: str, samples: Mapping[str, Any]) -> dict[str, str]:
    """The notes of a part's noise rows: `<kind>.noise.<what>` -> `noise_line` for every
    `noise_<what>` entry of its samples (`calibrate.assemble.new_part` adds them beside the
    fit notes)."""
    return {
        f"{kind}.noise.{key.removeprefix(NOISE_PREFIX)}": noise_line(rows)
        for key, rows in samples.items()
        if key.startswith(NOISE_PREFIX) and rows
    }


__all__ = [
    "BEST_CASE",
    "BEST_CASE_BAND",
    "CLOCKS",
    "MAD_TO_SIGMA",
    "MIN_SPREAD_FRACTION",
    "NOISE_FIELDS",
    "NOISE_PREFIX",
    "OUTLIER_MADS",
    "REMEASURE_PASSES",
    "RULES",
    "STATISTICS",
    "TYPICAL",
    "UNSTABLE_CV",
    "Repeated",
    "TimingStats",
    "coefficient_of_variation",
    "noise_line",
    "noise_notes",
    "rejected_mask",
    "row_label",
    "unstable_warning",
]
