"""Simulator against many-edge testbed, per edge: `python -m realrun.fleet_compare SIM TESTBED`.

Both folders hold a `results.csv` in the simulator's schema (`pipesd run` and `pipesd realrun
local` of one scenario with the same `--set`s); requests are matched by (point, policy, seed,
edge, request). Per (point, policy, seed, edge): the mean time per output token (TPT) of each
side and the relative error. Per (point, policy), over its seeds as the simulator's summary
averages them: the median and p90 of |TPT error| over its edges, the fleet's throughput
(output tokens over the span from the first request's start to the last one's end), the mean
cloud batch size (jobs per cloud service, prefills served alone: the simulator's
`mean_batch_size`; the testbed's from its NAVs' batch sizes, `points/p<i>/batches.csv`) and
the cloud's utilisation (its busy time over the span: the records' `cloud_busy_s`, each
batch's time shared among its NAVs). Prints both tables and the median and p90 of |TPT error|
over all edges; `--out FILE.csv` writes the per-edge table and FILE_fleet.csv the fleet's.
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

KEY = ("point", "policy", "seed", "edge")


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows, as text."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_results(folder: Path) -> dict[tuple[str, ...], list[dict[str, str]]]:
    """The folder's requests by (point, policy, seed, edge)."""
    grouped: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in read_csv(folder / "results.csv"):
        grouped.setdefault(tuple(row[k] for k in KEY), []).append(row)
    return grouped


def span_figures(rows: Sequence[dict[str, str]]) -> tuple[float, float]:
    """(output tokens per second, cloud utilisation) of one fleet run's requests."""
    start = min(float(r["start_s"]) for r in rows)
    span = max(float(r["end_s"]) for r in rows) - start
    tokens = sum(int(r["new_tokens"]) for r in rows)
    busy = sum(float(r["cloud_busy_s"]) for r in rows)
    return tokens / span, busy / span


def testbed_batch_sizes(folder: Path) -> dict[tuple[str, str, str], float]:
    """Mean cloud jobs per service per (point, policy, seed) on the testbed: its NAVs (each
    batch of size s counted once through its s NAVs) and one prefill per request, alone."""
    jobs: dict[tuple[str, str, str], list[float]] = {}
    for row in read_csv(folder / "results.csv"):
        key = (row["point"], row["policy"], row["seed"])
        counts = jobs.setdefault(key, [0.0, 0.0])
        counts[0] += 1  # its prefill: one job, one service
        counts[1] += 1
    for batches in sorted(folder.glob("points/p*/batches.csv")):
        point = batches.parent.name[1:]
        for row in read_csv(batches):
            counts = jobs.get((point, row["policy"], row["seed"]))
            if counts is not None:
                counts[0] += 1
                counts[1] += 1 / int(row["batch_size"])
    return {key: navs / services for key, (navs, services) in jobs.items()}


def simulated_batch_sizes(folder: Path) -> dict[tuple[str, str], float]:
    """The simulator's `mean_batch_size` per (point, policy), over its seeds."""
    return {(r["point"], r["policy"]): float(r["mean_batch_size"])
            for r in read_csv(folder / "summary.csv")}  # fmt: skip


def compare(sim: Path, testbed: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-edge rows, per-(point, policy) fleet rows) for the keys both folders have."""
    simulated, measured = read_results(sim), read_results(testbed)
    edges = []
    runs: dict[tuple[str, str, str], dict[str, list[dict[str, str]]]] = {}
    for key in sorted(set(simulated) & set(measured)):
        sim_tpt = float(np.mean([float(r["tpt_ms"]) for r in simulated[key]]))
        bed_tpt = float(np.mean([float(r["tpt_ms"]) for r in measured[key]]))
        edges.append(dict(zip(KEY, key, strict=True)) | {
            "sim_tpt_ms": sim_tpt, "testbed_tpt_ms": bed_tpt,
            "tpt_error": (sim_tpt - bed_tpt) / bed_tpt,
        })  # fmt: skip
        run = runs.setdefault(key[:3], {"sim": [], "testbed": []})
        run["sim"] += simulated[key]
        run["testbed"] += measured[key]
    sim_batch, bed_batch = simulated_batch_sizes(sim), testbed_batch_sizes(testbed)
    fleets: dict[tuple[str, str], dict[str, Any]] = {}
    for (point, policy, seed), sides in sorted(runs.items()):
        fleet = fleets.setdefault((point, policy), {"point": point, "policy": policy, "_": []})
        figures = [*span_figures(sides["sim"]), *span_figures(sides["testbed"])]
        fleet["_"].append([*figures, bed_batch[(point, policy, seed)]])
    for (point, policy), fleet in fleets.items():
        mine = [e for e in edges if (e["point"], e["policy"]) == (point, policy)]
        errors = np.abs([e["tpt_error"] for e in mine])
        means = np.mean(fleet.pop("_"), axis=0)
        fleet |= {
            "seeds": len({e["seed"] for e in mine}),
            "edges": len(mine),
            "tpt_abs_error_median": float(np.median(errors)),
            "tpt_abs_error_p90": float(np.percentile(errors, 90)),
            "sim_tokens_per_s": float(means[0]),
            "testbed_tokens_per_s": float(means[2]),
            "sim_mean_batch_size": sim_batch.get((point, policy), float("nan")),
            "testbed_mean_batch_size": float(means[4]),
            "sim_cloud_utilisation": float(means[1]),
            "testbed_cloud_utilisation": float(means[3]),
        }
    return edges, list(fleets.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and with --out write) the comparison; exit 2 when nothing matches."""
    parser = argparse.ArgumentParser(prog="python -m realrun.fleet_compare")
    parser.add_argument("sim", type=Path, help="a `pipesd run` folder")
    parser.add_argument("testbed", type=Path, help="a `pipesd realrun local` folder")
    parser.add_argument("--out", type=Path, help="CSV file for the per-edge table (and "
                        "FILE_fleet.csv for the per-policy one)")  # fmt: skip
    args = parser.parse_args(argv)
    for folder, table in ((args.sim, "results.csv"), (args.sim, "summary.csv"),
                          (args.testbed, "results.csv")):  # fmt: skip
        if not (folder / table).is_file():
            parser.error(f"{folder}: no {table}")
    edges, fleets = compare(args.sim, args.testbed)
    if not edges:
        parser.error("no (point, policy, seed, edge) in both folders: same scenario and --set?")
    for row in edges:
        print(f"p{row['point']} {row['policy']:10s} seed {row['seed']} edge {row['edge']:>2s}  "
              f"TPT sim {row['sim_tpt_ms']:8.1f} ms  testbed {row['testbed_tpt_ms']:8.1f} ms  "
              f"error {100 * row['tpt_error']:+6.1f}%")  # fmt: skip
    for row in fleets:
        print(f"p{row['point']} {row['policy']:10s} fleet  |TPT error| median "
              f"{100 * row['tpt_abs_error_median']:.1f}% p90 {100 * row['tpt_abs_error_p90']:.1f}%"
              f"  tokens/s sim {row['sim_tokens_per_s']:.2f} testbed "
              f"{row['testbed_tokens_per_s']:.2f}  batch sim {row['sim_mean_batch_size']:.2f} "
              f"testbed {row['testbed_mean_batch_size']:.2f}  cloud busy sim "
              f"{row['sim_cloud_utilisation']:.2f} testbed "
              f"{row['testbed_cloud_utilisation']:.2f}")  # fmt: skip
    errors = np.abs([row["tpt_error"] for row in edges])
    print(f"|TPT error| over {len(edges)} edges: median {100 * np.median(errors):.1f}%, "
          f"p90 {100 * np.percentile(errors, 90):.1f}%")  # fmt: skip
    if args.out is not None:
        write_table(args.out, list(edges[0]), edges)
        write_table(args.out.with_name(f"{args.out.stem}_fleet.csv"), list(fleets[0]), fleets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
