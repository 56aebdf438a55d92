"""Simulator against many-edge testbed, per edge: `python -m realrun.fleet_compare SIM TESTBED`.

Both folders hold a `results.csv` in the simulator's schema (`pipesd run` and `pipesd realrun
local` of one scenario with the same `--set`s); requests are matched by (policy, seed, edge,
request). Per (policy, seed, edge): the mean time per output token (TPT) of each side and the
relative error; per (policy, seed): the fleet's throughput (output tokens over the span from
the first request's start to the last one's end) of each side. Prints the table and the median
and p90 of |TPT error| over edges; `--out FILE.csv` also writes the per-edge table.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulator.results import write_table

KEY = ("policy", "seed", "edge")


def read_results(folder: Path) -> dict[tuple[str, ...], list[dict[str, str]]]:
    """The folder's requests by (policy, seed, edge)."""
    with (folder / "results.csv").open(newline="") as handle:
        grouped: dict[tuple[str, ...], list[dict[str, str]]] = {}
        for row in csv.DictReader(handle):
            grouped.setdefault(tuple(row[k] for k in KEY), []).append(row)
    return grouped


def compare(sim: Path, testbed: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-edge rows, per-(policy, seed) fleet rows) for the keys both folders have."""
    simulated, measured = read_results(sim), read_results(testbed)
    edges, fleets = [], {}
    for key in sorted(set(simulated) & set(measured)):
        sim_tpt = float(np.mean([float(r["tpt_ms"]) for r in simulated[key]]))
        bed_tpt = float(np.mean([float(r["tpt_ms"]) for r in measured[key]]))
        edges.append(dict(zip(KEY, key, strict=True)) | {
            "sim_tpt_ms": sim_tpt, "testbed_tpt_ms": bed_tpt,
            "tpt_error": (sim_tpt - bed_tpt) / bed_tpt,
        })  # fmt: skip
        for side, rows in (("sim", simulated[key]), ("testbed", measured[key])):
            fleet = fleets.setdefault((key[0], key[1]), {"policy": key[0], "seed": key[1]})
            span = fleet.setdefault(f"_{side}", [np.inf, -np.inf, 0])
            span[0] = min(span[0], *(float(r["start_s"]) for r in rows))
            span[1] = max(span[1], *(float(r["end_s"]) for r in rows))
            span[2] += sum(int(r["new_tokens"]) for r in rows)
    for fleet in fleets.values():
        for side in ("sim", "testbed"):
            start, end, tokens = fleet.pop(f"_{side}")
            fleet[f"{side}_tokens_per_s"] = tokens / (end - start)
    return edges, list(fleets.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and with --out write) the comparison; exit 2 when nothing matches."""
    parser = argparse.ArgumentParser(prog="python -m realrun.fleet_compare")
    parser.add_argument("sim", type=Path, help="a `pipesd run` folder")
    parser.add_argument("testbed", type=Path, help="a `pipesd realrun local` folder")
    parser.add_argument("--out", type=Path, help="CSV file for the per-edge table")
    args = parser.parse_args(argv)
    for folder in (args.sim, args.testbed):
        if not (folder / "results.csv").is_file():
            parser.error(f"{folder}: no results.csv")
    edges, fleets = compare(args.sim, args.testbed)
    if not edges:
        parser.error("no (policy, seed, edge) in both folders: same scenario and --set?")
    for row in edges:
        print(f"{row['policy']:10s} seed {row['seed']} edge {row['edge']:>2s}  TPT sim "
              f"{row['sim_tpt_ms']:8.1f} ms  testbed {row['testbed_tpt_ms']:8.1f} ms  "
              f"error {100 * row['tpt_error']:+6.1f}%")  # fmt: skip
    for row in fleets:
        sim_rate, bed_rate = row["sim_tokens_per_s"], row["testbed_tokens_per_s"]
        print(f"{row['policy']:10s} seed {row['seed']} fleet  tokens/s sim {sim_rate:.2f}  "
              f"testbed {bed_rate:.2f}")  # fmt: skip
    errors = np.abs([row["tpt_error"] for row in edges])
    print(f"|TPT error| over {len(edges)} edges: median {100 * np.median(errors):.1f}%, "
          f"p90 {100 * np.percentile(errors, 90):.1f}%")  # fmt: skip
    if args.out is not None:
        write_table(args.out, list(edges[0]), edges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
