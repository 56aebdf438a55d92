"""What an acceptance model must reproduce, measured on traces and on the model side by side.

`stats(sequences)` measures, over (confidence, accepted) sequences: the acceptance rate,
P(accept | previous accepted) and P(accept | previous rejected) (pairs of neighbouring
positions within a sequence), the distribution of accepted-run lengths (maximal runs of
consecutive accepted positions, shares by length bucket, and the mean), and the calibration
curve P(accept | confidence) over fixed confidence buckets. `model_sequences` draws sequences
of the same lengths from a fitted `HmmAcceptance` through the simulator's own sampler, and
`compare_lines` prints fitted and held-out figures side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simulator.acceptance import HmmSampler
from simulator.acceptance_spec import HmmAcceptance

RUN_BUCKETS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 10**9))
"""Accepted-run length buckets (inclusive)."""

CALIBRATION_EDGES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
"""Confidence buckets of the calibration curve."""

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class AcceptanceStats:
    """The figures an acceptance model must reproduce (module docstring)."""

    positions: int
    rate: float
    after_accept: float
    after_reject: float
    mean_run: float
    runs: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, tuple[float, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain data."""
        return {
            "positions": self.positions,
            "rate": self.rate,
            "after_accept": self.after_accept,
            "after_reject": self.after_reject,
            "mean_run": self.mean_run,
            "runs": self.runs,
            "calibration": {k: {"p_accept": p, "n": n} for k, (p, n) in self.calibration.items()},
        }


def _label(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")


def run_lengths(accepted: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of True in one sequence."""
    padded = np.concatenate([[False], accepted.astype(bool), [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return changes[1::2] - changes[::2]


def _share(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else float("nan")


def stats(sequences: Sequence[Pair]) -> AcceptanceStats:
    """Measure `sequences` (module docstring). ValueError if they hold no position."""
    conf = np.concatenate([c for c, _ in sequences]) if sequences else np.array([])
    acc = np.concatenate([a for _, a in sequences]).astype(bool) if sequences else np.array([])
    if conf.size == 0:
        raise ValueError("stats: no positions")
    prev = np.concatenate([a[:-1] for _, a in sequences]).astype(bool)
    nxt = np.concatenate([a[1:] for _, a in sequences]).astype(bool)
    runs = np.concatenate([run_lengths(a) for _, a in sequences])
    shares = {
        _label(lo, hi): _share(((runs >= lo) & (runs <= hi)).sum(), runs.size)
        for lo, hi in RUN_BUCKETS
    }
    last = len(CALIBRATION_EDGES) - 2
    bucket = np.clip(np.searchsorted(CALIBRATION_EDGES, conf, side="left") - 1, 0, last)
    calibration = {}
    for b in range(len(CALIBRATION_EDGES) - 1):
        inside = bucket == b
        label = f"{CALIBRATION_EDGES[b]:.2f}-{CALIBRATION_EDGES[b + 1]:.2f}"
        calibration[label] = (_share(acc[inside].sum(), inside.sum()), int(inside.sum()))
    return AcceptanceStats(
        positions=int(conf.size),
        rate=float(acc.mean()),
        after_accept=_share((prev & nxt).sum(), prev.sum()),
        after_reject=_share((~prev & nxt).sum(), (~prev).sum()),
        mean_run=float(runs.mean()) if runs.size else 0.0,
        runs=shares,
        calibration=calibration,
    )


def model_sequences(
    model: HmmAcceptance, lengths: Sequence[int], seed: int, replicas: int = 20
) -> list[Pair]:
    """`replicas` sequences per length in `lengths`, each one whole sequence of `model` (seeded)."""
    sampler = HmmSampler.of(model)
    rng = np.random.default_rng(seed)
    return [sampler.sequence(rng, n) for _ in range(replicas) for n in lengths]


def compare_lines(fitted: AcceptanceStats, held: AcceptanceStats) -> list[str]:
    """A side-by-side table: fitted model vs held-out traces."""
    rows = [
        ("acceptance rate", fitted.rate, held.rate),
        ("P(accept | prev accepted)", fitted.after_accept, held.after_accept),
        ("P(accept | prev rejected)", fitted.after_reject, held.after_reject),
        ("mean accepted run", fitted.mean_run, held.mean_run),
    ]
    rows += [(f"runs of length {k}", fitted.runs[k], held.runs[k]) for k in held.runs]
    for k, (p, n) in held.calibration.items():
        if n:
            rows.append((f"P(accept | conf {k}) n={n}", fitted.calibration[k][0], p))
    lines = [f"{'':34} {'fitted':>8} {'held-out':>9}"]
    lines += [f"{name:34} {a:8.3f} {b:9.3f}" for name, a, b in rows]
    return lines


__all__ = [
    "CALIBRATION_EDGES",
    "RUN_BUCKETS",
    "AcceptanceStats",
    "compare_lines",
    "model_sequences",
    "run_lengths",
    "stats",
]
