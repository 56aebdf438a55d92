"""Time per token and speedup along a sweep axis (uplink bandwidth, edge compute factor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

from figures.load import Run, Table, main_policies
from figures.style import new_figure, plain_log, policy_style, themed
from simulator.errors import ConfigError

UPLINK_AXIS = "link.uplink_mbps"
COMPUTE_AXIS = "edge.compute_factor"
BOUND = "oracle"
"""Drawn dashed: the best schedule that does not draft while a NAV is pending."""
REFERENCE = "cloud_ar"
"""Drawn dotted: cloud-only decoding; left out of the speedup panel, where it is off scale."""


def facet(run: Run, axis: str) -> tuple[Table, str]:
    """Summary rows along `axis`, every other sweep axis held at its first value.

    Returns the rows and a note naming the held values ("" when `axis` is the only axis).
    """
    if axis not in run.axes:
        raise ConfigError(run.summary.path, axis, f"not a sweep axis (axes: {run.axes or 'none'})")
    table = run.summary
    held = []
    for other in run.axes:
        if other != axis:
            value = table.texts(other)[0]
            table = table.where(other, value)
            held.append(f"{other} = {value}")
    return table, ", ".join(held)


def _series(table: Table, label: str, axis: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    rows = table.where("policy", label)
    x, y = rows.numbers(axis), rows.numbers(metric)
    order = np.argsort(x)
    return x[order], y[order]


def _legend_label(label: str) -> str:
    if label == BOUND:
        return f"{label} (bound)"
    if label == REFERENCE:
        return f"{label} (cloud only)"
    return label


def _sweep_ticks(ax: Axes, values: np.ndarray) -> None:
    """Tick the x axis at the swept values only, written as plain numbers."""
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values.tolist()))))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(NullLocator())


@themed
def sweep_figure(
    run: Run,
    axis: str,
    x_label: str,
    title: str,
    log_x: bool,
    policies: Sequence[str] | None = None,
) -> Figure:
    """Two panels over a sweep axis: time per token (log scale) and speedup vs the reference."""
    table, held = facet(run, axis)
    table.require("tpt_ms", "speedup")
    labels = main_policies(run, policies)
    figure = new_figure(7.2, 3.4)
    tpt_ax, speed_ax = figure.subplots(1, 2)
    x_all = table.numbers(axis)
    off_scale = None
    for label in labels:
        style = policy_style(label).kwargs()
        x, tpt = _series(table, label, axis, "tpt_ms")
        tpt_ax.plot(x, tpt, label=_legend_label(label), **style)
        _, speedup = _series(table, label, axis, "speedup")
        if label == REFERENCE:
            off_scale = speedup
        else:
            speed_ax.plot(x, speedup, **style)
    plain_log(tpt_ax, "y", (1.0, 2.0, 3.0, 5.0))
    tpt_ax.set_ylabel("time per token (ms, log scale)")
    tpt_ax.set_title("time per token (lower is better)")
    speed_ax.axhline(1.0, color="#999999", linewidth=0.8, zorder=1)
    plain_log(speed_ax, "y", (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    speed_ax.set_ylabel(f"speedup vs {run.reference_policy} (×, log scale)")
    speed_ax.set_title("speedup (higher is better)")
    if off_scale is not None and np.isfinite(off_scale).any():
        note = f"{REFERENCE}: {np.nanmin(off_scale):.1f}–{np.nanmax(off_scale):.1f}× (off scale)"
        speed_ax.text(
            0.98, 0.97, note, transform=speed_ax.transAxes, ha="right", va="top", fontsize=7.5
        )
    for ax in (tpt_ax, speed_ax):
        ax.set_xlabel(x_label)
        if log_x:
            ax.set_xscale("log")
        _sweep_ticks(ax, x_all)
    name = run.resolved_scenario.get("name", run.name)
    figure.suptitle(f"{title} (scenario {name}" + (f"; {held})" if held else ")"), fontsize=10)
    figure.legend(loc="outside lower center", ncols=min(len(labels), 5))
    return figure


def bandwidth_figure(run: Run, policies: Sequence[str] | None = None) -> Figure:
    """TPT and speedup vs uplink bandwidth per policy (needs a `link.uplink_mbps` sweep)."""
    return sweep_figure(
        run,
        UPLINK_AXIS,
        "uplink bandwidth (Mbit/s, log scale)",
        "Policies vs uplink bandwidth",
        True,
        policies,
    )


def compute_figure(run: Run, policies: Sequence[str] | None = None) -> Figure:
    """TPT and speedup vs the edge compute factor (needs an `edge.compute_factor` sweep)."""
    return sweep_figure(
        run,
        COMPUTE_AXIS,
        "edge compute factor (draft speed vs laptop CPU, ×)",
        "Policies vs edge compute",
        False,
        policies,
    )
