"""A hidden Markov (regime-switching) acceptance model fitted to traces by EM (Baum-Welch).

Real acceptance comes in runs: boilerplate is accepted for many tokens in a row, hard tokens
cluster. The model has K hidden regimes; in regime k a drafted position emits one of 2B
symbols, (confidence bin b, accepted a), with probability E[k, b, a]; regimes follow a Markov
chain (initial distribution pi at a request's first position, transition matrix A). Confidence
bins are quantiles of the fitting confidences (`confidence_edges`); within a bin the confidence
is drawn from the bin's own empirical quantiles, so both the confidence distribution and the
calibration curve P(accept | confidence) are kept at bin resolution, and runs come from the
regimes. Real outputs also open in a fixed way (two unsure tokens, then several near-certain
ones echoing the prompt), which regimes with geometric sojourns smear over tens of positions:
with S start states, the first S states are a sequence's first S positions, one after another
(state i moves to i + 1, the last into the K steady regimes, which never return), each with
its own emissions (zeros in pi and A stay zero under EM). The fitting sequences' lengths are
kept too: each sequence starts from `pi` (an
output's first tokens are the easiest), and a simulated request longer than a recorded output
runs on as a new sequence, as a replay of the traces does.

`fit_hmm` runs Baum-Welch with scaled forward-backward passes (numpy, all sequences of a batch
at once, padded and masked) from several seeded starts and keeps the best; the numbers of
start states and regimes are chosen by the log-likelihood per position on held-out sequences
(every `VALIDATION_EVERY`-th fitting sequence), then refitted on all of them. Steady states
are ordered by acceptance probability (label switching removed). The result is the simulator's
`HmmAcceptance` (`simulator.acceptance` samples it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulator.acceptance_spec import HmmAcceptance

PSEUDO_COUNT = 1e-3
"""Added to every emission and transition count in the M step (no zero probabilities, so a
held-out symbol never has likelihood zero)."""

VALIDATION_EVERY = 4
"""Every 4th fitting sequence is held out to choose the number of states."""

WITHIN_QUANTILES = 11
"""Quantile points (0, 0.1, ..., 1) kept per confidence bin."""

Pair = tuple[np.ndarray, np.ndarray]
"""One sequence: confidences (float) and verdicts (bool), position by position."""


def confidence_edges(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges from 0 to 1 at quantiles of `confidence` (repeated edges merged)."""
    inner = np.quantile(confidence, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(np.concatenate([[0.0], inner, [1.0]]))
    return edges


def bin_of(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin index of each confidence (right-closed except the first bin)."""
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, len(edges) - 2)


def within_quantiles(confidence: np.ndarray, edges: np.ndarray) -> list[list[float]]:
    """Per bin, WITHIN_QUANTILES quantiles of the confidences that fall in it (the bin's
    midpoint repeated if none do)."""
    bins = bin_of(confidence, edges)
    q = np.linspace(0, 1, WITHIN_QUANTILES)
    rows = []
    for b in range(len(edges) - 1):
        inside = confidence[bins == b]
        if inside.size:
            rows.append([float(v) for v in np.quantile(inside, q)])
        else:
            rows.append([float(edges[b] + edges[b + 1]) / 2] * WITHIN_QUANTILES)
    return rows


def encode(sequences: Sequence[Pair], edges: np.ndarray) -> list[np.ndarray]:
    """Each sequence as symbols 2 * bin + accepted."""
    return [2 * bin_of(c, edges) + a.astype(int) for c, a in sequences]


@dataclass(frozen=True)
class Batch:
    """Sequences padded to one length: symbols (N, T), mask (N, T) of real positions."""

    symbols: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, encoded: Sequence[np.ndarray]) -> Batch:
        n, t = len(encoded), max(len(e) for e in encoded)
        symbols, mask = np.zeros((n, t), dtype=int), np.zeros((n, t), dtype=bool)
        for i, e in enumerate(encoded):
            symbols[i, : len(e)], mask[i, : len(e)] = e, True
        return cls(symbols, mask)

    @property
    def positions(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class Hmm:
    """Parameters: pi (K,), A (K, K), E (K, S) over S = 2B symbols."""

    pi: np.ndarray
    a: np.ndarray
    e: np.ndarray


def _forward_backward(hmm: Hmm, batch: Batch) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(log-likelihood, gamma sum over first positions, xi summed, emission counts)."""
    n, t_len = batch.symbols.shape
    k = hmm.pi.size
    emit = hmm.e[:, batch.symbols].transpose(1, 2, 0)  # (N, T, K)
    alpha = np.empty((n, t_len, k))
    scale = np.ones((n, t_len))
    a0 = hmm.pi[None, :] * emit[:, 0]
    scale[:, 0] = a0.sum(1)
    alpha[:, 0] = a0 / scale[:, 0, None]
    for t in range(1, t_len):
        m = batch.mask[:, t]
        nxt = (alpha[:, t - 1] @ hmm.a) * emit[:, t]
        c = np.where(m, nxt.sum(1), 1.0)
        scale[:, t] = c
        alpha[:, t] = np.where(m[:, None], nxt / c[:, None], alpha[:, t - 1])
    beta = np.ones((n, t_len, k))
    xi = np.zeros((k, k))
    for t in range(t_len - 2, -1, -1):
        m = batch.mask[:, t + 1]
        weighted = emit[:, t + 1] * beta[:, t + 1] / scale[:, t + 1, None]  # (N, K)
        beta[:, t] = np.where(m[:, None], weighted @ hmm.a.T, beta[:, t + 1])
        xi += np.einsum("ni,ij,nj->ij", alpha[:, t] * m[:, None], hmm.a, weighted)
    gamma = alpha * beta
    gamma /= gamma.sum(2, keepdims=True)
    gamma *= batch.mask[:, :, None]
    counts = np.zeros_like(hmm.e)
    np.add.at(counts.T, batch.symbols[batch.mask], gamma[batch.mask])
    loglik = float(np.log(scale)[batch.mask].sum())
    return loglik, gamma[:, 0].sum(0), xi, counts


def log_likelihood(hmm: Hmm, batch: Batch) -> float:
    """Total log-likelihood of a batch."""
    return _forward_backward(hmm, batch)[0]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum(axis=-1, keepdims=True)


def _masks(k: int, start_states: int) -> tuple[np.ndarray, np.ndarray]:
    """Where pi and A may be non-zero: everywhere, or with `start_states` S a start in state
    0, state i < S - 1 moving to i + 1 only, state S - 1 to one of the steady states (S and
    up), and the steady states among themselves."""
    if not start_states:
        return np.ones(k), np.ones((k, k))
    pi = np.zeros(k)
    pi[0] = 1.0
    a = np.zeros((k, k))
    for i in range(start_states - 1):
        a[i, i + 1] = 1.0
    a[start_states - 1 :, start_states:] = 1.0
    return pi, a


def _start(
    k: int, symbols: int, marginal: np.ndarray, rng: np.random.Generator, start_states: int = 0
) -> Hmm:
    e = _normalise(rng.dirichlet(np.ones(symbols), size=k) * 0.5 + marginal[None, :])
    pi_mask, a_mask = _masks(k, start_states)
    a = _normalise((np.full((k, k), 0.1 / max(k - 1, 1)) + np.eye(k) * 0.9) * a_mask)
    return Hmm(_normalise(pi_mask), a, e)


def baum_welch(
    batch: Batch,
    k: int,
    symbols: int,
    seed: int,
    restarts: int = 3,
    iterations: int = 200,
    tolerance: float = 1e-6,
    start_states: int = 0,
    history: list[list[float]] | None = None,
) -> tuple[Hmm, float]:
    """The best of `restarts` EM runs (seeded) with `k` states, the first `start_states` of
    them a start phase (module docstring): (model, log-likelihood). Each run's
    log-likelihoods, iteration by iteration, are appended to `history`."""
    marginal = np.bincount(batch.symbols[batch.mask], minlength=symbols) + 1.0
    marginal = marginal / marginal.sum()
    pi_mask, a_mask = _masks(k, start_states)
    best: tuple[Hmm, float] | None = None
    for r in range(restarts):
        hmm = _start(k, symbols, marginal, np.random.default_rng([seed, k, r]), start_states)
        previous = -math.inf
        trace = []
        for _ in range(iterations):
            loglik, first, xi, counts = _forward_backward(hmm, batch)
            trace.append(loglik)
            hmm = Hmm(
                _normalise((first + PSEUDO_COUNT) * pi_mask),
                _normalise((xi + PSEUDO_COUNT) * a_mask),
                _normalise(counts + PSEUDO_COUNT),
            )
            if loglik - previous < tolerance * batch.positions:
                break
            previous = loglik
        loglik = log_likelihood(hmm, batch)
        if history is not None:
            history.append([*trace, loglik])
        if best is None or loglik > best[1]:
            best = (hmm, loglik)
    assert best is not None
    return _ordered(best[0], start_states), best[1]


def _ordered(hmm: Hmm, start_states: int = 0) -> Hmm:
    """States sorted by their acceptance probability (odd symbols are accepted ones); start
    states stay first, in their order."""
    steady = np.argsort(hmm.e[start_states:, 1::2].sum(1), kind="stable") + start_states
    order = np.concatenate([np.arange(start_states), steady])
    return Hmm(hmm.pi[order], hmm.a[np.ix_(order, order)], hmm.e[order])


@dataclass(frozen=True)
class HmmFit:
    """The chosen model, its numbers of start states and regimes, and the held-out
    log-likelihood per position for each (start states, regimes) pair tried."""

    model: HmmAcceptance
    states: int
    selection: dict[tuple[int, int], float]
    train_loglik_per_position: float
    start_states: int = 0


def _counts(values: Sequence[int], name: str, least: int) -> None:
    """ValueError unless `values` are integers, at least `least` each (and there is one)."""
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < least]
    if not values or bad:
        what = "positive integers" if least == 1 else "integers >= 0"
        raise ValueError(f"fit_hmm: {name} must be {what} (got {list(values)!r})")


def fit_hmm(
    sequences: Sequence[Pair],
    states: Sequence[int] = (1, 2, 3, 4),
    bins: int = 8,
    seed: int = 0,
    restarts: int = 3,
    iterations: int = 200,
    source: str = "",
    edges: Sequence[float] | None = None,
    start_states: Sequence[int] = (0,),
) -> HmmFit:
    """Fit the regime-switching model to `sequences` (module docstring): `bins` quantile bins
    of confidence unless `edges` are given; every pair of a start-state count in
    `start_states` and a regime count in `states` is tried. ValueError if there are fewer
    than VALIDATION_EVERY sequences or a bad count."""
    if len(sequences) < VALIDATION_EVERY:
        raise ValueError(
            f"fit_hmm: need at least {VALIDATION_EVERY} sequences to choose the number of "
            f"states (got {len(sequences)})"
        )
    _counts(states, "states", 1)
    _counts(start_states, "start_states", 0)
    confidence = np.concatenate([c for c, _ in sequences])
    edges = confidence_edges(confidence, bins) if edges is None else np.asarray(edges, dtype=float)
    symbols = 2 * (len(edges) - 1)
    encoded = encode(sequences, edges)
    train = [e for i, e in enumerate(encoded) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    held = [e for i, e in enumerate(encoded) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    held_batch, train_batch = Batch.of(held), Batch.of(train)
    selection = {}
    for start in start_states:
        for k in states:
            hmm, _ = baum_welch(
                train_batch, start + k, symbols, seed, restarts, iterations, start_states=start
            )
            selection[(start, k)] = log_likelihood(hmm, held_batch) / held_batch.positions
    start, chosen = max(selection, key=lambda sk: (selection[sk], -sum(sk), -sk[0]))
    everything, total = Batch.of(encoded), start + chosen
    hmm, loglik = baum_welch(
        everything, total, symbols, seed, restarts, iterations, start_states=start
    )
    model = HmmAcceptance(
        kind="hmm",
        edges=[float(v) for v in edges],
        within=within_quantiles(confidence, edges),
        initial=[float(v) for v in hmm.pi],
        transition=[[float(v) for v in row] for row in hmm.a],
        emission=hmm.e.reshape(total, symbols // 2, 2).tolist(),
        sequence_lengths=[len(c) for c, _ in sequences],
        source=source,
    )
    return HmmFit(model, chosen, selection, loglik / everything.positions, start)


def as_hmm(model: HmmAcceptance) -> Hmm:
    """The numpy parameters of a fitted `HmmAcceptance`."""
    e = np.asarray(model.emission, dtype=float).reshape(len(model.initial), -1)
    return Hmm(np.asarray(model.initial), np.asarray(model.transition), e)


__all__ = [
    "Batch",
    "Hmm",
    "HmmFit",
    "as_hmm",
    "baum_welch",
    "bin_of",
    "confidence_edges",
    "encode",
    "fit_hmm",
    "log_likelihood",
    "within_quantiles",
]
