"""PipeSD's token-batch planner: upload batch sizes that get a whole draft to the cloud soonest."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate
from numbers import Real

TIE_TOLERANCE = 1e-12
"""Plans within this fraction of the fastest finish count as optimal: rounding decides nothing."""


def plan_batches(n_tokens: int, alpha_s: float, beta_s: float, gamma_s: float) -> tuple[int, ...]:
    """Batch sizes, in upload order, of a plan that gets `n_tokens` to the cloud soonest.

    Token k (1-based) is drafted at γ·k; a batch of s tokens uploads in α + β·s and starts once
    its last token is drafted and the previous batch is done. With batch ends a_1 < … < a_K = N
    (a_0 = 0) the last batch finishes at

        max over m of  γ·a_m + (K - m + 1)·α + β·(N - a_{m-1})

    (batch m waits for its last token and every later message queues behind it). The earliest
    finish comes from the dynamic programme

        dp[0] = 0,  dp[j] = min over 0 <= i < j of  max(dp[i], γ·j) + α + β·(j - i).

    Many plans often reach it: when drafting is the bottleneck a batch only has to be done
    before the next one's last token is drafted, and the plain DP then sends one token per
    message. Among the optimal plans this returns, as the tie-break:

    1. the fewest batches (each is another message on the uplink), counting plans within
       `TIE_TOLERANCE` of the optimum as optimal;
    2. among those, the last batch as large as possible, then the one before it, and so on.

    A backward greedy computes it: from the last batch to the first, each batch starts at the
    earliest token that keeps its term of the formula within the optimum. Jumping as far back
    as possible is never worse, as a term grows with the batch's end, with the batches from it
    to the last, and with the tokens left to upload from its start.
    """
    _check_count("n_tokens", n_tokens)
    _check_costs(alpha_s, beta_s, gamma_s)
    fastest = _fastest_ends(n_tokens, alpha_s, beta_s, gamma_s)
    optimum = _finish_from_ends(fastest, alpha_s, beta_s, gamma_s)
    limit = optimum * (1.0 + TIE_TOLERANCE)
    return _sizes(_fewest_ends(n_tokens, limit, alpha_s, beta_s, gamma_s))


def plan_finish_time(sizes: Sequence[int], alpha_s: float, beta_s: float, gamma_s: float) -> float:
    """When the last batch of the plan `sizes` has reached the cloud (drafting starts at 0)."""
    _check_sizes(sizes)
    _check_costs(alpha_s, beta_s, gamma_s)
    finish = 0.0
    end = 0
    for size in sizes:
        end += size
        finish = max(finish, gamma_s * end) + alpha_s + beta_s * size
    return finish


def batch_boundaries(sizes: Sequence[int]) -> tuple[int, ...]:
    """Cumulative batch ends: the drafted-token counts at which each batch is sent."""
    _check_sizes(sizes)
    return tuple(accumulate(sizes))


def _fastest_ends(n: int, alpha: float, beta: float, gamma: float) -> list[int]:
    """Batch ends of a fastest plan, by the DP and backtracking.

    `finish` is nondecreasing in the number of tokens, so once a candidate previous end i has
    finished uploading by the time token j is drafted, every smaller i only adds upload time
    and the scan over i (from j - 1 downwards) stops.
    """
    finish = [0.0] * (n + 1)
    previous = [0] * (n + 1)
    for j in range(1, n + 1):
        ready = gamma * j
        best = math.inf
        best_i = 0
        for i in range(j - 1, -1, -1):
            done = finish[i]
            start = done if done > ready else ready
            candidate = start + beta * (j - i)
            if candidate < best:
                best = candidate
                best_i = i
            if done <= ready:
                break
        finish[j] = best + alpha
        previous[j] = best_i
    ends = []
    j = n
    while j > 0:
        ends.append(j)
        j = previous[j]
    ends.reverse()
    return ends


def _finish_from_ends(ends: list[int], alpha: float, beta: float, gamma: float) -> float:
    """The plan's finish time by the closed form, computed exactly as the greedy computes it.

    A batch (start, end] with `batches_left` batches from it to the last (itself included)
    contributes the term gamma * end + batches_left * alpha + beta * (n - start): its finish
    if it waits for its last token and the rest queue behind it. The term grows with `end` and
    `batches_left` and falls with `start`, also in floating point, which the greedy relies on.
    The plan's finish is the largest term (written out here and in `_earliest_start`, which
    must compute it identically: these run at every re-plan).
    """
    n = ends[-1]
    batches_left = len(ends)
    start = 0
    finish = -math.inf
    for end in ends:
        term = gamma * end + batches_left * alpha + beta * (n - start)
        if term > finish:
            finish = term
        start = end
        batches_left -= 1
    return finish


def _fewest_ends(n: int, limit: float, alpha: float, beta: float, gamma: float) -> list[int]:
    """Batch ends of the plan with the fewest batches finishing by `limit`, latest batches largest.

    `limit` must admit some plan (the DP's); the greedy then never gets stuck.
    """
    ends = []
    end = n
    batches_left = 1
    while end > 0:
        ends.append(end)
        end = _earliest_start(end, batches_left, limit, n, alpha, beta, gamma)
        batches_left += 1
    ends.reverse()
    return ends


def _earliest_start(
    end: int, batches_left: int, limit: float, n: int, alpha: float, beta: float, gamma: float
) -> int:
    """The smallest start in [0, end) whose batch (start, end] keeps its term (see
    `_finish_from_ends`) within `limit`."""
    low, high = 0, end - 1
    head = gamma * end + batches_left * alpha  # the term's first two summands, as it adds them
    while low < high:
        middle = (low + high) // 2
        if head + beta * (n - middle) <= limit:
            high = middle
        else:
            low = middle + 1
    return low


def _sizes(ends: list[int]) -> tuple[int, ...]:
    """Batch sizes from cumulative batch ends."""
    return tuple(end - start for start, end in zip([0, *ends[:-1]], ends, strict=True))


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_sizes(sizes: Sequence[int]) -> None:
    if len(sizes) == 0:
        raise ValueError("sizes must hold at least one batch size, got none")
    for size in sizes:
        _check_count("every batch size", size)


def _check_costs(alpha_s: float, beta_s: float, gamma_s: float) -> None:
    for name, value in (("alpha_s", alpha_s), ("beta_s", beta_s), ("gamma_s", gamma_s)):
        real = type(value) is float or isinstance(value, Real)  # floats skip the ABC check
        if not (real and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 seconds, got {value!r}")
