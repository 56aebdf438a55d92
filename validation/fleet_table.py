"""The many-edge validation's tables: each prediction against the real fleet, side by side.

Per prediction (validation.fleet's folders) realrun.fleet_compare gives the per-edge TPT errors
and the per-policy figures; here they are joined on (point, policy, seed, edge) and (point,
policy): OUT/fleet_edges.csv (TPT real, and per prediction its TPT and error),
OUT/fleet_policies.csv (per prediction: |TPT error| median and p90 over the edges, fleet
tokens/s, mean cloud batch size and cloud utilisation, each beside the testbed's) and both as
markdown in
OUT/fleet_validation.md, with the headline: |TPT error| median and p90 over all edges per
prediction, against issue 18's goal (median <= 5%).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realrun.fleet_compare import compare
from simulator.results import write_atomic, write_table

GOAL_MEDIAN = 0.05
"""Issue 18's goal for the median |TPT error| over a fleet's edges (p90 reported)."""

NAMES = {
    "calibration": "calibration alone",
    "replayed": "recorded compute traces replayed",
    "run_speed": "mean run speed",
}
GOALS_APPLY_TO = "replayed"
"""The prediction the goal applies to (as for one edge: docs/validation.md)."""

SIDE = ("tokens_per_s", "mean_batch_size", "cloud_utilisation")
"""Per-policy figures each side has (realrun.fleet_compare: sim_<x>, testbed_<x>)."""


@dataclass(frozen=True)
class FleetTables:
    """The joined tables and the headline (see the module docstring)."""

    edges: list[dict[str, Any]]
    policies: list[dict[str, Any]]
    headline: dict[str, Any]


def fleet_tables(folders: Mapping[str, Path], real: Path) -> FleetTables:
    """Compare each prediction's folder with the real run and join the results."""
    edges: dict[tuple[str, ...], dict[str, Any]] = {}
    policies: dict[tuple[str, ...], dict[str, Any]] = {}
    headline: dict[str, Any] = {}
    for name, folder in folders.items():
        edge_rows, fleet_rows = compare(folder, real)
        for row in edge_rows:
            key = (row["point"], row["policy"], row["seed"], row["edge"])
            joined = edges.setdefault(key, {k: row[k] for k in (*_fields(key), "testbed_tpt_ms")})
            joined[f"sim_tpt_ms_{name}"] = row["sim_tpt_ms"]
            joined[f"tpt_error_{name}"] = row["tpt_error"]
        for row in fleet_rows:
            key = (row["point"], row["policy"])
            first = {k: row[k] for k in ("point", "policy", "seeds", "edges")}
            joined = policies.setdefault(key, first)
            joined |= {f"testbed_{x}": row[f"testbed_{x}"] for x in SIDE}
            joined |= {f"tpt_abs_error_median_{name}": row["tpt_abs_error_median"],
                       f"tpt_abs_error_p90_{name}": row["tpt_abs_error_p90"]}  # fmt: skip
            joined |= {f"sim_{x}_{name}": row[f"sim_{x}"] for x in SIDE}
        errors = np.abs([row["tpt_error"] for row in edge_rows])
        median = float(np.median(errors)) if errors.size else math.nan
        p90 = float(np.percentile(errors, 90)) if errors.size else math.nan
        met = bool(median <= GOAL_MEDIAN)
        headline[name] = {"edges": int(errors.size), "tpt_abs_error_median": median,
                          "tpt_abs_error_p90": p90, "goal_median_met": met}  # fmt: skip
    headline["goal"] = {"tpt_abs_error_median_max": GOAL_MEDIAN}
    headline["goals_apply_to"] = GOALS_APPLY_TO
    return FleetTables(list(edges.values()), list(policies.values()), headline)


def _fields(key: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(("point", "policy", "seed", "edge"), key, strict=True))


def _percent(value: float, sign: str = "+") -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:{sign}.1f}%"


def markdown(tables: FleetTables, notes: Sequence[str] = ()) -> str:
    """Both tables and the headline as markdown, `notes` under the headline."""
    names = [name for name in NAMES if name in tables.headline]
    lines = ["# Many-edge validation", "", "|TPT error| over all edges (goal: median <= "
             f"{100 * GOAL_MEDIAN:.0f}%, applied to {NAMES[GOALS_APPLY_TO]}):", ""]  # fmt: skip
    lines += ["| prediction | edges | median | p90 | goal |", "|---|---:|---:|---:|---|"]
    for name in names:
        h = tables.headline[name]
        lines.append(f"| {NAMES[name]} | {h['edges']} | {_percent(h['tpt_abs_error_median'], '')} "
                     f"| {_percent(h['tpt_abs_error_p90'], '')} | "
                     f"{'met' if h['goal_median_met'] else 'missed'} |")  # fmt: skip
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    lines += ["", "## Per policy", "", "| point | policy | prediction | median abs err | p90 | "
              "tokens/s sim (real) | batch size sim (real) | cloud util. sim (real) |",
              "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in tables.policies:
        for name in names:
            figures = " | ".join(f"{row[f'sim_{x}_{name}']:.2f} ({row[f'testbed_{x}']:.2f})"
                                 for x in SIDE)  # fmt: skip
            median = _percent(row[f"tpt_abs_error_median_{name}"], "")
            p90 = _percent(row[f"tpt_abs_error_p90_{name}"], "")
            lines.append(f"| {row['point']} | {row['policy']} | {NAMES[name]} | {median} | "
                         f"{p90} | {figures} |")  # fmt: skip
    lines += ["", "## Per edge (TPT, ms)", "", "| point | policy | seed | edge | real | "
              + " | ".join(NAMES[n] for n in names) + " |",
              "|---|---|---|---|---:|" + "---:|" * len(names)]  # fmt: skip
    for row in tables.edges:
        cells = " | ".join(f"{row[f'sim_tpt_ms_{n}']:.1f} ({_percent(row[f'tpt_error_{n}'])})"
                           for n in names)  # fmt: skip
        lines.append(f"| {row['point']} | {row['policy']} | {row['seed']} | {row['edge']} | "
                     f"{row['testbed_tpt_ms']:.1f} | {cells} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_fleet_tables(tables: FleetTables, out_dir: Path, notes: Sequence[str] = ()) -> None:
    """OUT/fleet_edges.csv, OUT/fleet_policies.csv and OUT/fleet_validation.md (`notes`)."""
    for name, rows in (("fleet_edges.csv", tables.edges), ("fleet_policies.csv", tables.policies)):
        write_table(out_dir / name, _columns(rows), rows)
    write_atomic(out_dir / "fleet_validation.md", markdown(tables, notes))


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


__all__ = ["GOAL_MEDIAN", "FleetTables", "fleet_tables", "markdown", "write_fleet_tables"]
