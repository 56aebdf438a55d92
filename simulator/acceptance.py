"""Acceptance models turned into per-request streams of (confidence, accepted) per position.

Position p of a request's output has one draft token proposed on the correct prefix: its top-1
probability and whether the target accepts it. The stream depends only on (seed, request), not
on the policy, so every policy faces the same outcomes (common random numbers) and the oracle
can be told them. Tokens drafted past a rejected position sit on a wrong prefix: they draw
their confidence from a separate off-path stream and are never accepted.
"""

from __future__ import annotations

import csv
import gzip
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from policies.picospec.topk_acceptance import TopKEffect, topk_effect
from simulator.acceptance_spec import (
    Acceptance,
    BetaConfidence,
    ByRequestAcceptance,
    CalibratedAcceptance,
    Confidence,
    ConstantConfidence,
    HistogramConfidence,
    HmmAcceptance,
    IIDAcceptance,
    PowerCurve,
    ReplayAcceptance,
    TableCurve,
)
from simulator.errors import ConfigError
from simulator.inputs import MAX_TRACE_BYTES, check_regular

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


def _open_text(path: Path) -> TextIO:
    """A trace file opened as text: gzip-decompressed when it ends in `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open(newline="")


def _natural(name: str) -> tuple[int, int | str]:
    """Sort key: numeric sequence names in numeric order (2 before 10), others after, as text."""
    return (0, int(name)) if name.isdigit() else (1, name)


@dataclass(frozen=True)
class ReplayTraces:
    """Recorded sequences of (confidence, accepted) from a real draft/target pair."""

    sequences: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def load(cls, path: Path) -> ReplayTraces:
        """Read `sequence, position, confidence, accepted` rows (any order) from a CSV, or a
        gzip-compressed one (`.gz`); leading `#` comment lines (provenance) are skipped."""
        check_regular(path, "acceptance trace", MAX_TRACE_BYTES)
        rows: dict[str, list[tuple[int, float, bool]]] = {}
        comments = 0
        try:
            with _open_text(path) as handle:
                lines = iter(handle)
                first = next(lines, "")
                while first.startswith("#"):
                    comments += 1
                    first = next(lines, "")
                reader = csv.DictReader(itertools.chain([first], lines))
                missing = {"sequence", "position", "confidence", "accepted"} - set(
                    reader.fieldnames or []
                )
                if missing:
                    raise ConfigError(path, "header", f"missing columns {sorted(missing)}")
                for line, row in enumerate(reader, start=2 + comments):
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
        except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
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

    def block_bootstrap(
        self, rng: np.random.Generator, n: int, block: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """n positions made of blocks of `block` consecutive recorded positions, each from a
        uniformly drawn start inside one sequence (moving-block bootstrap: runs shorter than a
        block survive, the order of blocks is new). ConfigError-free: the caller checked that
        some sequence is at least `block` long."""
        conf = np.concatenate([c for c, _ in self.sequences])
        acc = np.concatenate([a for _, a in self.sequences])
        starts, offset = [], 0
        for c, _ in self.sequences:
            starts.append(np.arange(offset, offset + len(c) - block + 1))
            offset += len(c)
        valid = np.concatenate(starts)
        chosen = valid[rng.integers(len(valid), size=-(-n // block))]
        index = (chosen[:, None] + np.arange(block)[None, :]).ravel()[:n]
        return conf[index], acc[index]

    @property
    def longest(self) -> int:
        """The length of the longest recorded sequence."""
        return max(len(c) for c, _ in self.sequences)

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


@dataclass(frozen=True)
class HmmSampler:
    """A fitted `HmmAcceptance` as arrays, sampled one whole request at a time.

    Regimes are drawn segment by segment (a geometric sojourn, then a jump to another regime),
    so the Python loop runs once per regime change, not per position; emissions and
    confidences are then drawn for all positions at once. With `lengths` (the model's
    `sequence_lengths`), a request is made of whole sequences of drawn lengths, each from the
    initial distribution, cut at n.
    """

    initial_cum: np.ndarray
    stay: np.ndarray
    jump_cum: np.ndarray
    emission_cum: np.ndarray
    within: np.ndarray
    marginal_cum: np.ndarray
    lengths: np.ndarray | None = None

    @classmethod
    def of(cls, spec: HmmAcceptance) -> HmmSampler:
        a = np.asarray(spec.transition, dtype=float)
        k = a.shape[0]
        e = np.asarray(spec.emission, dtype=float).reshape(k, -1)
        e /= e.sum(1, keepdims=True)
        jumps = a * (1.0 - np.eye(k))
        totals = jumps.sum(1, keepdims=True)
        jumps = np.where(totals > 0, jumps / np.where(totals > 0, totals, 1.0), np.eye(k))
        initial = np.asarray(spec.initial, dtype=float)
        stationary = initial @ np.linalg.matrix_power(a, 4096)
        bins = (stationary @ e).reshape(-1, 2).sum(1)
        return cls(
            np.cumsum(initial / initial.sum()),
            np.diag(a).copy(),
            np.cumsum(jumps, 1),
            np.cumsum(e, 1),
            np.asarray(spec.within, dtype=float),
            np.cumsum(bins / bins.sum()),
            None if spec.sequence_lengths is None else np.asarray(spec.sequence_lengths),
        )

    def _states(self, rng: np.random.Generator, n: int) -> np.ndarray:
        states = np.empty(n, dtype=int)
        state = int(np.searchsorted(self.initial_cum, rng.random(), side="right"))
        state = min(state, len(self.stay) - 1)
        filled = 0
        while filled < n:
            leave = 1.0 - self.stay[state]
            length = n - filled if leave <= 0.0 else int(rng.geometric(leave))
            states[filled : filled + length] = state
            filled += length
            jump = int(np.searchsorted(self.jump_cum[state], rng.random(), side="right"))
            state = min(jump, len(self.stay) - 1)
        return states

    def _confidence(self, rng: np.random.Generator, bins: np.ndarray) -> np.ndarray:
        q = self.within.shape[1] - 1
        u = rng.random(bins.size) * q
        lo = np.minimum(u.astype(int), q - 1)
        low, high = self.within[bins, lo], self.within[bins, lo + 1]
        return np.clip(low + (u - lo) * (high - low), 1e-6, 1.0)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, accepted) for n positions of one request."""
        if self.lengths is None:
            return self.sequence(rng, n)
        confs, accs, have = [], [], 0
        while have < n:
            length = int(self.lengths[rng.integers(self.lengths.size)])
            conf, acc = self.sequence(rng, min(length, n - have))
            confs.append(conf)
            accs.append(acc)
            have += conf.size
        return np.concatenate(confs), np.concatenate(accs)

    def sequence(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, accepted) for n positions of one sequence, from the initial regime."""
        states = self._states(rng, n)
        cells = (rng.random(n)[:, None] > self.emission_cum[states]).sum(1)
        cells = np.minimum(cells, self.emission_cum.shape[1] - 1)
        return self._confidence(rng, cells // 2), cells % 2 == 1

    def off_path(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n confidences from the stationary marginal (tokens drafted on a wrong prefix)."""
        bins = np.searchsorted(self.marginal_cum, rng.random(n), side="right")
        return self._confidence(rng, np.minimum(bins, len(self.marginal_cum) - 1))


def topk_effect_from_trace(path: Path, k: int) -> TopKEffect:
    """The top-`k` downlink's effect (policies/picospec/topk_acceptance.py) measured on an
    acceptance trace recorded with the target's top-K (columns token, confidence,
    accept_prob, top_ids, top_probs; calibrate/acceptance.py). One-line ConfigError when the
    trace lacks them or recorded fewer than `k` entries per position."""
    check_regular(path, "acceptance trace", MAX_TRACE_BYTES)
    tokens, q_x, accept, ids, probs = [], [], [], [], []
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(line for line in handle if not line.startswith("#"))
            need = {"token", "confidence", "accept_prob", "top_ids", "top_probs"}
            missing = need - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(path, "header", f"no top-K columns {sorted(missing)}")
            for row in reader:
                tokens.append(int(row["token"]))
                q_x.append(float(row["confidence"]))
                accept.append(float(row["accept_prob"]))
                ids.append([int(t) for t in row["top_ids"].split()])
                probs.append([float(v) for v in row["top_probs"].split()])
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read acceptance trace ({exc.strerror})") from None
    except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile, ValueError) as exc:
        raise ConfigError(path, "", f"not a top-K acceptance trace ({exc})") from None
    recorded = min((len(i) for i in ids), default=0)
    if not 1 <= k <= recorded:
        raise ConfigError(
            path, "top_ids", f"downlink top-{k} needs K in [1, {recorded}] (recorded per position)"
        )
    return topk_effect(tokens, q_x, accept, ids, probs, k)


def with_topk(accepted: np.ndarray, topk: TopKEffect, rng: np.random.Generator) -> np.ndarray:
    """The verdicts when the edge verifies against the target's renormalised top-K.

    The mean acceptance moves from `topk.exact_acceptance` (a) to `topk.topk_acceptance`
    (a_K), measured on a trace with the target's top-K (policies/picospec/topk_acceptance.py):
    below a, each acceptance survives with probability a_K / a; above it (renormalising raises
    p̃ on the top-K), each rejection turns into an acceptance with probability
    (a_K - a) / (1 - a). The draws come from their own stream, so the exact verdicts stay
    common to every policy and the adjustment only thins or fills them in.
    """
    a, a_k = topk.exact_acceptance, min(topk.topk_acceptance, 1.0)
    u = rng.random(accepted.size)
    if a_k <= a:
        return accepted & (u < (a_k / a if a > 0 else 1.0))
    return accepted | (u < (a_k - a) / (1.0 - a))


class AcceptanceModel:
    """Builds AcceptanceStreams from a validated acceptance spec."""

    def __init__(self, spec: Acceptance, base_dir: Path) -> None:
        self.spec = spec
        self.replay = None
        self.hmm = HmmSampler.of(spec) if isinstance(spec, HmmAcceptance) else None
        self.by_request: list[HmmSampler] = []
        self.assignment: list[int] = []
        if isinstance(spec, ByRequestAcceptance):
            self.by_request = [HmmSampler.of(model) for model in spec.models]
            self.assignment = spec.assignment
        if isinstance(spec, ReplayAcceptance):
            path = (base_dir / spec.trace).resolve()
            self.replay = ReplayTraces.load(path)
            if spec.block > self.replay.longest:
                raise ConfigError(
                    path,
                    "acceptance.block",
                    f"block {spec.block} is longer than the longest recorded sequence "
                    f"({self.replay.longest} positions)",
                )

    def stream(
        self,
        seed: int,
        edge: int,
        request: int,
        n_positions: int,
        topk: TopKEffect | None = None,
    ) -> AcceptanceStream:
        """The outcomes of request `request` of edge `edge` under `seed`, `n_positions` long;
        with `topk` (a policy verifying against a top-K downlink), adjusted by `with_topk`."""
        base = self._stream(seed, edge, request, n_positions)
        if topk is None:
            return base
        rng = np.random.default_rng(np.random.SeedSequence([seed, edge, request, 0x70C]))
        accepted = with_topk(base.accepted, topk, rng)
        return AcceptanceStream(
            base.confidence, accepted, _next_reject(accepted), base.off_path_confidence
        )

    def _hmm_of(self, request: int) -> HmmSampler | None:
        """The hidden Markov sampler of request `request`: the model's, or under `by_request`
        the one assigned to it; None for the other kinds."""
        if self.assignment:
            return self.by_request[self.assignment[request % len(self.assignment)]]
        return self.hmm

    def _stream(self, seed: int, edge: int, request: int, n_positions: int) -> AcceptanceStream:
        """The exact-verification outcomes (common random numbers across policies)."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, edge, request, 0x5EED]))
        spec = self.spec
        if isinstance(spec, IIDAcceptance):
            confidence = sample_confidence(spec.confidence, rng, n_positions)
            accepted = rng.random(n_positions) < spec.rate
        elif isinstance(spec, CalibratedAcceptance):
            confidence = sample_confidence(spec.confidence, rng, n_positions)
            accepted = rng.random(n_positions) < accept_probability(spec.p_accept, confidence)
        elif (hmm := self._hmm_of(request)) is not None:
            confidence, accepted = hmm.sample(rng, n_positions)
            off_path = hmm.off_path(rng, n_positions)
            return AcceptanceStream(
                confidence.tolist(), accepted, _next_reject(accepted), off_path.tolist()
            )
        else:
            assert self.replay is not None and isinstance(spec, ReplayAcceptance)
            if spec.block:
                confidence, accepted = self.replay.block_bootstrap(rng, n_positions, spec.block)
            else:
                start = (
                    request
                    if spec.order == "request"
                    else int(rng.integers(len(self.replay.sequences)))
                )
                confidence, accepted = self.replay.take(start, n_positions)
            off_path = confidence[rng.permutation(n_positions)]
            return AcceptanceStream(
                confidence.tolist(), accepted, _next_reject(accepted), off_path.tolist()
            )
        off_path = sample_confidence(spec.confidence, rng, n_positions)
        return AcceptanceStream(
            confidence.tolist(), accepted, _next_reject(accepted), off_path.tolist()
        )
