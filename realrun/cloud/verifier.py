"""Verification rules on a target's logit rows, independent of the backend (llama.cpp, torch).

A verification of drafts d1..dk evaluates [pending, d1..dk]; `rows(j)` is the target's logit
row after input j (row j predicts the token after d_j, row 0 the one after `pending`). A rule
turns the rows into (accepted, token): the number of leading drafts kept and the next token
(the correction at the first rejection, or the bonus after the last draft). Rules:

- `Greedy`: d_j is kept while it equals the argmax of row j-1; `token` = argmax of the row
  after the kept prefix. Lossless with respect to the target's greedy output.
- `Synthetic`: the acceptance *verdicts* come from the client (the simulator's seeded
  AcceptanceStream, so the edge and the simulator see the same outcomes); the forward pass is
  still real, so its timing is. `verdicts[i]` is the verdict of output position i (0 = first
  generated token); the draft d_j of a verification whose session has generated g tokens sits
  at position g + j - 1. `accepted` = leading drafts whose positions are marked True (positions
  past the list's end are rejections); `token` = argmax of row `accepted`. Should that argmax
  equal the rejected draft (chance), the draft still counts as rejected and `token` is that
  same id: the edge replaces its rejected draft by `token` either way.
- `Sampling`: standard speculative sampling at temperature T with a per-session numpy Generator
  seeded once (`policies.picospec.sparse_verify.exact_step` does each step): p = softmax(row /
  T); d_j is accepted with probability min(1, p(d_j)/q_j(d_j)); at the first rejection `token` ~
  norm(max(0, p - q_j)); after k acceptances `token` ~ p of row k. q_j is the draft distribution
  uploaded with d_j (a `SparseDist`, zero outside its ids). The output is exactly distributed as
  the target's own sampling at T whenever d_j was drawn from the uploaded q_j: the identity
  P(out = y) = min(p, q)(y) + max(0, p - q)(y) = p(y) holds for *any* q. So an edge that uploads
  a top-K distribution must draw its draft from that same top-K renormalised distribution (top-K
  sampling at the edge): still lossless, only acceptance drops. If the draft was drawn from its
  full q but a truncated q̂ = q / S on the top-K (S its mass there) is uploaded, tokens outside
  the top-K cannot be uploaded at all and the rest are accepted with min(1, S·p/q) instead of
  min(1, p/q); the output is then not exactly p.

- `TopK`: PicoSpec's edge-side verification. The rule keeps every draft and the top-K rows
  for the answer; the edge runs `verify_topk` and reports (accepted, token), with which the
  server rolls its session back to the accepted prefix (realrun.cloud.handlers.settle).

Greedy and Synthetic need only each row's argmax (ties: the first maximal index, as np.argmax
and torch.argmax); a backend that has it already (computed on the device, say) passes it as
`argmax(j)` so those rules never fetch a full row. Only Sampling reads rows, and only the ones
it gets to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from numpy.typing import NDArray

from policies.picospec.sparse_verify import exact_step

Rows = Callable[[int], NDArray[np.float32]]
"""Logit row j of a verification (row j predicts the token after input j)."""

Argmax = Callable[[int], int]
"""The argmax of row j (the first maximal index): what Greedy and Synthetic use of a row."""


@dataclass(frozen=True)
class SparseDist:
    """A draft distribution over `ids` (distinct token ids), zero elsewhere; sums to 1."""

    ids: NDArray[np.int64]
    probs: NDArray[np.float64]

    def dense(self, n_vocab: int) -> NDArray[np.float64]:
        """The distribution as a vector over the whole vocabulary."""
        q = np.zeros(n_vocab)
        q[self.ids] = self.probs
        return q


@dataclass(frozen=True)
class Greedy:
    """Greedy (temperature 0) verification: the default."""


@dataclass(frozen=True)
class Synthetic:
    """Acceptance decided by the client's verdict per output position (True = accepted)."""

    verdicts: tuple[bool, ...]


@dataclass
class Sampling:
    """Speculative sampling at `temperature`, random draws from a Generator seeded by `seed`."""

    temperature: float
    seed: int
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)


@dataclass
class TopK:
    """Edge-side verification (PicoSpec): the server answers each verify with the target's
    top-`top_k` (ids, probabilities of softmax(row / `temperature`)) at every verified
    position plus the bonus one, instead of a decision; the edge decides
    (realrun.edge.topk_verify) and reports (accepted, token) as the next request's `outcome`.
    `rows`: the latest verify's top-K rows; `awaiting`: drafts it verified, None when no
    outcome is due."""

    temperature: float
    top_k: int
    rows: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = field(default_factory=list)
    awaiting: int | None = None


Rule = Greedy | Synthetic | Sampling | TopK


def softmax(logits: NDArray[np.float32], temperature: float) -> NDArray[np.float64]:
    """softmax(logits / temperature) in float64 (sums to 1 within rounding)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def decide(
    rule: Rule,
    rows: Rows,
    drafts: Sequence[int],
    position: int,
    dists: Sequence[SparseDist | None] = (),
    argmax: Argmax | None = None,
) -> tuple[int, int]:
    """(accepted, token) of one verification under `rule` (see the module docstring).

    `rows(j)` is called lazily, only for the rows the rule looks at. `position`: output
    position of d1 (tokens generated before it). `dists`: one draft distribution per draft
    (Sampling only; ValueError if one is missing). `argmax`: the argmax of row j, precomputed
    by the backend (Greedy and Synthetic then never call `rows`); None: `np.argmax(rows(j))`.
    Must agree with `rows` (first maximal index on ties).
    """
    if isinstance(rule, Sampling):
        return _sampling(rule, rows, drafts, dists)
    if isinstance(rule, TopK):
        return _topk(rule, rows, len(drafts))
    if argmax is None:
        argmax = partial(_row_argmax, rows)
    if isinstance(rule, Synthetic):
        accepted = 0
        while accepted < len(drafts):
            index = position + accepted
            if index >= len(rule.verdicts) or not rule.verdicts[index]:
                break
            accepted += 1
        return accepted, int(argmax(accepted))
    accepted = 0
    token = int(argmax(0))
    for j, d in enumerate(drafts, start=1):
        if d != token:
            break
        accepted += 1
        token = int(argmax(j))
    return accepted, token


def _row_argmax(rows: Rows, j: int) -> int:
    return int(np.argmax(rows(j)))


def _sampling(
    rule: Sampling, rows: Rows, drafts: Sequence[int], dists: Sequence[SparseDist | None]
) -> tuple[int, int]:
    if len(dists) != len(drafts) or any(d is None for d in dists):
        raise ValueError("sampling verification needs a draft distribution for every draft")
    for j, (d, dist) in enumerate(zip(drafts, dists, strict=True)):
        row = rows(j)
        p = softmax(row, rule.temperature)
        assert dist is not None
        ok, token = exact_step(p, dist.dense(row.size), int(d), rule.rng)
        if not ok:
            return j, token
    p = softmax(rows(len(drafts)), rule.temperature)
    return len(drafts), int(rule.rng.choice(p.size, p=p))


def top_k_row(
    logits: NDArray[np.float32], temperature: float, k: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The `k` most likely ids of softmax(logits / temperature) (decreasing probability, ties
    towards the lower id) and their probabilities (not renormalised); k >= V: all."""
    p = softmax(logits, temperature)
    ids = np.argsort(-p, kind="stable")[:k].astype(np.int64)
    return ids, p[ids]


def _topk(rule: TopK, rows: Rows, n_drafts: int) -> tuple[int, int]:
    """Store the top-K of every row for the answer; the session then holds every draft and a
    placeholder pending token (the bonus row's argmax) until the edge's outcome."""
    rule.rows = [top_k_row(rows(j), rule.temperature, rule.top_k) for j in range(n_drafts + 1)]
    rule.awaiting = n_drafts
    return n_drafts, int(rule.rows[-1][0][0])


__all__ = [
    "Argmax",
    "Greedy",
    "Rows",
    "Rule",
    "Sampling",
    "SparseDist",
    "Synthetic",
    "TopK",
    "decide",
    "softmax",
    "top_k_row",
]
