"""`pipesd validate`: parse the flags, call `validation.validate`, print the table and the
verdict (also for `pipesd revalidate`, `validation.revalidate_cli`). The testbed flags are
`pipesd realrun local`'s (`realrun.cli`)."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from realrun.cli import (
    add_force_argument,
    add_testbed_arguments,
    check_sampling_points,
    interrupted,
    local_options,
    make_out,
    testbed_progress,
    testbed_requests,
)
from realrun.local import ServerError
from realrun.testbed_rules import skip_reason
from simulator.errors import ConfigError
from simulator.inputs import MAX_TRACE_BYTES, check_regular
from simulator.outdir import out_dir_arg
from simulator.results import write_json
from simulator.scenario import SweepPoint
from validation.fleet_cli import run_fleet_validate
from validation.lossless import lossless_line
from validation.ranking import (
    PairPlan,
    plan_outcome,
    plan_pairs,
    plan_record,
    recorded_tpts,
    requests_per_point,
    seeds_for,
    simulated_tpts,
)
from validation.recalibrate import recalibrate_for_run
from validation.validate import (
    GOAL_MEDIAN,
    GOAL_P90,
    run_validation,
    separated_pairs,
    validation_points,
    verdict,
)


def add_validate_parser(subparsers: Any) -> None:
    """Register `pipesd validate`."""
    validate = subparsers.add_parser(
        "validate",
        help="run a scenario on the testbed and in the simulator; compare them",
        description=(
            "Run SCENARIO on the testbed (as `pipesd realrun local`) and in the simulator with "
            "its profile replaced by --profile; write OUT/validation.csv (real, simulated and "
            "(sim - real) / real per sweep point and policy), OUT/real/, OUT/sim/ and "
            "OUT/manifest.json; print the median and p90 |TPT error| and whether the TPT "
            "ranking agrees, next to the goals (median <= 3%, p90 <= 8%, same ranking)."
        ),
    )
    add_testbed_arguments(validate)
    validate.add_argument("--profile", type=Path, required=True, help="profile JSON to validate")
    validate.add_argument(
        "--recalibrate",
        action="store_true",
        help="re-measure the draft's and the target's latency just before the real run and "
        "simulate with PROFILE's copy holding them (OUT/calibration/): this machine's speed "
        "drifts, see docs/validation.md",
    )
    validate.add_argument(
        "--rank",
        action="store_true",
        help="enough requests to rank: a simulated pilot finds the policy pairs more than 3%% "
        "apart and how many requests per point a paired t-test at 95%% needs to separate them "
        "(power 0.8); the run takes that many (seeds 1..k, policies interleaved seed by seed) "
        "and reports each planned pair's outcome (OUT/ranking_plan.json)",
    )
    validate.add_argument(
        "--pilot-from",
        type=Path,
        metavar="DIR",
        help="with --rank: take the spread of the per-request gaps from this recorded "
        "validation's real/results.csv (a real pilot, with the machine's noise) instead of the "
        "simulator's",
    )
    validate.add_argument(
        "--max-requests",
        type=int,
        default=200,
        help="with --rank: at most this many requests per point (default 200)",
    )
    validate.add_argument("--out", type=out_dir_arg, required=True, help="output folder")
    add_force_argument(validate)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.1f}%"


def print_validation(
    rows: list[dict[str, Any]],
    axes: list[str],
    headline: dict[str, Any],
    skipped: dict[str, str],
    table_too: bool = True,
    scope: str = "this run",
) -> None:
    """The validation table (unless `table_too` is False), the |TPT error| statistics and the
    ranking, beside the goals, and the skipped policies; `scope` names what was validated."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(header_style="bold")
    for title in [*axes, "policy", "TPT real", "TPT sim", "TPT err", "tok/s err", "NAVs real",
                  "NAVs sim", "acc len err", "up bytes err", "J/token err"]:  # fmt: skip
        table.add_column(title, justify="left" if title == "policy" else "right")
    for row in rows:
        table.add_row(
            *(str(row[a]) for a in axes),
            row["policy"],
            f"{row['tpt_ms_real']:.1f}",
            f"{row['tpt_ms_sim']:.1f}",
            _percent(row["tpt_ms_err"]),
            _percent(row["tokens_per_s_err"]),
            f"{row['nav_count_real']:.0f}",
            f"{row['nav_count_sim']:.0f}",
            _percent(row["mean_accepted_len_err"]),
            _percent(row["uplink_bytes_err"]),
            _percent(row["energy_per_token_j_err"]),
        )
    if table_too:
        console.print(table)
    predictions = headline.get("predictions")
    if predictions:
        print_predictions(console, predictions, scope)
    median, p90 = headline["tpt_abs_error_median"], headline["tpt_abs_error_p90"]
    met = headline["goals_met"]
    diagnostic = headline.get("at_run_speed_diagnostic")
    if diagnostic:
        console.print(
            "diagnostic, simulator at the draft/target speeds measured during the run: |TPT "
            f"error| median {_percent(diagnostic['tpt_abs_error_median']).lstrip('+')}, p90 "
            f"{_percent(diagnostic['tpt_abs_error_p90']).lstrip('+')}, ranking "
            f"{'identical' if diagnostic.get('ranking_identical') else 'differs'}"
        )
    probed = headline.get("probed_prediction")
    if probed:
        console.print(
            "second prediction, each session at the speeds its reference showed just before "
            f"it: |TPT error| median {_percent(probed['tpt_abs_error_median']).lstrip('+')}, "
            f"p90 {_percent(probed['tpt_abs_error_p90']).lstrip('+')}, ranking "
            f"{'identical' if probed['ranking_identical'] else 'differs'}",
            highlight=False,
        )
    console.print(
        f"calibration alone: |TPT error| over {headline['rows']} rows: "
        f"median {_percent(median).lstrip('+')} "
        f"(goal <= {100 * GOAL_MEDIAN:.0f}%: {verdict(met['median'])}), "
        f"p90 {_percent(p90).lstrip('+')} (goal <= {100 * GOAL_P90:.0f}%: {verdict(met['p90'])})",
        highlight=False,
    )
    others = headline.get("abs_error_median_p90", {})
    if others:
        console.print(
            "; ".join(f"{name} |error| median {_percent(others[m][0]).lstrip('+')}, p90 "
                      f"{_percent(others[m][1]).lstrip('+')}"
                      for m, name in (("nav_count", "NAV count"),
                                      ("mean_accepted_len", "accepted length"))),
            highlight=False,
        )  # fmt: skip
    if "lossless" in headline:
        console.print(lossless_line(headline["lossless"]), highlight=False)
    if headline["ranking_identical"]:
        console.print("calibration alone: TPT ranking identical at every sweep point (goal: met)")
    else:
        console.print(
            "calibration alone: TPT ranking differs (goal: identical: missed):", highlight=False
        )
        for mismatch in headline["ranking_mismatches"]:
            console.print(
                f"  point {mismatch['point']}: real {' < '.join(mismatch['real'])}; "
                f"sim {' < '.join(mismatch['sim'])}",
                highlight=False,
            )
    separated = headline.get("ranking_of_separated_pairs")
    if separated:
        console.print(
            f"calibration alone: TPT ranking of the {separated['separated_pairs']} of "
            f"{separated['pairs']} policy "
            "pairs the real run separates beyond chance (paired t-test over its requests, 95%): "
            f"{'identical' if separated['identical'] else 'differs'}",
            highlight=False,
        )
        for swap in separated["mismatches"]:
            console.print(
                f"  point {swap['point']}: real {swap['faster']} < {swap['slower']} by "
                f"{swap['real_gap_ms']:.2f} ms (+/- {swap['half_width_ms']:.2f}); sim the other "
                "way",
                highlight=False,
            )
    if skipped:
        listed = ", ".join(f"{label} ({reason})" for label, reason in skipped.items())
        console.print(f"skipped (the testbed cannot run them): {listed}", highlight=False)


def _separated_cell(separated: dict[str, Any] | None) -> str:
    """'k of n in order' for validate.separated_ranking's figures ('-' when not computed)."""
    if separated is None:
        return "-"
    total = separated["separated_pairs"]
    return f"{total - len(separated['mismatches'])} of {total} in order"


PREDICTION_NAMES = {
    "calibration": "calibration alone",
    "replayed_compute_traces": "recorded compute traces replayed",
    "mean_run_speed": "at mean run speed",
}


def print_predictions(
    console: Console, predictions: dict[str, Any], scope: str = "this run"
) -> None:
    """The three predictions of `scope` side by side (validation.validate.three_predictions),
    the one the goals apply to marked; a run that recorded no compute traces says so in one
    line."""
    table = Table(header_style="bold", title=f"TPT predictions of {scope}")
    titles = ("prediction", "median |err|", "p90 |err|", "ranking", "separated pairs", "goals")
    for title in titles:
        table.add_column(title, justify="left" if title == "prediction" else "right")
    for key, name in PREDICTION_NAMES.items():
        figures = predictions.get(key)
        if figures is None:
            continue
        goals = figures["goals_met"]
        table.add_row(
            name + (" (goals)" if key == predictions.get("goals_apply_to") else ""),
            _percent(figures["tpt_abs_error_median"]).lstrip("+"),
            _percent(figures["tpt_abs_error_p90"]).lstrip("+"),
            "identical" if figures["ranking_identical"] else "differs",
            _separated_cell(figures.get("separated_pairs")),
            "met" if goals["median"] and goals["p90"] else "missed",
        )
    console.print(table)
    console.print(
        "separated pairs: of the policy pairs the real run separates beyond chance (paired "
        "t-test, 95%), how many the prediction orders as the real run does",
        highlight=False,
    )
    if predictions.get("replayed_compute_traces") is None:
        console.print(
            "no compute traces recorded in this run (real/compute_edge.csv, compute_cloud.csv: "
            "testbed runs record them from issue 19 on): calibration alone and mean run speed "
            "only",
            highlight=False,
        )


def rank_plan(
    args: argparse.Namespace, points: list[SweepPoint]
) -> tuple[list[PairPlan], int, list[int]]:
    """`--rank`: the planned pairs, requests per point and seeds (printed)."""
    if not 2 <= args.max_requests <= 100_000:
        raise ConfigError("--max-requests", str(args.max_requests), "must be in [2, 100000]")
    spreads = None
    if args.pilot_from is not None:
        results = args.pilot_from / "real" / "results.csv"
        if not results.is_file():
            raise ConfigError("--pilot-from", str(args.pilot_from), "holds no real/results.csv")
        check_regular(results, "results", MAX_TRACE_BYTES)
        try:
            spreads = recorded_tpts(results)
        except (KeyError, ValueError, UnicodeDecodeError, csv.Error) as exc:
            problem = f"not a results.csv (point, policy, seed, request, tpt_ms): {exc!r}"
            raise ConfigError(str(results), "", problem) from None
    skip = list(skip_reasons(points))
    plans = plan_pairs(simulated_tpts(points, skip=skip), spreads, max_requests=args.max_requests)
    requests = requests_per_point(plans, args.max_requests)
    seeds = seeds_for(requests, points[0].scenario.model.prompts.count)
    if not plans:
        seeds = list(points[0].scenario.model.seeds)
    print(f"ranking plan: {len(plans)} policy pairs more than 3% apart in the simulator; "
          f"{requests} requests per point separate each with power 0.8 (paired t-test, 95%): "
          f"seeds {seeds[0]}..{seeds[-1]}")  # fmt: skip
    for plan in plans:
        needed = plan.requests if plan.requests is not None else f"> {args.max_requests}"
        print(f"  point {plan.point}: {plan.faster} < {plan.slower} by {plan.gap_ms:.2f} ms "
              f"({100 * plan.relative_gap:.1f}%), spread {plan.spread_ms:.2f} ms "
              f"({plan.spread_from}): {needed} requests")  # fmt: skip
    return plans, requests, seeds


def skip_reasons(points: list[SweepPoint]) -> dict[str, str]:
    """The policies the testbed cannot run, by label (realrun.testbed_rules.skip_reason)."""
    return {
        entry.label: reason
        for entry in points[0].scenario.policies
        if (reason := skip_reason(entry.name)) is not None
    }


def run_validate(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd validate` (exit 0 whether or not the goals are met: it is a measurement)."""
    if (args.pilot_from is not None or args.max_requests != 200) and not args.rank:
        raise ConfigError("--pilot-from" if args.pilot_from else "--max-requests", "",
                          "only with --rank")  # fmt: skip
    points = validation_points(args.scenario, args.profile, args.overrides, args.sweep)
    if points[0].scenario.model.edge_groups:  # many edges: the fleet's own validation
        return run_fleet_validate(args, argv, points)
    options = local_options(args)
    check_sampling_points(options.sampling, points, options.acceptance)
    overrides = list(args.overrides)
    command = ["pipesd", *argv]
    plans: list[PairPlan] = []
    requests, seeds = 0, []
    if args.rank:
        plans, requests, seeds = rank_plan(args, points)
        if plans:  # else the scenario's own seeds
            overrides.append(f"seeds={seeds}")
            command += ["--set", f"seeds={seeds}"]  # so that revalidate finds the same points
            points = validation_points(args.scenario, args.profile, overrides, args.sweep)
    make_out(args, "validate", argv)
    if args.rank:
        write_json(args.out / "ranking_plan.json", plan_record(plans, requests, seeds))
    profile = args.profile
    if args.recalibrate:
        profile = recalibrate_for_run(
            args.profile, options, points, args.out / "calibration", args.quiet, " ".join(command)
        )
        points = validation_points(args.scenario, profile, overrides, args.sweep)
    try:
        with testbed_progress(args.quiet, testbed_requests(points)) as progress:
            rows, headline, skipped = run_validation(
                args.scenario, profile, points, options, args.out, command, progress,
                recalibrated_from=args.profile if args.recalibrate else None,
            )  # fmt: skip
    except ServerError as exc:
        print(f"pipesd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted(args.out / "real")
    print_validation(rows, list(points[0].axes), headline, skipped, not args.quiet)
    if args.rank:
        outcome = plan_outcome(plans, separated_pairs(args.out / "real" / "results.csv"))
        record = {**plan_record(plans, requests, seeds), "outcome": outcome}
        write_json(args.out / "ranking_plan.json", record)
        print_plan_outcome(outcome)
    print(f"wrote {args.out}/validation.csv, manifest.json, real/, sim/")
    return 0


def print_plan_outcome(outcome: list[dict[str, Any]]) -> None:
    """Each planned pair: separated by the real run in the simulator's order, the other way,
    or not."""
    agreed = sum(o["real"] == "separated, the simulator's order" for o in outcome)
    print(f"planned pairs separated by the real run in the simulator's order: {agreed} of "
          f"{len(outcome)}")  # fmt: skip
    for o in outcome:
        gap = "" if o["real_gap_ms"] is None else (
            f" ({o['real_gap_ms']:.2f} +/- {o['half_width_ms']:.2f} ms)")  # fmt: skip
        print(f"  point {o['point']}: sim {o['faster']} < {o['slower']}: {o['real']}{gap}")
