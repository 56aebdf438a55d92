"""Reading what `pipesd run` wrote (summary.csv, results.csv, manifest.json, timelines/*.csv)
and other figure inputs, with one-line ConfigErrors for missing files, columns or bad values."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.errors import ConfigError
from simulator.records import TIMELINE_NAME, Span

TIMELINE_COLUMNS = ("lane", "start_s", "end_s", "label", "request", "first", "last")
"""Columns a timeline CSV must have; `ready_s` and `edge` are optional (0 when absent)."""


@dataclass(frozen=True)
class Table:
    """A CSV file's rows as text, with typed access that reports the file and column on error."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    def require(self, *names: str) -> None:
        """Raise ConfigError naming the first of `names` that is not a column."""
        for name in names:
            if name not in self.columns:
                found = ", ".join(self.columns)
                raise ConfigError(self.path, name, f"missing column (found: {found})")

    def texts(self, column: str) -> list[str]:
        """One column as text."""
        self.require(column)
        return [row[column] for row in self.rows]

    def numbers(self, column: str) -> NDArray[np.float64]:
        """One column as floats (an empty cell is NaN); text that is no number raises."""
        self.require(column)
        values = np.empty(len(self.rows))
        for i, row in enumerate(self.rows):
            cell = row[column].strip()
            try:
                values[i] = float(cell) if cell else math.nan
            except ValueError:
                raise ConfigError(
                    self.path, f"{column} (line {i + 2})", f"not a number (got {cell!r})"
                ) from None
        return values

    def unique(self, column: str) -> list[str]:
        """Distinct values of a column in order of first appearance."""
        return list(dict.fromkeys(self.texts(column)))

    def where(self, column: str, value: str) -> Table:
        """The rows whose `column` equals `value` (as text)."""
        self.require(column)
        return Table(self.path, self.columns, tuple(r for r in self.rows if r[column] == value))


def read_table(path: Path, required: Iterable[str] = ()) -> Table:
    """Read a CSV file with a header row; missing file or `required` columns raise ConfigError."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = tuple(reader.fieldnames or ())
            rows = tuple(reader)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file ({exc.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(path, "", f"not a CSV text file ({exc})") from None
    if any(None in row for row in rows):
        line = next(i for i, row in enumerate(rows, start=2) if None in row)
        raise ConfigError(path, f"line {line}", "more cells than header columns")
    table = Table(path, columns, rows)
    table.require(*required)
    return table


@dataclass(frozen=True)
class TimelineFile:
    """One timelines/*.csv file of a run: which sweep point, policy label and seed it holds."""

    path: Path
    point: int
    label: str
    seed: int


def read_timeline(path: Path) -> list[Span]:
    """A timeline CSV (the simulator's or the testbed's, same columns) as spans."""
    table = read_table(path, TIMELINE_COLUMNS)
    n = len(table.rows)
    start, end = table.numbers("start_s"), table.numbers("end_s")
    request, first, last = (table.numbers(c) for c in ("request", "first", "last"))
    ready = table.numbers("ready_s") if "ready_s" in table.columns else np.zeros(n)
    edge = table.numbers("edge") if "edge" in table.columns else np.zeros(n)
    lanes, labels = table.texts("lane"), table.texts("label")
    return [
        Span(
            lanes[i],
            float(start[i]),
            float(end[i]),
            labels[i],
            int(request[i]),
            int(first[i]),
            int(last[i]),
            float(ready[i]),
            int(edge[i]),
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class Run:
    """A run folder: its manifest and summary (read on load), results and timelines on demand."""

    path: Path
    manifest: dict[str, Any]
    summary: Table

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.path.resolve().name

    @property
    def axes(self) -> list[str]:
        """Sweep axes (summary columns between `point` and `policy`, which load_run requires)."""
        columns = list(self.summary.columns)
        return columns[columns.index("point") + 1 : columns.index("policy")]

    @property
    def reference_policy(self) -> str:
        """The label speedups are relative to (manifest, else "vanilla")."""
        return str(self.resolved_scenario.get("reference_policy", "vanilla"))

    @property
    def resolved_scenario(self) -> dict[str, Any]:
        """The scenario as run (overrides applied), from the manifest."""
        scenario = self.manifest.get("scenario")
        if not isinstance(scenario, dict) or not isinstance(scenario.get("resolved"), dict):
            raise ConfigError(self.path / "manifest.json", "scenario.resolved", "missing")
        return scenario["resolved"]

    def policies(self) -> list[str]:
        """Policy labels in the order the summary lists them."""
        return self.summary.unique("policy")

    def base_names(self) -> dict[str, str]:
        """Policy label -> registered policy name (the label itself when the column is absent)."""
        if "policy_name" not in self.summary.columns:
            return {label: label for label in self.policies()}
        return dict(
            zip(self.summary.texts("policy"), self.summary.texts("policy_name"), strict=True)
        )

    @cached_property
    def results(self) -> Table:
        """results.csv (one row per request)."""
        return read_table(self.path / "results.csv", ("point", "policy", "seed"))

    def timelines(self) -> list[TimelineFile]:
        """The timelines/*.csv files, sorted by point, label and seed.

        The label is the manifest's label of the policy index in the file name (file names
        replace unusual characters), else the name's label part.
        """
        folder = self.path / "timelines"
        policies = self.manifest.get("policies", [])
        files = []
        for path in sorted(folder.glob("timeline_*.csv")) if folder.is_dir() else []:
            match = TIMELINE_NAME.fullmatch(path.name)
            if not match:
                continue
            label = match["label"]
            if match["index"] is not None and int(match["index"]) < len(policies):
                label = str(policies[int(match["index"])].get("label", label))
            files.append(TimelineFile(path, int(match["point"]), label, int(match["seed"])))
        return sorted(files, key=lambda f: (f.point, f.label, f.seed))


def load_run(path: Path) -> Run:
    """Open a folder written by `pipesd run`: manifest.json and summary.csv must be there."""
    if not path.is_dir():
        raise ConfigError(path, "", "run folder not found (give the --out folder of `pipesd run`)")
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            manifest_path, "", "file not found (not a `pipesd run` folder?)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(manifest_path, "", f"not readable JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ConfigError(manifest_path, "", "expected a JSON object")
    summary = read_table(path / "summary.csv", ("point", "policy"))
    if not summary.rows:
        raise ConfigError(summary.path, "", "no rows (did the run finish a sweep point?)")
    return Run(path, manifest, summary)


def main_policies(run: Run, wanted: Sequence[str] | None = None) -> list[str]:
    """The policy labels a line plot shows.

    `wanted` (from --policies) is checked against the run's labels. Without it: every label
    except variants of a policy that is itself present (e.g. `pipesd-no-pipeline` is dropped
    when `pipesd` is there), which keeps ablation studies from crowding line plots.
    """
    labels = run.policies()
    if wanted:
        unknown = [w for w in wanted if w not in labels]
        if unknown:
            allowed = ", ".join(labels)
            raise ConfigError(
                "--policies", "", f"unknown label {unknown[0]!r} (allowed: {allowed})"
            )
        return [label for label in labels if label in wanted]
    names = run.base_names()
    return [label for label in labels if names[label] == label or names[label] not in labels]
