"""`pipesd revalidate`: parse its flags, call `validation.revalidate`, print as validate does."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from realrun.cli import add_force_argument, make_out
from simulator.errors import ConfigError
from simulator.outdir import out_dir_arg
from validation.cli import print_validation
from validation.revalidate import (
    command_options,
    load_run_model,
    plan_replay,
    revalidate,
    swapped_acceptance_profile,
    validation_source,
)
from validation.validate import validation_points


def add_revalidate_parser(subparsers: Any) -> None:
    """Register `pipesd revalidate`."""
    revalidate = subparsers.add_parser(
        "revalidate",
        help="compare a finished validation's real run with the current simulator",
        description=(
            "Re-simulate SOURCE (an OUT folder of `pipesd validate`) with the current simulator "
            "and its profile, or --profile, and compare it with SOURCE's real run as validate "
            "does: OUT/validation.csv, OUT/real/ (copied), OUT/sim/, OUT/manifest.json. No "
            "testbed, no models: a model change can be checked against every recorded run."
        ),
    )
    revalidate.add_argument("source", type=Path, help="a `pipesd validate` output folder")
    revalidate.add_argument(
        "--profile", type=Path, help="simulate with this profile instead of SOURCE's"
    )
    revalidate.add_argument(
        "--scenario",
        type=Path,
        help="the scenario at this path instead of the manifest's (a kept copy of a scenario "
        "edited since; its sha256 must be the manifest's)",
    )
    swap = revalidate.add_mutually_exclusive_group()
    swap.add_argument(
        "--replay-acceptance",
        type=Path,
        nargs="+",
        metavar="TRACE",
        help="simulate with the acceptance of TRACE replayed in request order (request r, the "
        "run's prompt r: traces that record their prompt ids are put in the run's order, "
        "several joined; OUT/profile.json): with the run's own prompts, the timing model "
        "alone is compared",
    )
    revalidate.add_argument(
        "--replay-order",
        choices=("request", "random"),
        default="request",
        help="with --replay-acceptance: request r replays sequence r (the run's own prompts), "
        "or each request a random sequence (another prompt set, e.g. the fitting traces)",
    )
    swap.add_argument(
        "--acceptance-model",
        type=Path,
        metavar="MODEL",
        help="simulate with this fitted acceptance model (`calibrate acceptance-fit`'s JSON, or "
        "`acceptance-folds`': request r by the fold model without prompt r; OUT/profile.json)",
    )
    revalidate.add_argument("--quiet", action="store_true", help="no table, only the verdict")
    revalidate.add_argument("--out", type=out_dir_arg, required=True, help="output folder")
    add_force_argument(revalidate)


def run_revalidate(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd revalidate`."""
    manifest, scenario, profile = validation_source(args.source, args.scenario)
    if manifest.get("fleet"):  # its traces are relative to its own profile (validation.fleet)
        raise ConfigError(str(args.source / "manifest.json"), "fleet", "a many-edge "
                          "validation: re-run `pipesd validate` (revalidate takes one "
                          "edge)")  # fmt: skip
    if args.profile is not None:
        profile = args.profile
    elif profile is None:
        raise ConfigError(
            str(args.source / "manifest.json"), "profile", "the profile it simulated is not in "
            "calibration/profile.json nor at its recorded path (or changed): give --profile"
        )  # fmt: skip
    recorded = [str(word) for word in manifest["command"]]
    points = validation_points(
        scenario, profile, command_options(recorded, "--set"), command_options(recorded, "--sweep")
    )
    if args.out.resolve() == args.source.resolve():
        raise ConfigError("--out", str(args.out), "must differ from SOURCE (it is read)")
    swap = args.replay_acceptance or args.acceptance_model
    if args.replay_order != "request" and args.replay_acceptance is None:
        only = "applies to --replay-acceptance only"
        raise ConfigError("--replay-order", args.replay_order, only)
    if swap is not None and points[0].scenario.model.acceptance is not None:
        raise ConfigError(str(scenario), "acceptance", "the scenario sets its own acceptance "
                          "(its real run replayed that stream): --replay-acceptance and "
                          "--acceptance-model are for real-acceptance runs")  # fmt: skip
    prompts = points[0].scenario.model.prompts
    replay = model = None
    if args.replay_acceptance is not None:
        replay = plan_replay(args.replay_acceptance, args.replay_order, prompts)
    if args.acceptance_model is not None:
        if not args.acceptance_model.is_file():
            raise ConfigError("--acceptance-model", str(args.acceptance_model), "file not found")
        model = load_run_model(args.acceptance_model, prompts)
    make_out(args, "revalidate", argv)
    if swap is not None:
        profile = swapped_acceptance_profile(profile, args.out, replay, model)
        points = validation_points(
            scenario, profile, command_options(recorded, "--set"),
            command_options(recorded, "--sweep"),
        )  # fmt: skip
    skipped = {str(k): str(v) for k, v in (manifest.get("skipped") or {}).items()}
    rows, headline = revalidate(
        args.source, scenario, profile, points, args.out, ["pipesd", *argv], skipped
    )
    print_validation(rows, list(points[0].axes), headline, skipped, not args.quiet)
    print(f"wrote {args.out}/validation.csv, manifest.json, real/, sim/")
    return 0


__all__ = ["add_revalidate_parser", "run_revalidate"]
