"""Acceptance models turned into per-request streams of (confidence, accepted) per position.

Position p of a request's output has one draft token proposed on the correct prefix: its top-1
probability and whether the target accepts it. The stream depends only on (seed, request), not
on the policy, so every policy faces the same outcomes (common random numbers) and the oracle
can be told them. Tokens drafted past a rejected position sit on a wrong prefix: they draw
their confidence from a separate off-path stream and are never accepted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import ConfigError
from simulator.profile import (
    Acceptance,
    BetaConfidence,
    CalibratedAcceptance,
    Confidence,
    ConstantConfidence,
    HistogramConfidence,
    IIDAcceptance,
    PowerCurve,
    ReplayAcceptance,
    TableCurve,
)

ACCEPTED_VALUES = {
    "1": True,
    "true": True,
    "True": True,
    "0": False,
    "false": False,
    "False": False,
}
"""How the `accepted` column of a replay trace may spell its verdict."""


@dataclass(frozen=True, slots=True)
class AcceptanceStream:
    """Per-position outcomes of one request, plus the off-path confidences.

    `next_reject[p]` is the first position q >= p whose draft token is rejected (len if none),
    so the accepted run starting at p has length `next_reject[p] - p`.
    """

    confidence: list[float]
    accepted: np.ndarray
    next_reject: list[int]
    off_path_confidence: list[float]


def sample_confidence(spec: Confidence, rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw n top-1 probabilities from a confidence distribution, clipped into (0, 1]."""
    if isinstance(spec, BetaConfidence):
        values = rng.beta(spec.a, spec.b, size=n)
    elif isinstance(spec, HistogramConfidence):
        weights = np.asarray(spec.weights, dtype=float)
        bins = rng.choice(len(weights), size=n, p=weights / weights.sum())
        edges = np.asarray(spec.edges, dtype=float)
        values = edges[bins] + rng.random(n) * (edges[bins + 1] - edges[bins])
    elif isinstance(spec, ConstantConfidence):
        values = np.full(n, spec.value)
    else:  # pragma: no cover - the schema admits no other kind
        raise TypeError(f"unknown confidence model {spec!r}")
    return np.clip(values, 1e-6, 1.0)


def accept_probability(curve: PowerCurve | TableCurve, confidence: np.ndarray) -> np.ndarray:
    """P(accept | confidence) for an array of confidences."""
    if isinstance(curve, PowerCurve):
        return confidence**curve.exponent
    edges = np.asarray(curve.edges, dtype=float)
    values = np.asarray(curve.values, dtype=float)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(values) - 1)
    return values[index]


def _next_reject(accepted: np.ndarray) -> list[int]:
    n = len(accepted)
    positions = np.where(~accepted, np.arange(n), n)
    return np.minimum.accumulate(positions[::-1])[::-1].tolist()


def _natural(name: str) -> tuple[int, int | str]:
    """Sort key: numeric sequence names in numeric order (2 before 10), others after, as text."""
    return (0, int(name)) if name.isdigit() else (1, name)


@dataclass(frozen=True)
class ReplayTraces:
    """Recorded sequences of (confidence, accepted) from a real draft/target pair."""

    sequences: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def load(cls, path: Path) -> ReplayTraces:
        """Read `sequence, position, confidence, accepted` rows (any order) from a CSV."""
        rows: dict[str, list[tuple[int, float, bool]]] = {}
        try:
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                missing = {"sequence", "position", "confidence", "accepted"} - set(
                    reader.fieldnames or []
                )
                if missing:
                    raise ConfigError(path, "header", f"missing columns {sorted(missing)}")
                for line, row in enumerate(reader, start=2):
                    try:
                        position, conf = int(row["position"]), float(row["confidence"])
                    except (TypeError, ValueError):
                        raise ConfigError(
                            path, f"line {line}", "position/confidence not numbers"
                        ) from None
                    if not 0.0 <= conf <= 1.0:
                        raise ConfigError(path, f"line {line}", f"confidence {conf} not in [0, 1]")
                    if row["accepted"] not in ACCEPTED_VALUES:
                        raise ConfigError(
                            path,
                            f"line {line}",
                            f"accepted must be one of {', '.join(ACCEPTED_VALUES)} "
                            f"(got {row['accepted']!r})",
                        )
                    item = (position, conf, ACCEPTED_VALUES[row["accepted"]])
                    rows.setdefault(row["sequence"], []).append(item)
        except OSError as exc:
            raise ConfigError(path, "", f"cannot read acceptance trace ({exc.strerror})") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(path, "", f"not a CSV text file ({exc})") from None
        if not rows:
            raise ConfigError(path, "", "acceptance trace holds no rows")
        sequences = []
        for key in sorted(rows, key=_natural):
            ordered = sorted(rows[key])
            sequences.append(
                (
                    np.array([c for _, c, _ in ordered], dtype=float),
                    np.array([a for _, _, a in ordered], dtype=bool),
                )
            )
        return cls(sequences=tuple(sequences))

    def take(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n positions read from sequence `start` onwards, continuing into the next ones."""
        confs, accs, have, index = [], [], 0, start
        while have < n:
            conf, acc = self.sequences[index % len(self.sequences)]
            confs.append(conf)
            accs.append(acc)
            have += len(conf)
            index += 1
        return np.concatenate(confs)[:n], np.concatenate(accs)[:n]


class AcceptanceModel:
    """Builds AcceptanceStreams from a validated acceptance spec."""

    def __init__(self, spec: Acceptance, base_dir: Path) -> None:
        self.spec = spec
        self.replay = (
            ReplayTraces.load((base_dir / spec.trace).resolve())
            if isinstance(spec, ReplayAcceptance)
            else None
        )

    def stream(self, seed: int, edge: int, request: int, n_positions: int) -> AcceptanceStream:
        """The outcomes of request `request` of edge `edge` under `seed`, `n_positions` long."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, edge, request, 0x5EED]))
        spec = self.spec
        if isinstance(spec, IIDAcceptance):
            confidence = sample_confidence(spec.confidence, rng, n_positions)
            accepted = rng.random(n_positions) < spec.rate
        elif isinstance(spec, CalibratedAcceptance):
            confidence = sample_confidence(spec.confidence, rng, n_positions)
            accepted = rng.random(n_positions) < accept_probability(spec.p_accept, confidence)
        else:
            assert self.replay is not None
            start = int(rng.integers(len(self.replay.sequences)))
            confidence, accepted = self.replay.take(start, n_positions)
            off_path = confidence[rng.permutation(n_positions)]
            return AcceptanceStream(
                confidence.tolist(), accepted, _next_reject(accepted), off_path.tolist()
            )
        off_path = sample_confidence(spec.confidence, rng, n_positions)
        return AcceptanceStream(
            confidence.tolist(), accepted, _next_reject(accepted), off_path.tolist()
        )
