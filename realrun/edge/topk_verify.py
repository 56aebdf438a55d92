"""PicoSpec's edge-side verification of one top-K verify answer (realrun.protocol, `top_k`).

A session opened with `sampling.top_k` = K > 0 gets, for each verify of drafts d1..dk, the
target's top-K rows (ids, probabilities at the session's temperature) at the k verified
positions plus the bonus one, instead of a decision. The edge decides with the very sampler the
simulator's PicoSpec model uses (policies.picospec.sparse_verify.verify_topk: accept d_j with
min(1, p̃(d_j)/q_j(d_j)), p̃ the renormalised top-K; at the first rejection resample from
max(0, p̃ - q_j) on the top-K), samples the bonus from the renormalised top-K of the last row
when every draft is kept, and sends (accepted, token) as the `outcome` of its next request,
with which the server rolls its session back to the accepted prefix. The output is exactly
the target's top-K-truncated sampling at the temperature (K >= the vocabulary: the target's
own sampling), and no token outside the top-K is ever emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.picospec.sparse_verify import verify_topk
from realrun.cloud.verifier import SparseDist

TopKRow = tuple[NDArray[np.int64], NDArray[np.float64]]
"""The target's top-K at one position: ids and their (not renormalised) probabilities."""


def rows_of(answer: dict[str, Any]) -> list[TopKRow]:
    """The `topk` rows of a verify answer as numpy arrays."""
    return [
        (np.asarray(ids, dtype=np.int64), np.asarray(probs, dtype=np.float64))
        for ids, probs in answer["topk"]
    ]


def decide_topk(
    rows: Sequence[TopKRow],
    drafts: Sequence[int],
    dists: Sequence[SparseDist],
    rng: np.random.Generator,
) -> tuple[int, int]:
    """(accepted, token) of one verification decided at the edge: `rows` = the answer's k + 1
    top-K rows, `drafts` the k tokens verified and `dists` the distribution each was drawn
    from (the edge's own q); `token` is the correction at the first rejection or the bonus.
    ValueError if the answer does not have one row per draft plus the bonus one."""
    if len(rows) != len(drafts) + 1 or len(dists) != len(drafts):
        raise ValueError(
            f"decide_topk: {len(rows)} top-K rows and {len(dists)} distributions "
            f"for {len(drafts)} drafts (want {len(drafts) + 1} and {len(drafts)})"
        )
    for j, (draft, q) in enumerate(zip(drafts, dists, strict=True)):
        ids, probs = rows[j]
        accepted, token = verify_topk(ids, probs, q.ids, q.probs, int(draft), rng)
        if not accepted:
            return j, token
    ids, probs = rows[-1]
    return len(drafts), int(ids[rng.choice(ids.size, p=probs / probs.sum())])


__all__ = ["TopKRow", "decide_topk", "rows_of"]
