"""PicoSpec's top-K sparse verification on the synthetic Zipf model
(`policies/picospec/sparse_verify.py`): distribution error (TV distance to the exact output)
and bytes per round, against K."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from figures.style import BLACK, GREY, ORANGE, VERMILLION, new_figure, plain_log, themed
from policies.picospec.sparse_verify import VOCAB, round_bytes, topk_error, zipf_pair

KS = tuple(2**i for i in range(15))
"""K = 1, 2, 4, ..., 16384."""
EXPONENTS = (1.1, 1.5, 2.0, 3.0)
"""Zipf exponents: 1.1 is the flat default (pessimistic), larger is more peaked."""
EXPONENT_COLOURS = ("#332288", "#117733", "#DDAA33", "#BB5566")
"""Paul Tol's high-contrast-ish sequence, distinct in colour-blind simulation."""
PAIRS = 4
SEED = 2024
DRAFT_LEN = 4
FLOOR = 1e-8
"""TV errors below this are left out (log scale)."""


def tv_curves(
    exponents: tuple[float, ...] = EXPONENTS, pairs: int = PAIRS, seed: int = SEED
) -> dict[tuple[float, str], np.ndarray]:
    """Mean TV error over `pairs` random (target, draft) pairs, per (exponent, tail) and K."""
    rng = np.random.default_rng(seed)
    curves = {}
    for exponent in exponents:
        errors = {"renormalise": np.zeros(len(KS)), "draft": np.zeros(len(KS))}
        for _ in range(pairs):
            p, q = zipf_pair(VOCAB, exponent, rng)
            for tail, values in errors.items():
                values += [topk_error(p, q, k, tail) for k in KS]  # type: ignore[arg-type]
        for tail, values in errors.items():
            curves[(exponent, tail)] = values / pairs
    return curves


@themed
def picospec_figure(pairs: int = PAIRS) -> Figure:
    """Left: TV error vs K per Zipf exponent (renormalised top-K solid, draft-filled tail
    dashed). Right: bytes per round (draft length 4) vs K, sparse vs full-distribution uplink."""
    curves = tv_curves(pairs=pairs)
    figure = new_figure(7.2, 3.5)
    tv_ax, bytes_ax = figure.subplots(1, 2)
    ks = np.array(KS)
    for exponent, colour in zip(EXPONENTS, EXPONENT_COLOURS, strict=True):
        for tail, style in (("renormalise", "-"), ("draft", "--")):
            values = curves[(exponent, tail)]
            values = np.where(values >= FLOOR, values, np.nan)
            label = f"Zipf s = {exponent:g}" if tail == "renormalise" else None
            tv_ax.plot(
                ks, values, color=colour, linestyle=style, marker="o", markersize=3, label=label
            )
    tv_ax.plot([], [], color=GREY, linestyle="-", label="renormalised top-K")
    tv_ax.plot([], [], color=GREY, linestyle="--", label="draft-filled tail")
    plain_log(tv_ax, "x", (1.0,))
    tv_ax.set_yscale("log")
    tv_ax.set_ylim(FLOOR / 2, 1.5)
    tv_ax.set_xlabel("K (target top-K entries sent down, log scale)")
    tv_ax.set_ylabel("distribution error (TV distance, log)")
    tv_ax.set_title("output error vs K")
    tv_ax.legend(loc="lower left", fontsize=7)
    rounds = [round_bytes(DRAFT_LEN, int(k)) for k in KS]
    series = (
        ("full-distribution uplink (PipeSD)", [r.uplink_full for r in rounds], BLACK, "--"),
        ("PicoSpec up + down", [r.sparse_total for r in rounds], VERMILLION, "-"),
        ("top-K downlink", [r.downlink_topk for r in rounds], ORANGE, ":"),
        ("token + q(x) uplink", [r.uplink_sparse for r in rounds], GREY, "-."),
    )
    for label, values, colour, style in series:
        bytes_ax.plot(ks, values, color=colour, linestyle=style, label=label)
    plain_log(bytes_ax, "x", (1.0,))
    bytes_ax.set_yscale("log")
    bytes_ax.set_xlabel("K (log scale)")
    bytes_ax.set_ylabel(f"bytes per round (draft length {DRAFT_LEN}, log)")
    bytes_ax.set_title("payload per round vs K")
    bytes_ax.legend(loc="center right", fontsize=7)
    figure.suptitle(
        f"PicoSpec sparse verification, synthetic Zipf pairs (V = {VOCAB}, {pairs} pairs each)",
        fontsize=10,
    )
    return figure
