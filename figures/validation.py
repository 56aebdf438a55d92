"""Simulated against measured time per token: one point per (policy, sweep point), with the
identity line and a ±5% band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from figures.load import read_table
from figures.style import new_figure, plain_log, policy_style, themed
from simulator.errors import ConfigError

COLUMNS = ("policy", "tpt_ms_sim", "tpt_ms_real")
"""Required columns of a validation CSV; an optional `point` column labels sweep points."""
BAND = 0.05


@themed
def validation_figure(path: Path) -> Figure:
    """Scatter of simulated vs measured TPT from a CSV with columns policy, tpt_ms_sim,
    tpt_ms_real (and optionally point, then written beside each marker as "p<point>"); the
    title gives the mean absolute relative error and the share of points inside the band."""
    table = read_table(path, COLUMNS)
    sim, real = table.numbers("tpt_ms_sim"), table.numbers("tpt_ms_real")
    valid = np.isfinite(sim) & np.isfinite(real) & (real > 0) & (sim > 0)
    if not valid.any():
        raise ConfigError(path, "tpt_ms_real", "no row with positive sim and real TPT")
    policies = table.texts("policy")
    points = table.texts("point") if "point" in table.columns else [""] * len(policies)
    figure = new_figure(4.8, 4.6)
    ax = figure.subplots()
    low, high = min(sim[valid].min(), real[valid].min()), max(sim[valid].max(), real[valid].max())
    line = np.array([low / 1.2, high * 1.2])
    ax.fill_between(line, line * (1 - BAND), line * (1 + BAND), color="#DDDDDD", zorder=0)
    ax.plot(line, line, color="#555555", linewidth=0.9, zorder=1)
    labels = list(dict.fromkeys(p for p, ok in zip(policies, valid, strict=True) if ok))
    for label in labels:
        mine = np.array([p == label for p in policies]) & valid
        style = policy_style(label)
        ax.plot(
            real[mine],
            sim[mine],
            linestyle="",
            marker=style.marker or "o",
            markersize=6,
            color=style.color,
            markeredgecolor="white",
            markeredgewidth=0.5,
            zorder=3,
        )
    if len(set(points)) > 1:
        for x, y, point, ok in zip(real, sim, points, valid, strict=True):
            if ok:
                ax.annotate(
                    f"p{point}", (x, y), xytext=(4, -8), textcoords="offset points", fontsize=6.5
                )
    if high / low > 10:
        plain_log(ax, "x")
        plain_log(ax, "y")
    ax.set_xlim(line)
    ax.set_ylim(line)
    ax.set_aspect("equal")
    ax.set_xlabel("measured time per token (ms)")
    ax.set_ylabel("simulated time per token (ms)")
    error = np.abs(sim[valid] / real[valid] - 1)
    inside = float(np.mean(error <= BAND))
    ax.set_title(
        f"Simulated vs measured time per token\nmean |error| {100 * error.mean():.1f}%, "
        f"{100 * inside:.0f}% of points within ±{100 * BAND:.0f}%",
        fontsize=9,
    )
    handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker=policy_style(label).marker or "o",
            color=policy_style(label).color,
            label=label,
        )
        for label in labels
    ]
    handles.append(Line2D([], [], color="#555555", linewidth=0.9, label="simulated = measured"))
    handles.append(Line2D([], [], color="#DDDDDD", linewidth=6, label=f"±{100 * BAND:.0f}%"))
    figure.legend(handles=handles, loc="outside lower center", ncols=3)
    return figure
