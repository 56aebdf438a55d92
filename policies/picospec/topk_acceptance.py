"""What a top-K downlink does to PicoSpec's acceptance and exactness, from recorded positions.

With the "renormalise" fill (sparse_verify), the edge accepts draft token x with probability
min(1, p̃(x)/q(x)), p̃ = p / S_K on the target's top-K (S_K its mass) and 0 elsewhere: a
token outside the top-K is never accepted, one inside is accepted at least as often as with
the exact p. The output is distributed as p̃, at total variation 1 - S_K from the target.
An acceptance trace recorded with the target's top-K (calibrate/acceptance.py: per position
the drafted token, its draft probability q(x), min(1, p(x)/q(x)) and the target's top-32)
gives both exactly for every K up to the recorded one; `topk_effect` averages them over
positions. Pure: arrays in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def topk_position(
    token: int, q_x: float, top_ids: Sequence[int], top_probs: Sequence[float], k: int
) -> tuple[float, float]:
    """(acceptance probability with a top-`k` downlink, tail mass 1 - S_k) at one position.

    `top_ids`/`top_probs` are the target's most probable tokens, most probable first, at
    least `k` of them; `q_x` > 0 is the draft's probability of the drafted `token`.
    """
    if not 1 <= k <= len(top_ids) or len(top_ids) != len(top_probs):
        raise ValueError(f"k must be in [1, {len(top_ids)}] (the recorded top-K), got {k}")
    if q_x <= 0:
        raise ValueError(f"draft probability of the drafted token must be > 0, got {q_x}")
    covered = float(np.sum(top_probs[:k]))
    if covered <= 0:
        raise ValueError("the target's top-K holds no probability")
    ids = list(top_ids[:k])
    accept = min(1.0, top_probs[ids.index(token)] / (covered * q_x)) if token in ids else 0.0
    return accept, max(0.0, 1.0 - covered)


@dataclass(frozen=True, slots=True)
class TopKEffect:
    """Averages over recorded positions for one K."""

    k: int
    exact_acceptance: float
    """Mean min(1, p(x)/q(x)): acceptance with the exact target (K = V)."""
    topk_acceptance: float
    """Mean acceptance with the top-K downlink (renormalised)."""
    tv_error: float
    """Mean total variation between the sparse-verified output and the target (1 - S_K)."""

    @property
    def retention(self) -> float:
        """topk_acceptance / exact_acceptance (1 where nothing is ever accepted)."""
        return self.topk_acceptance / self.exact_acceptance if self.exact_acceptance else 1.0


def topk_effect(
    tokens: Sequence[int],
    q_x: Sequence[float],
    accept_prob: Sequence[float],
    top_ids: Sequence[Sequence[int]],
    top_probs: Sequence[Sequence[float]],
    k: int,
) -> TopKEffect:
    """`topk_position` averaged over recorded positions (equal-length sequences, >= 1)."""
    n = len(tokens)
    if n == 0 or not n == len(q_x) == len(accept_prob) == len(top_ids) == len(top_probs):
        raise ValueError("positions must be non-empty sequences of equal length")
    pairs = [
        topk_position(t, q, i, p, k)
        for t, q, i, p in zip(tokens, q_x, top_ids, top_probs, strict=True)
    ]
    accept, tail = np.array(pairs).T
    return TopKEffect(k, float(np.mean(accept_prob)), float(accept.mean()), float(tail.mean()))
