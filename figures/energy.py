"""Energy per generated token, split into cloud GPU, edge device and radio, per policy."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from figures.load import Run
from figures.style import ENERGY_COLOURS, ENERGY_HATCHES, new_figure, themed

COMPONENTS = {
    "cloud": "cloud_energy_j",
    "edge": "edge_energy_j",
    "radio": "radio_energy_j",
}
COMPONENT_LABELS = {
    "cloud": "cloud GPU (prefill + verification)",
    "edge": "edge device (drafting + idle)",
    "radio": "radio (uplink + downlink)",
}


@themed
def energy_figure(run: Run) -> Figure:
    """Stacked horizontal bars of J per token per policy at the run's first sweep point."""
    summary = run.summary
    first_point = summary.texts("point")[0]
    table = summary.where("point", first_point)
    table.require("new_tokens", *COMPONENTS.values())
    labels = table.texts("policy")
    tokens = table.numbers("new_tokens")
    per_token = {name: table.numbers(column) / tokens for name, column in COMPONENTS.items()}
    figure = new_figure(7.2, 1.4 + 0.28 * len(labels))
    ax = figure.subplots()
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for name, values in per_token.items():
        ax.barh(
            y,
            values,
            left=left,
            height=0.7,
            color=ENERGY_COLOURS[name],
            hatch=ENERGY_HATCHES[name],
            edgecolor="white",
            linewidth=0.5,
            label=COMPONENT_LABELS[name],
        )
        left += np.nan_to_num(values)
    for row, total in zip(y, left, strict=True):
        ax.text(total, row, f" {total:.2f}", va="center", fontsize=7.5)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, left.max() * 1.12)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("energy per generated token (J/token)")
    held = ", ".join(f"{axis} = {table.texts(axis)[0]}" for axis in run.axes)
    name = run.resolved_scenario.get("name", run.name)
    ax.set_title(f"Energy per token (scenario {name}" + (f"; {held})" if held else ")"))
    figure.legend(loc="outside lower center", ncols=3)
    return figure
