"""DiP-SD's throughput against the number of users, from its optimiser
(`policies/dipsd/optimiser.py`) on the paper-like system: users 1..M are copies of
`paper_system()`'s identical users."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from figures.style import EXTRA, GREY, LineStyle, new_figure, policy_style, themed
from policies.dipsd.autoregressive import autoregressive, autoregressive_greedy_batching
from policies.dipsd.constants import paper_system
from policies.dipsd.cost_model import DipsdSystem
from policies.dipsd.optimiser import optimise
from policies.dipsd.plan import Plan

MAX_USERS = 12
AD_STYLE = LineStyle(GREY, "o", ":", 1.8)
"""Hollow and larger than the greedy baseline's markers, which often coincide with it."""
GREEDY_STYLE = LineStyle(EXTRA[0], "s", "--", 1.4)


@dataclass(frozen=True)
class UserSweep:
    """Throughputs (tokens/s) for 1..M users; NaN where a scheme has no feasible plan."""

    users: np.ndarray
    dipsd: np.ndarray
    batches: np.ndarray
    lengths: tuple[tuple[int, ...], ...]
    ad: np.ndarray
    ad_greedy: np.ndarray


def system_with_users(base: DipsdSystem, count: int) -> DipsdSystem:
    """`base` with `count` users, repeating its users in order."""
    users = tuple(base.users[i % len(base.users)] for i in range(count))
    return dataclasses.replace(base, users=users)


def _rate(
    make: Callable[[DipsdSystem], Plan], system: DipsdSystem
) -> tuple[float, int, tuple[int, ...]]:
    try:
        plan = make(system)
    except ValueError:  # no plan fits the server memory
        return math.nan, 0, ()
    return plan.throughput_tokens_per_s, plan.n_batches, plan.lengths


def sweep_users(max_users: int = MAX_USERS, base: DipsdSystem | None = None) -> UserSweep:
    """Optimise DiP-SD and both autoregressive baselines for 1..max_users users."""
    base = paper_system() if base is None else base
    counts = np.arange(1, max_users + 1)
    dipsd, batches, lengths, ad, greedy = [], [], [], [], []
    for count in counts:
        system = system_with_users(base, int(count))
        rate, n_batches, plan_lengths = _rate(optimise, system)
        dipsd.append(rate)
        batches.append(n_batches)
        lengths.append(plan_lengths)
        ad.append(_rate(autoregressive, system)[0])
        greedy.append(_rate(autoregressive_greedy_batching, system)[0])
    return UserSweep(
        counts, np.array(dipsd), np.array(batches), tuple(lengths), np.array(ad), np.array(greedy)
    )


@themed
def dipsd_figure(max_users: int = MAX_USERS) -> Figure:
    """Throughput vs number of users: DiP-SD (annotated with its batches N and draft length),
    autoregressive decoding in one batch (AD) and AD with greedy batching."""
    sweep = sweep_users(max_users)
    figure = new_figure(6.0, 3.8)
    ax = figure.subplots()
    ax.plot(sweep.users, sweep.dipsd, label="DiP-SD (optimised)", **policy_style("dipsd").kwargs())
    ax.plot(
        sweep.users,
        sweep.ad,
        label="AD (each user alone)",
        markersize=9,
        markerfacecolor="none",
        **AD_STYLE.kwargs(),
    )
    ax.plot(sweep.users, sweep.ad_greedy, label="AD, greedy batching", **GREEDY_STYLE.kwargs())
    for users, rate, n, lengths in zip(
        sweep.users, sweep.dipsd, sweep.batches, sweep.lengths, strict=True
    ):
        if math.isfinite(rate) and lengths:
            note = f"N={n}\nl={max(lengths)}"
            ax.annotate(
                note,
                (users, rate),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=6,
            )
    ax.set_xticks(sweep.users)
    ax.set_xlabel("number of users M (identical devices)")
    ax.set_ylabel("throughput (tokens/s, all users)")
    ax.set_ylim(0, np.nanmax(sweep.dipsd) * 1.18)
    ax.set_title("DiP-SD throughput vs users (paper constants, Qwen3-1.7B → 32B)")
    ax.legend(loc="upper left", title="N: batches, l: longest draft", title_fontsize=7)
    return figure
