"""PicoSpec's separate rejection sampling with sparse compression, in closed form.

Standard speculative sampling (Leviathan et al. 2023; Chen et al. 2023). The draft proposes
x ~ q; the verifier accepts it with probability min(1, p(x)/q(x)); on a rejection it samples
from the residual r = max(0, p - q) / Σ max(0, p - q). One step emits y with probability

    P(out = y) = q(y)·min(1, p(y)/q(y)) + (1 - β)·r(y) = min(p(y), q(y)) + max(0, p(y) - q(y))
               = p(y),                                   β = Σ_y min(p(y), q(y)),

because Σ max(0, p - q) = 1 - β when p and q both sum to 1: the output is exactly p.

PicoSpec splits this across the link. The uplink carries each draft token and its draft
probability q(x) (the cloud never sees the rest of q); the cloud answers once per round with
the top-K of its target distribution (indices and probabilities) at every verified position,
and the edge, which holds q in full because it ran the draft, accepts, rejects and resamples
locally. The edge therefore knows p only through p̂ = the K largest entries of p; the
remaining tail mass T = 1 - Σ p̂ is known, but not how it spreads over the other V - K tokens.

The edge fills in a full target p̃ from p̂ and then runs the standard step with p̃ in place of
p. Whatever p̃ is, the output is then exactly p̃ (the identity above), so the distribution
error of the scheme is TV(p, p̃) and depends only on how the unknown tail is filled in:

- ``"renormalise"`` (the default): p̃ = p̂ / Σ p̂ on the top-K, 0 elsewhere. The output is
  the target conditioned on its top-K, i.e. exactly top-K-truncated sampling of the target,
  and the error is exactly the uncovered mass: TV(p, p̃) = T. This is the scheme the
  protocol as described implies ("exactness needs the top-K set to cover the target mass"),
  it never emits a token outside the top-K, and its error does not depend on the draft, so it
  is the one used to model PicoSpec; it is non-increasing in K and 0 once the top-K holds
  all of p's support. (Treating the tail as 0 *without* renormalising, i.e. accepting with
  min(1, p̂(x)/q(x)) and resampling from max(0, p̂ - q), is also a valid sampler with the same
  TV error T, but it skews the proportions inside the top-K towards tokens where p > q and
  accepts less often, since p̂ <= p̃; it is not offered.)
- ``"draft"``: keep the tail as an "other" bucket of mass T and spread it over the tokens
  outside the top-K in proportion to the draft: p̃(y) = T·q(y)/Q for y outside, with Q the
  draft's mass outside the top-K (if Q = 0 it falls back to renormalising). It costs no extra
  bytes (the edge computes T from the K probabilities it receives and has q locally), and
  its error TV(p, p̃) = T·TV(p|tail, q|tail) (target and draft conditioned on the tail) is
  never larger than T, so it dominates ``"renormalise"``; it is 0 when T = 0, and it is
  non-increasing in K as well: moving a token a from the tail into the top-K changes each
  remaining tail defect d(y) = p(y) - (T/Q)·q(y) into d(y) + d(a)·q(y)/(Q - q(a)), so the
  L1 norm of the defects cannot grow. It is an option, not the default, because it models
  a protocol refinement rather than the scheme PicoSpec describes.

Top-K ties are broken towards the lower token index (a stable sort), so the top-K sets for
growing K are nested and every function here is deterministic.

Payload accounting (msgpack sizes, the simulator's defaults): a token id takes 5 B, a float64
probability 9 B, a vocabulary index 5 B. PicoSpec's uplink is 14 B per draft token against
5 + 32000·9 = 288 005 B when the whole draft distribution goes up (PipeSD's setting); its
downlink is K (index, probability) pairs per verified position. An optional
``array_header_bytes`` adds a msgpack array header per list (the simulator's payload model in
simulator/payload.py uses 5 B); it defaults to 0 here so the numbers are pure entry bytes.

Until calibration supplies real distribution pairs, ``zipf_pair`` draws synthetic ones
(documented there). Everything here is pure: no clocks, I/O or global random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Tail = Literal["renormalise", "draft"]
"""How the edge fills in the target mass outside the top-K (see the module docstring)."""
TAILS: tuple[Tail, ...] = ("renormalise", "draft")

SUM_TOLERANCE = 1e-6
"""A distribution must sum to 1 within this; top-K probabilities may exceed 1 by at most it."""

TOKEN_ID_BYTES = 5
"""A token id on the wire (msgpack uint32)."""
PROB_BYTES = 9
"""A probability on the wire (msgpack float64)."""
INDEX_BYTES = 5
"""A vocabulary index in a sparse top-K list (msgpack uint32)."""
VOCAB = 32000
"""Vocabulary size used by default (Llama-2 / TinyLlama tokenizer)."""

ZIPF_EXPONENT = 1.1
"""Default Zipf exponent s of the synthetic target."""
DRAFT_TAU = 0.9
"""Default tempering τ of the synthetic draft (τ < 1: the draft is flatter than the target)."""
DRAFT_NOISE = 0.5
"""Default log-space noise σ of the synthetic draft."""


def _distribution(name: str, values: ArrayLike) -> NDArray[np.float64]:
    """`values` as a float64 vector, checked to be a probability distribution."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if abs(a.sum() - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{name} must sum to 1, sums to {a.sum()!r}")
    return a


def _pair(p: ArrayLike, q: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Target and draft distributions over the same vocabulary."""
    p_arr, q_arr = _distribution("p", p), _distribution("q", q)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q differ in vocabulary size: {p_arr.size} vs {q_arr.size}")
    return p_arr, q_arr


def _sample(weights: NDArray[np.float64], rng: np.random.Generator) -> int:
    """One index drawn with probability proportional to the non-negative `weights`.

    Inverse CDF on the cumulative sum; an index with zero weight is never returned, even when
    rounding puts the uniform draw at the very top of the range.
    """
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    if index >= weights.size:
        index = int(np.flatnonzero(weights > 0)[-1])
    return index


def exact_step(p: ArrayLike, q: ArrayLike, x: int, rng: np.random.Generator) -> tuple[bool, int]:
    """One verification of draft token `x` ~ q against target p: (accepted, emitted token).

    Accepts with probability min(1, p(x)/q(x)), drawn as u·q(x) < p(x) with u ~ U[0, 1) so no
    division is needed and p(x) >= q(x) always accepts; emits x. On a rejection emits a sample
    of the residual max(0, p - q), normalised. The residual is all zero only when p = q, where
    a rejection has probability 0 and only rounding can cause one; the target p itself is
    then sampled. The emitted token is distributed exactly as p (module docstring).
    Raises ValueError if q(x) = 0 (the draft cannot have proposed x).
    """
    p_arr, q_arr = _pair(p, q)
    if not 0 <= x < q_arr.size:
        raise ValueError(f"draft token {x} outside the vocabulary of size {q_arr.size}")
    if q_arr[x] <= 0:
        raise ValueError(f"draft token {x} has draft probability 0")
    if rng.random() * q_arr[x] < p_arr[x]:
        return True, int(x)
    residual = np.maximum(p_arr - q_arr, 0.0)
    return False, _sample(residual if residual.sum() > 0 else p_arr, rng)


def top_k(p: ArrayLike, k: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """What the cloud sends for one position: the K largest entries of p (indices, values).

    Sorted by decreasing probability, ties towards the lower index; K larger than the
    vocabulary is clamped to it.
    """
    p_arr = _distribution("p", p)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    indices = np.argsort(-p_arr, kind="stable")[:k]
    return indices, p_arr[indices]


def sparse_target(
    topk_indices: ArrayLike, topk_probs: ArrayLike, q: ArrayLike, tail: Tail = "renormalise"
) -> NDArray[np.float64]:
    """The full target p̃ the edge reconstructs from the top-K it received and its own draft q.

    ``"renormalise"``: p̃ = top-K probabilities / their sum, 0 elsewhere. ``"draft"``: p̃ =
    top-K probabilities as received, and the tail mass T = 1 - Σ top-K spread over the other
    tokens in proportion to q (renormalising instead when the draft has no mass there or T <=
    0). See the module docstring for why. p̃ sums to 1.
    """
    q_arr = _distribution("q", q)
    indices = np.asarray(topk_indices)
    probs = np.asarray(topk_probs, dtype=np.float64)
    if indices.ndim != 1 or indices.shape != probs.shape or indices.size == 0:
        raise ValueError("topk_indices and topk_probs must be 1-D, non-empty, of equal length")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError("topk_indices must be integers")
    if np.any(indices < 0) or np.any(indices >= q_arr.size):
        raise ValueError(f"top-K index outside the vocabulary of size {q_arr.size}")
    if np.unique(indices).size != indices.size:
        raise ValueError("top-K indices must be distinct")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("top-K probabilities must be finite and non-negative")
    covered = float(probs.sum())
    if covered <= 0 or covered > 1 + SUM_TOLERANCE:
        raise ValueError(f"top-K probabilities must sum to a value in (0, 1], got {covered!r}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")

    target = np.zeros_like(q_arr)
    outside = np.ones(q_arr.size, dtype=bool)
    outside[indices] = False
    draft_outside = float(q_arr[outside].sum())
    tail_mass = 1.0 - covered
    if tail == "draft" and tail_mass > 0 and draft_outside > 0:
        target[indices] = probs
        target[outside] = q_arr[outside] * (tail_mass / draft_outside)
    else:
        target[indices] = probs / covered
    return target


def sparse_step(
    topk_indices: ArrayLike,
    topk_probs: ArrayLike,
    q: ArrayLike,
    x: int,
    rng: np.random.Generator,
    tail: Tail = "renormalise",
) -> tuple[bool, int]:
    """The edge's verification of draft token `x` ~ q given the cloud's top-K of the target.

    Builds p̃ = sparse_target(topk_indices, topk_probs, q, tail) and runs exact_step(p̃, q,
    x, rng): accept with min(1, p̃(x)/q(x)), else resample from max(0, p̃ - q). The emitted
    token is distributed exactly as p̃; with K = V (or a top-K holding all of p's support) p̃
    = p and the step is lossless. The default tail runs `verify_topk` on the draft's
    non-zero entries (the edge's own code path).
    """
    if tail == "renormalise":
        q_arr = _distribution("q", q)
        support = np.flatnonzero(q_arr)
        return verify_topk(topk_indices, topk_probs, support, q_arr[support], x, rng)
    return exact_step(sparse_target(topk_indices, topk_probs, q, tail), q, x, rng)


def verify_topk(
    topk_ids: ArrayLike,
    topk_probs: ArrayLike,
    draft_ids: ArrayLike,
    draft_probs: ArrayLike,
    x: int,
    rng: np.random.Generator,
) -> tuple[bool, int]:
    """The edge's verification from sparse inputs only: (accepted, emitted token).

    The cloud sent the target's top-K (`topk_ids`, `topk_probs`); the edge holds its draft q
    as (`draft_ids`, `draft_probs`), summing to 1, e.g. a renormalised top-K of the draft's
    own logits; `x` is the drafted token. With p̃ = top-K probabilities / their sum (the
    ``"renormalise"`` fill): accept with min(1, p̃(x)/q(x)) (x outside the top-K: p̃(x) = 0,
    never accepted), else sample the residual max(0, p̃ - q), which lives on the top-K ids
    only (p̃ itself if the residual is all zero). The emitted token is distributed exactly
    as p̃ (the module docstring's identity), and no vocabulary-sized array is built, so this
    is what realrun's edge runs; `sparse_step` with the default tail is this same function.
    """
    ids = np.asarray(topk_ids)
    probs = np.asarray(topk_probs, dtype=np.float64)
    q_ids = np.asarray(draft_ids)
    q_probs = np.asarray(draft_probs, dtype=np.float64)
    for name, i, v in (("top-K", ids, probs), ("draft", q_ids, q_probs)):
        if i.ndim != 1 or i.shape != v.shape or i.size == 0:
            raise ValueError(f"{name} ids and probabilities must be 1-D, non-empty, equal length")
        if not np.issubdtype(i.dtype, np.integer) or np.unique(i).size != i.size:
            raise ValueError(f"{name} ids must be distinct integers")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"{name} probabilities must be finite and non-negative")
    covered = float(probs.sum())
    if covered <= 0 or covered > 1 + SUM_TOLERANCE:
        raise ValueError(f"top-K probabilities must sum to a value in (0, 1], got {covered!r}")
    if abs(q_probs.sum() - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"draft probabilities must sum to 1, sum to {q_probs.sum()!r}")
    q_at = q_probs[q_ids == x]
    if q_at.size == 0 or q_at[0] <= 0:
        raise ValueError(f"draft token {x} has draft probability 0")
    target = probs / covered
    p_at = target[ids == x]
    if rng.random() * q_at[0] < (p_at[0] if p_at.size else 0.0):
        return True, int(x)
    q_on_top = np.zeros_like(target)
    position = {int(t): j for j, t in enumerate(q_ids)}
    for j, t in enumerate(ids):
        k = position.get(int(t))
        if k is not None:
            q_on_top[j] = q_probs[k]
    residual = np.maximum(target - q_on_top, 0.0)
    return False, int(ids[_sample(residual if residual.sum() > 0 else target, rng)])


def speculative_output(target: ArrayLike, q: ArrayLike) -> NDArray[np.float64]:
    """Closed-form distribution of the token one speculative step emits, target vs draft q.

    P(out = y) = q(y)·min(1, t(y)/q(y)) + (1 - β)·r(y), with β = Σ min(t, q) the acceptance
    probability and r = max(0, t - q) / Σ max(0, t - q) the residual (taken as t itself when
    the residual is all zero, as exact_step does). Computed term by term rather than by the
    identity P = t, so tests compare the sampler, this formula and the target independently.
    """
    t_arr, q_arr = _pair(target, q)
    accepted = np.minimum(t_arr, q_arr)
    acceptance = float(accepted.sum())
    residual = np.maximum(t_arr - q_arr, 0.0)
    residual_mass = float(residual.sum())
    resample = residual / residual_mass if residual_mass > 0 else t_arr / t_arr.sum()
    return accepted + max(0.0, 1.0 - acceptance) * resample


def acceptance_probability(target: ArrayLike, q: ArrayLike) -> float:
    """β = Σ min(target, q): probability that one draft token x ~ q is accepted."""
    t_arr, q_arr = _pair(target, q)
    return float(np.minimum(t_arr, q_arr).sum())


def output_distribution_exact(p: ArrayLike, q: ArrayLike) -> NDArray[np.float64]:
    """Distribution of the token exact_step emits (x ~ q): equals p."""
    return speculative_output(p, q)


def output_distribution_sparse(
    p: ArrayLike, q: ArrayLike, k: int, tail: Tail = "renormalise"
) -> NDArray[np.float64]:
    """Distribution of the token sparse_step emits (x ~ q) when the cloud sends top_k(p, k)."""
    p_arr, q_arr = _pair(p, q)
    return speculative_output(sparse_target(*top_k(p_arr, k), q_arr, tail), q_arr)


def total_variation(a: ArrayLike, b: ArrayLike) -> float:
    """TV distance ½·Σ |a - b| between two distributions over the same support, in [0, 1]."""
    a_arr, b_arr = _pair(a, b)
    return 0.5 * float(np.abs(a_arr - b_arr).sum())


def topk_error(p: ArrayLike, q: ArrayLike, k: int, tail: Tail = "renormalise") -> float:
    """TV distance between the exact output (p) and the sparse scheme's with top-K = `k`.

    For ``"renormalise"`` this is the target mass outside the top-K, 1 - Σ top_k(p, k); for
    ``"draft"`` it is at most that. Both are non-increasing in K and 0 at K = V.
    """
    p_arr, q_arr = _pair(p, q)
    return total_variation(p_arr, output_distribution_sparse(p_arr, q_arr, k, tail))


def uplink_bytes_per_token(
    token_id_bytes: int = TOKEN_ID_BYTES, prob_bytes: int = PROB_BYTES
) -> int:
    """PicoSpec's uplink per draft token: the token id and its draft probability q(x)."""
    return token_id_bytes + prob_bytes


def full_uplink_bytes_per_token(
    vocab: int = VOCAB,
    token_id_bytes: int = TOKEN_ID_BYTES,
    prob_bytes: int = PROB_BYTES,
    *,
    array_header_bytes: int = 0,
) -> int:
    """PipeSD's uplink per draft token: the token id and the whole draft distribution."""
    return token_id_bytes + array_header_bytes + vocab * prob_bytes


def downlink_bytes_per_round(
    k: int,
    n_positions: int,
    index_bytes: int = INDEX_BYTES,
    prob_bytes: int = PROB_BYTES,
    *,
    array_header_bytes: int = 0,
) -> int:
    """PicoSpec's downlink per round: K (index, probability) pairs at each of `n_positions`.

    The verified positions are the draft length γ, plus one if the edge also samples the bonus
    token (all drafts accepted) from the sparse target rather than receiving it as an id.
    """
    return n_positions * (array_header_bytes + k * (index_bytes + prob_bytes))


@dataclass(frozen=True, slots=True)
class RoundBytes:
    """Bytes one round of `draft_len` tokens puts on each link, sparse vs full uplink."""

    uplink_sparse: int
    """PicoSpec: draft_len × (token id + q(x))."""
    uplink_full: int
    """PipeSD: draft_len × (token id + V probabilities)."""
    downlink_topk: int
    """PicoSpec: top-K (index, probability) pairs per verified position."""

    @property
    def uplink_saved(self) -> int:
        """Uplink bytes PicoSpec saves against sending full distributions up."""
        return self.uplink_full - self.uplink_sparse

    @property
    def uplink_ratio(self) -> float:
        """Full-distribution uplink / PicoSpec uplink."""
        return self.uplink_full / self.uplink_sparse

    @property
    def sparse_total(self) -> int:
        """PicoSpec's uplink plus its top-K downlink."""
        return self.uplink_sparse + self.downlink_topk

    @property
    def total_ratio(self) -> float:
        """Full-distribution uplink / (PicoSpec uplink + top-K downlink)."""
        return self.uplink_full / self.sparse_total


def round_bytes(
    draft_len: int,
    k: int,
    *,
    vocab: int = VOCAB,
    bonus_position: bool = True,
    token_id_bytes: int = TOKEN_ID_BYTES,
    prob_bytes: int = PROB_BYTES,
    index_bytes: int = INDEX_BYTES,
) -> RoundBytes:
    """Payload of one round: `draft_len` draft tokens up, top-K per verified position down.

    With `bonus_position` the cloud also sends the top-K at position draft_len + 1 so the
    edge can sample the bonus token itself. The small messages both protocols share (headers,
    PipeSD's accepted count and correction token) are not counted.
    """
    positions = draft_len + (1 if bonus_position else 0)
    return RoundBytes(
        uplink_sparse=draft_len * uplink_bytes_per_token(token_id_bytes, prob_bytes),
        uplink_full=draft_len * full_uplink_bytes_per_token(vocab, token_id_bytes, prob_bytes),
        downlink_topk=downlink_bytes_per_round(k, positions, index_bytes, prob_bytes),
    )


def zipf_pair(
    vocab: int = VOCAB,
    exponent: float = ZIPF_EXPONENT,
    rng: np.random.Generator | None = None,
    draft_noise: float = DRAFT_NOISE,
    *,
    tau: float = DRAFT_TAU,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A synthetic (target p, draft q) pair standing in for real next-token distributions.

    Target: Zipf over a random permutation of the vocabulary, p(π(r)) ∝ r^(-s) for ranks r =
    1..V and s = `exponent`. Draft: a tempered, noisy copy, q ∝ p^τ · exp(σ·z) with z_y i.i.d.
    standard normal, σ = `draft_noise`: τ < 1 makes the small model less confident (flatter)
    than the large one and σ reshuffles its preferences, so the two agree more or less (σ = 0,
    τ = 1 gives q = p). Both are strictly positive. Defaults s = 1.1, τ = 0.9, σ = 0.5.

    This is a placeholder until calibration provides real pairs: s = 1.1 is the classic
    unigram-frequency exponent, and over 32 000 tokens it gives a far flatter distribution
    (top-1 ≈ 0.14) than typical next-token distributions, so the tail mass outside a small
    top-K, and with it the sparse scheme's error, is pessimistic; larger s is more peaked.
    The renormalising scheme's error depends only on the sorted p (so on s and V), not on the
    permutation or the draft.
    """
    if vocab < 1:
        raise ValueError(f"vocab must be at least 1, got {vocab}")
    if exponent < 0 or draft_noise < 0 or tau < 0:
        raise ValueError("exponent, draft_noise and tau must be non-negative")
    rng = np.random.default_rng() if rng is None else rng
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    weights = ranks**-exponent
    p = np.empty(vocab)
    p[rng.permutation(vocab)] = weights / weights.sum()
    log_q = tau * np.log(p) + draft_noise * rng.standard_normal(vocab)
    q = np.exp(log_q - log_q.max())
    return p, q / q.sum()
