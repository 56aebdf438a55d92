"""`pipesd validate` of a scenario with `[[edge_groups]]` (validation.cli dispatches here):
check the flags, recalibrate (draft, target and the target's batch term), run
validation.fleet.validate_fleet and print its headline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from realrun.cli import interrupted, local_options, make_out, testbed_progress, testbed_requests
from realrun.fleet import check_fleet
from realrun.local import ServerError
from simulator.errors import ConfigError
from simulator.scenario import SweepPoint
from validation.fleet import validate_fleet
from validation.fleet_batch import add_batch_term, batch_grid
from validation.fleet_table import NAMES, FleetTables
from validation.recalibrate import recalibrate_for_run
from validation.validate import sha256, validation_points

NO_BATCH_TERM = "not measured ({why}): the profile's forward terms stand (its extra sequence {s} s)"


def run_fleet_validate(args: argparse.Namespace, argv: list[str], points: list[SweepPoint]) -> int:
    """Execute `pipesd validate` for a many-edge scenario (exit 0 whether or not the goal is
    met: it is a measurement)."""
    if args.rank:
        raise ConfigError("--rank", "", "not available for a many-edge scenario "
                          "([[edge_groups]]): it runs the scenario's own seeds")  # fmt: skip
    options = local_options(args)
    check_fleet(args.scenario, points, options)  # one line each, before any work
    command = ["pipesd", *argv]
    make_out(args, "validate", argv)
    profile = args.profile
    extra = points[0].scenario.profile.profile.target_latency.forward_per_extra_sequence_s
    origin: dict[str, Any] = {
        "recalibrated_from": None,
        "batch_term": NO_BATCH_TERM.format(why="no --recalibrate", s=extra),
    }
    if args.recalibrate:
        say = (lambda _line: None) if args.quiet else print
        profile = recalibrate_for_run(
            args.profile, options, points, args.out / "calibration", args.quiet, " ".join(command)
        )
        origin["recalibrated_from"] = {"path": str(args.profile), "sha256": sha256(args.profile)}
        if options.target_backend == "llama":
            origin["batch_term"] = add_batch_term(
                profile, Path(options.target), options.target_threads, batch_grid(points),
                say, " ".join(command),
            )  # fmt: skip
        else:
            why = "timed for a llama.cpp target only"
            origin["batch_term"] = NO_BATCH_TERM.format(why=why, s=extra)
        points = validation_points(args.scenario, profile, args.overrides, args.sweep)
    try:
        with testbed_progress(args.quiet, testbed_requests(points)) as progress:
            tables = validate_fleet(args.scenario, profile, points, options, args.out, command,
                                    progress, origin)  # fmt: skip
    except ServerError as exc:
        print(f"pipesd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted(args.out / "real")
    print_fleet(tables, args.quiet)
    print(f"wrote {args.out}/fleet_validation.md, fleet_edges.csv, fleet_policies.csv, "
          "manifest.json, real/, sim/, sim_replayed/, sim_run_speed/")  # fmt: skip
    return 0


def print_fleet(tables: FleetTables, quiet: bool) -> None:
    """Per policy (unless `quiet`) and over all edges, each prediction's |TPT error|."""
    names = [name for name in NAMES if name in tables.headline]
    if not quiet:
        for row in tables.policies:
            cells: Sequence[str] = [
                f"{NAMES[n]} median {100 * row[f'tpt_abs_error_median_{n}']:.1f}% "
                f"p90 {100 * row[f'tpt_abs_error_p90_{n}']:.1f}%"
                for n in names
            ]
            print(f"p{row['point']} {row['policy']:10s} " + "; ".join(cells))
    for name in names:
        h = tables.headline[name]
        goal = " (the goal's: " + ("met" if h["goal_median_met"] else "missed") + ")"
        print(f"|TPT error| over {h['edges']} edges, {NAMES[name]}: median "
              f"{100 * h['tpt_abs_error_median']:.1f}%, p90 {100 * h['tpt_abs_error_p90']:.1f}%"
              f"{goal if name == tables.headline['goals_apply_to'] else ''}")  # fmt: skip


__all__ = ["run_fleet_validate"]
