"""`pipesd pool`: several validations of one sweep judged as one. Runs that cover different
policies (a long testbed campaign split into runs) are read back from their validation.csv and
given the figures `pipesd validate` gives one run: the three predictions, the goals, the TPT
ranking per sweep point and the policy pairs each real run separates beyond chance."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError
from simulator.results import write_json, write_table
from validation.validate import (
    number,
    separated_pairs,
    separated_ranking,
    sha256,
    summarise_validation,
    three_predictions,
    validation_columns,
)

TEXT_COLUMNS = ("policy", "policy_name")
"""validation.csv's text columns besides the axes (every other column is a number)."""

Pairs = dict[int, list[tuple[str, str, float, float]]]


@dataclass(frozen=True)
class Pooled:
    """The pooled rows (`point` renumbered over the sources' sweep points, `source` added),
    the axes, the separated pairs of every source's real run and the sources' provenance."""

    axes: list[str]
    rows: list[dict[str, Any]]
    pairs: Pairs
    sources: list[dict[str, Any]]


def read_validation(source: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A validation folder's axes and rows, numbers as floats (one-line error if it is not
    a `pipesd validate` or `revalidate` output)."""
    path = source / "validation.csv"
    if not path.is_file():
        raise ConfigError(str(source), "validation.csv", "not found: give output folders of "
                          "`pipesd validate` or `pipesd revalidate`")  # fmt: skip
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        text_rows = list(reader)
    axes = columns[1 : columns.index("policy")] if "policy" in columns else []
    if columns != validation_columns(axes):
        raise ConfigError(str(path), "columns", "not a validation table of this version: "
                          "re-create it with `pipesd revalidate`")  # fmt: skip
    rows = []
    for text in text_rows:
        row: dict[str, Any] = {"point": int(text["point"])}
        row.update({axis: text[axis] for axis in axes})
        row.update({column: text[column] for column in TEXT_COLUMNS})
        row.update({c: number(text[c]) for c in columns if c not in row})
        rows.append(row)
    return axes, rows


def pool(sources: Sequence[Path]) -> Pooled:
    """The sources' rows as one table. Their axes must agree; a sweep point is its axes'
    values (the pooled `point` numbers them in order of appearance); each (point, policy)
    must come from one source. Separated pairs stay within the run that measured them."""
    if len(sources) < 2:
        raise ConfigError("SOURCE", " ".join(map(str, sources)), "give two or more folders")
    axes: list[str] | None = None
    point_of: dict[tuple[str, ...], int] = {}
    origin: dict[tuple[int, str], Path] = {}
    rows: list[dict[str, Any]] = []
    pairs: Pairs = {}
    provenance = []
    for source in sources:
        source_axes, source_rows = read_validation(source)
        if axes is None:
            axes = source_axes
        elif source_axes != axes:
            raise ConfigError(str(source / "validation.csv"), "axes", f"{source_axes} differ "
                              f"from {sources[0]}'s {axes}")  # fmt: skip
        renumbered: dict[int, int] = {}
        for row in source_rows:
            values = tuple(str(row[axis]) for axis in axes)
            point = point_of.setdefault(values, len(point_of))
            renumbered[row["point"]] = point
            key = (point, row["policy"])
            if key in origin:
                raise ConfigError(str(source / "validation.csv"), "policy", f"{row['policy']} "
                                  f"at {dict(zip(axes, values, strict=True))} is also in "
                                  f"{origin[key]}: each one from one run")  # fmt: skip
            origin[key] = source
            rows.append({"source": str(source), **row, "point": point})
        results = source / "real" / "results.csv"
        found = separated_pairs(results) if results.is_file() else {}
        for point, source_pairs in found.items():
            pairs.setdefault(renumbered[point], []).extend(source_pairs)
        provenance.append(
            {"path": str(source), "validation_csv_sha256": sha256(source / "validation.csv"),
             "rows": len(source_rows), "separated_pairs_from": str(results) if found else None}
        )  # fmt: skip
    return Pooled(list(axes or []), rows, pairs, provenance)


def pooled_headline(pooled: Pooled) -> dict[str, Any]:
    """`pipesd validate`'s headline figures over the pooled rows. The recorded compute traces'
    prediction is given only where every row has one (a mix would judge part of the rows)."""
    rows = pooled.rows
    headline = summarise_validation(rows)
    headline["ranking_of_separated_pairs"] = separated_ranking(rows, pooled.pairs)
    recorded = all(math.isfinite(row["tpt_ms_sim_replayed"]) for row in rows)
    headline["predictions"] = three_predictions(rows, recorded, pooled.pairs)
    return headline


def write_pool(out_dir: Path, pooled: Pooled, headline: dict[str, Any], command: list[str]) -> None:
    """OUT/validation.csv (the pooled rows, `source` first) and OUT/manifest.json."""
    columns = ["source", *validation_columns(pooled.axes)]
    write_table(out_dir / "validation.csv", columns, pooled.rows)
    manifest = {"kind": "pool", "command": command, "sources": pooled.sources, **headline}
    write_json(out_dir / "manifest.json", {**manifest, "status": "complete"})


__all__ = ["Pooled", "pool", "pooled_headline", "read_validation", "write_pool"]
