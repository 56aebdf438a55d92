"""Distribution error and payload of PicoSpec's top-K sparse verification on synthetic pairs.

For the synthetic Zipf model (policies.picospec.sparse_verify.zipf_pair, V = 32000, a few exponents)
prints, per K, the exact TV error of one sparse verification step averaged over random
(target, draft) pairs, for the default scheme (renormalise the top-K; its error is the target
mass outside the top-K, the same for every pair of one exponent) and for the draft-filled tail
("other" bucket spread like the draft; its error depends on how well the draft matches the
target on the tail, which the synthetic model makes fairly close, so treat it as optimistic).
β is the probability a draft token is accepted (the exact scheme's is printed per exponent).
Then the bytes per round for draft length 4: PicoSpec's uplink (token + q(x)) and top-K
downlink against PipeSD's full-distribution uplink.

Run: python benchmarks/bench_sparse_topk.py
"""

from __future__ import annotations

import time

import numpy as np

from policies.picospec.sparse_verify import (
    DRAFT_NOISE,
    DRAFT_TAU,
    VOCAB,
    acceptance_probability,
    output_distribution_sparse,
    round_bytes,
    total_variation,
    zipf_pair,
)

KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EXPONENTS = (1.1, 1.5, 2.0, 3.0)
PAIRS = 50
SEED = 2024
DRAFT_LEN = 4


def error_table(exponent: float, rng: np.random.Generator) -> None:
    """Print the mean TV error and acceptance per K for one Zipf exponent."""
    shape = (PAIRS, len(KS))
    tv = {"renormalise": np.empty(shape), "draft": np.empty(shape)}
    accept = {"renormalise": np.empty(shape), "draft": np.empty(shape)}
    exact_accept = np.empty(PAIRS)
    top1 = 0.0
    for i in range(PAIRS):
        p, q = zipf_pair(VOCAB, exponent, rng)
        top1 = p.max()
        exact_accept[i] = acceptance_probability(p, q)
        for j, k in enumerate(KS):
            for tail in tv:
                out = output_distribution_sparse(p, q, k, tail)
                tv[tail][i, j] = total_variation(p, out)
                accept[tail][i, j] = acceptance_probability(out, q)
    print(
        f"\nZipf s = {exponent:g} (V = {VOCAB}, τ = {DRAFT_TAU:g}, σ = {DRAFT_NOISE:g}, "
        f"{PAIRS} pairs): top-1 mass {top1:.3f}, exact acceptance β = "
        f"{exact_accept.mean():.3f} ± {exact_accept.std():.3f}"
    )
    print(
        f"{'K':>5} {'TV renormalise':>15} {'TV draft-fill (mean ± sd)':>26} "
        f"{'β renormalise':>14} {'β draft-fill':>13}"
    )
    for j, k in enumerate(KS):
        renorm, draft = tv["renormalise"][:, j], tv["draft"][:, j]
        print(
            f"{k:>5} {renorm.mean():>15.4f} {draft.mean():>17.4f} ± {draft.std():.4f} "
            f"{accept['renormalise'][:, j].mean():>14.3f} {accept['draft'][:, j].mean():>13.3f}"
        )


def bytes_table() -> None:
    """Print bytes per round, PicoSpec (sparse up, top-K down) vs full-distribution uplink."""
    print(
        f"\nBytes per round, draft length {DRAFT_LEN}, V = {VOCAB}: token id 5 B, float64 9 B, "
        f"index 5 B; top-K at {DRAFT_LEN + 1} positions (the drafts and the bonus position)"
    )
    print(
        f"{'K':>5} {'uplink sparse':>14} {'uplink full':>12} {'downlink top-K':>15} "
        f"{'sparse up+down':>15} {'saved vs full up':>17} {'full/sparse':>12}"
    )
    for k in KS:
        r = round_bytes(DRAFT_LEN, k)
        print(
            f"{k:>5} {r.uplink_sparse:>14,} {r.uplink_full:>12,} {r.downlink_topk:>15,} "
            f"{r.sparse_total:>15,} {r.uplink_full - r.sparse_total:>17,} {r.total_ratio:>12,.0f}"
        )
    r = round_bytes(DRAFT_LEN, 1)
    print(f"uplink alone: {r.uplink_full:,} B full vs {r.uplink_sparse} B ({r.uplink_ratio:,.0f}x)")


def main() -> None:
    start = time.perf_counter()
    rng = np.random.default_rng(SEED)
    for exponent in EXPONENTS:
        error_table(exponent, rng)
    bytes_table()
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
