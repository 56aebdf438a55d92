"""The edge's draft models: a llama.cpp model whose KV cache survives rollbacks, drafting
greedily, with whole probability rows (PipeSD), or by sampling its renormalised top-K.

Split from the executor (realrun/edge/executor.py), which drives them; the sizes of sampled
distributions on the wire are bounded here too (`max_sampling_top_k`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from realrun.cloud.verifier import SparseDist
from realrun.protocol import MAX_TEMPERATURE, Limits


class _LlamaDraft:
    """A llama.cpp draft model whose KV cache is reused across rollbacks (the base of
    `GreedyDraft` and `SamplingDraft`, which differ only in how they pick the next token).

    `logits(context)` is the draft's logit row after `context`. It reuses the longest cached
    prefix of `context` (setting `n_tokens` back makes the next `eval` overwrite the rest: that
    is the KV rollback) and evaluates what is missing; at least one token is always evaluated
    unless the last evaluation ended exactly at `context`.
    """

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.n_vocab = int(llama.n_vocab())
        self.logits_at = -1  # n_tokens right after the last eval (its logits are current)

    def _sync(self, context: Sequence[int]) -> None:
        llama = self.llama
        n = int(llama.n_tokens)
        length = len(context)
        limit = min(n, length)
        same = 0
        if limit:
            cached = np.asarray(llama.input_ids[:limit])
            wanted = np.asarray(context[:limit])
            diff = np.flatnonzero(cached != wanted)
            same = int(diff[0]) if diff.size else limit
        if same == length == n == self.logits_at:
            return
        keep = min(same, length - 1)
        llama.n_tokens = keep
        llama.eval(list(context[keep:]))
        self.logits_at = int(llama.n_tokens)

    def prefill(self, context: Sequence[int]) -> None:
        self._sync(context)

    def logits(self, context: Sequence[int]) -> NDArray[np.float64]:
        """The draft's logit row after `context` (float64, checked finite)."""
        self._sync(context)
        pointer = self.llama._ctx.get_logits_ith(-1)
        if not pointer:
            raise RuntimeError("run_edge: llama.cpp returned no logits for the draft")
        row = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        if not np.all(np.isfinite(row)):
            raise RuntimeError("run_edge: the draft produced non-finite logits")
        return row


class GreedyDraft(_LlamaDraft):
    """Greedy drafting: `next(context)` returns (argmax token after `context`, its softmax
    probability)."""

    def next(self, context: Sequence[int]) -> tuple[int, float]:
        row = self.logits(context)
        token = int(np.argmax(row))
        return token, 1.0 / float(np.sum(np.exp(row - row[token])))

    def step(self, context: Sequence[int]) -> tuple[int, float, SparseDist | None]:
        """(next token, confidence for the policy, None: a deterministic choice)."""
        token, confidence = self.next(context)
        return token, confidence, None


class FullRowDraft(GreedyDraft):
    """Greedy drafting that keeps each token's whole draft distribution (softmax of its logit
    row, float32), so every upload carries it: PipeSD's full-distribution payload
    (`full_rows` of run_edge; realrun.protocol `rows`, `row_bytes` bytes per probability)."""

    def __init__(self, llama: Any, row_bytes: int) -> None:
        super().__init__(llama)
        self.row_bytes = row_bytes
        self.ids = np.arange(self.n_vocab, dtype=np.int64)

    def step(self, context: Sequence[int]) -> tuple[int, float, SparseDist | None]:
        """(argmax token, its probability, the full distribution over the vocabulary)."""
        row = self.logits(context)
        token = int(np.argmax(row))
        e = np.exp(row - row[token])
        probs = (e / e.sum()).astype(np.float32)
        return token, float(probs[token]), SparseDist(self.ids, probs)


@dataclass(frozen=True)
class EdgeSampling:
    """Speculative sampling at the edge (module docstring, "Sampling"): the draft samples at
    `temperature` from its `top_k` most likely tokens (`top_k` >= the vocabulary: all of them),
    with random draws derived from `seed`; ValueError on values the server would refuse.
    `downlink_top_k` > 0: PicoSpec's edge-side verification (module docstring, "Edge-side
    verification"): the server answers with its top-`downlink_top_k` rows and the edge decides;
    0: the server verifies."""

    temperature: float
    top_k: int
    seed: int
    downlink_top_k: int = 0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError(f"EdgeSampling: temperature must be a finite number (got {t!r})")
        if not 0 < t <= MAX_TEMPERATURE:
            raise ValueError(f"EdgeSampling: temperature must be in (0, {MAX_TEMPERATURE:g}]")
        for name, value, low in (("top_k", self.top_k, 1), ("seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"EdgeSampling: {name} must be an integer >= {low}")
        if self.seed >= 2**63:
            raise ValueError("EdgeSampling: seed must be below 2**63")
        most = Limits(n_vocab=1).max_top_k
        k = self.downlink_top_k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= most:
            raise ValueError(f"EdgeSampling: downlink_top_k must be an integer in [0, {most}]")

    def server_seed(self, request: int) -> int:
        """The seed of request `request`'s server session (its accept/resample draws), in
        [0, 2**63)."""
        words = np.random.SeedSequence([self.seed, request], spawn_key=(_SERVER_STREAM,))
        high, low = (int(w) for w in words.generate_state(2, np.uint32))
        return ((high << 32) | low) >> 1

    def rng(self, request: int) -> np.random.Generator:
        """The Generator of the edge's draws for request `request`."""
        entropy = [self.seed, request]
        return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(_EDGE_STREAM,)))

    def verify_rng(self, request: int) -> np.random.Generator:
        """The Generator of the edge's accept/resample draws (edge-side verification)."""
        entropy = [self.seed, request]
        return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(_VERIFY_STREAM,)))


_EDGE_STREAM, _SERVER_STREAM, _VERIFY_STREAM = 0, 1, 2
"""Spawn keys separating the edge's draws, the server session's seed and the edge's own
verification draws."""


def top_k_distribution(row: NDArray[np.float64], temperature: float, top_k: int) -> SparseDist:
    """softmax(row / temperature) restricted to its `top_k` largest entries and renormalised
    (ties at the boundary: the lower token ids), ids ascending; `top_k` >= len(row): all."""
    z = np.asarray(row, dtype=np.float64) / temperature
    size = z.size
    if top_k >= size:
        ids = np.arange(size, dtype=np.int64)
    else:
        kth = np.partition(z, size - top_k)[size - top_k]  # the top_k-th largest value
        above = np.flatnonzero(z > kth)
        ties = np.flatnonzero(z == kth)[: top_k - above.size]
        ids = np.sort(np.concatenate([above, ties])).astype(np.int64)
    e = np.exp(z[ids] - z[ids].max())
    return SparseDist(ids, e / e.sum())


class SamplingDraft(_LlamaDraft):
    """Sampling drafting for one request: `next(context)` draws d ~ q, q = `top_k_distribution`
    of the draft's logits after `context`, and returns (d, max q, q as a SparseDist).

    q is exactly the distribution d is drawn from (the server's speculative sampling is
    lossless only then: realrun.cloud.verifier). Draws come one after the other from
    `sampling.rng(request)`.
    """

    def __init__(self, llama: Any, sampling: EdgeSampling, request: int) -> None:
        super().__init__(llama)
        self.sampling = sampling
        self.rng = sampling.rng(request)

    def next(self, context: Sequence[int]) -> tuple[int, float, SparseDist]:
        s = self.sampling
        q = top_k_distribution(self.logits(context), s.temperature, s.top_k)
        index = int(self.rng.choice(q.probs.size, p=q.probs))
        return int(q.ids[index]), float(q.probs.max()), q

    def step(self, context: Sequence[int]) -> tuple[int, float, SparseDist | None]:
        """(next token, confidence for the policy, the distribution it was drawn from)."""
        return self.next(context)


Draft = GreedyDraft | SamplingDraft
"""A draft model as the edge drives it: `step(context)` -> (token, confidence, q or None)."""


def max_sampling_top_k(tokens_per_message: int, max_body_bytes: int | None = None) -> int:
    """The largest top-K whose distributions fit `tokens_per_message` draft tokens in one
    request body of `max_body_bytes` (default: the server's, realrun.protocol.Limits), for any
    vocabulary below 2**32 (0 if none fits): msgpack takes at most 5 bytes per token id and 9
    per float64 probability, plus `_DIST_OVERHEAD` per token and `_BODY_OVERHEAD` per body."""
    limit = Limits(n_vocab=1).max_body_bytes if max_body_bytes is None else max_body_bytes
    per_token = (limit - _BODY_OVERHEAD) // max(int(tokens_per_message), 1)
    return max(0, (per_token - _DIST_OVERHEAD) // (5 + 9))


_BODY_OVERHEAD = 256
"""Bytes of a request body besides its drafts: keys, a session id of at most 64 characters,
`n`, `seq`, `at`, `after`, array headers (generous)."""
_DIST_OVERHEAD = 16
"""Bytes per draft token besides its distribution's entries: the token id (5) and the headers
of [[ids], [probs]] (1 + 5 + 5)."""
