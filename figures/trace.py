"""A run on a bandwidth trace (PipeSD's S4): the trace over time, and under it each policy's
token rate, request by request (new tokens / request duration, drawn over the request)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from figures.load import Run, main_policies
from figures.style import GREY, new_figure, plain_log, policy_style, themed
from simulator.errors import ConfigError
from simulator.link import TraceBandwidth


def trace_paths(run: Run) -> dict[str, Path]:
    """The run's link traces ("uplink", "downlink") that exist in its scenario, resolved against
    the scenario file's folder as `pipesd run` did (manifest "scenario"."path")."""
    link = run.resolved_scenario.get("link", {})
    scenario_path = Path(str(run.manifest.get("scenario", {}).get("path", "")))
    paths = {}
    for direction in ("uplink", "downlink"):
        name = link.get(f"{direction}_trace") if isinstance(link, dict) else None
        if name:
            path = (scenario_path.parent / name).resolve()
            if not path.is_file():
                problem = (
                    f"trace {name!r} not found at {str(path)!r} (the scenario path is relative "
                    "to the folder `pipesd run` ran in: run figures from there)"
                )
                raise ConfigError(run.path / "manifest.json", f"link.{direction}_trace", problem)
            paths[direction] = path
    return paths


def has_trace(run: Run) -> bool:
    """Whether the run's scenario drives its link by an uplink trace."""
    link = run.resolved_scenario.get("link", {})
    return isinstance(link, dict) and bool(link.get("uplink_trace"))


def trace_steps(trace: TraceBandwidth, until_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Step start times and Mbit/s from 0 to `until_s`, repeating the trace as the link does."""
    times, rates = list(trace.times), list(trace.mbps)
    if trace.repeat:
        repeats = max(1, math.ceil(until_s / trace.period))
        times = [t + k * trace.period for k in range(repeats) for t in trace.times]
        rates = rates * repeats
    times.append(max(until_s, times[-1]))
    rates.append(rates[-1])
    return np.asarray(times), np.asarray(rates)


@themed
def trace_figure(run: Run, policies: Sequence[str] | None = None) -> Figure:
    """Top: the uplink trace (and the downlink trace, right axis). Bottom: each policy's
    per-request token rate at the first sweep point, for seed 1 (else the first seed) and the
    first edge."""
    paths = trace_paths(run)
    if "uplink" not in paths:
        raise ConfigError(run.path / "manifest.json", "link.uplink_trace", "the run has no trace")
    repeat = bool(run.resolved_scenario.get("link", {}).get("trace_repeat", True))
    results = run.results
    results.require("start_s", "end_s", "new_tokens")
    point = results.texts("point")[0] if results.rows else "0"
    seeds = results.unique("seed")
    seed = "1" if "1" in seeds else (seeds[0] if seeds else "")
    rows = results.where("point", point).where("seed", seed)
    if "edge" in rows.columns and rows.rows:
        rows = rows.where("edge", rows.texts("edge")[0])
    labels = [label for label in main_policies(run, policies) if label in rows.unique("policy")]
    if not labels:
        raise ConfigError(results.path, "policy", "no request rows to plot")
    end_s = float(np.nanmax(rows.numbers("end_s")))
    figure = new_figure(7.2, 5.0)
    trace_ax, rate_ax = figure.subplots(2, 1, sharex=True, height_ratios=(1, 1.6))
    up = TraceBandwidth.from_csv(paths["uplink"], repeat)
    t, mbps = trace_steps(up, end_s)
    trace_ax.step(t, mbps, where="post", color="#333333", linewidth=1.6)
    trace_ax.set_ylabel("uplink (Mbit/s)")
    trace_ax.set_ylim(0, mbps.max() * 1.15)
    if "downlink" in paths:
        down = TraceBandwidth.from_csv(paths["downlink"], repeat)
        t_down, mbps_down = trace_steps(down, end_s)
        down_ax = trace_ax.twinx()
        down_ax.step(t_down, mbps_down, where="post", color=GREY, linewidth=1.2, linestyle="--")
        down_ax.set_ylabel("downlink (Mbit/s, dashed)", color=GREY)
        down_ax.set_ylim(0, mbps_down.max() * 1.15)
        down_ax.grid(visible=False)
        down_ax.spines["right"].set_visible(True)
    trace_ax.set_title("link bandwidth trace (step function)")
    for label in labels:
        mine = rows.where("policy", label)
        start, end = mine.numbers("start_s"), mine.numbers("end_s")
        rate = mine.numbers("new_tokens") / (end - start)
        order = np.argsort(start)
        x = np.append(start[order], end[order][-1])
        y = np.append(rate[order], rate[order][-1])
        style = policy_style(label)
        rate_ax.step(
            x,
            y,
            where="post",
            color=style.color,
            linestyle=style.linestyle,
            linewidth=style.linewidth,
            zorder=style.zorder,
            label=label,
        )
    plain_log(rate_ax)
    rate_ax.set_ylabel("token rate per request (tokens/s, log)")
    rate_ax.set_xlabel("simulated time (s)")
    rate_ax.set_xlim(0, end_s)
    rate_ax.set_title(f"token rate of each request (seed {seed}; new tokens / request duration)")
    name = run.resolved_scenario.get("name", run.name)
    figure.suptitle(f"Changing bandwidth (scenario {name})", fontsize=10)
    figure.legend(
        handles=rate_ax.get_legend_handles_labels()[0],
        loc="outside lower center",
        ncols=min(len(labels), 5),
    )
    return figure
