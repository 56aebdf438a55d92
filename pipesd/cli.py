"""The `pipesd` command line: `run` simulates a scenario, `policies` lists policies and their
parameters, `validate` compares the testbed with the simulator. Bad input exits with code 2
and one line on stderr; never a traceback."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from calibrate.cli import add_parser as add_calibrate_parser
from calibrate.cli import run as run_calibrate
from figures.cli import add_parser as add_figures_parser
from figures.cli import run as run_figures
from policies.registry import POLICIES
from realrun.cli import add_parser as add_realrun_parser
from realrun.cli import run as run_realrun
from simulator.backends import make_backend
from simulator.errors import ConfigError
from simulator.outdir import out_dir_arg
from simulator.runner import plan_tasks, run_scenario
from simulator.scenario import expand_sweep
from validation.cli import add_validate_parser, run_validate
from validation.pool_cli import add_pool_parser, run_pool
from validation.revalidate_cli import add_revalidate_parser, run_revalidate

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

SHOWN_COLUMNS = (
    ("tpt_ms", "TPT ms", "{:.1f}"),
    ("speedup", "speedup", "{:.2f}"),
    ("ttft_ms", "TTFT ms", "{:.0f}"),
    ("tokens_per_s", "tok/s", "{:.2f}"),
    ("acceptance_rate", "accept", "{:.2f}"),
    ("mean_accepted_len", "acc len", "{:.2f}"),
    ("mean_draft_len", "draft len", "{:.2f}"),
    ("nav_count", "NAVs", "{:.0f}"),
    ("uplink_bytes", "up MB", "{:.1f}"),
    ("cloud_energy_j", "cloud J", "{:.1f}"),
    ("edge_energy_j", "edge J", "{:.1f}"),
    ("radio_energy_j", "radio J", "{:.1f}"),
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print `<prog>: error: <message>` and a pointer to --help; exit with code 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = OneLineParser(
        prog="pipesd", description="Digital twin for cloud-edge speculative decoding."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="simulate a scenario for every policy it lists",
        description=(
            "Simulate SCENARIO (a TOML file) for every sweep point, policy and seed; write "
            "OUT/summary.csv (one row per point and policy), OUT/results.csv (one row per "
            "request) and OUT/manifest.json (scenario, profile hash, seeds, versions, command), "
            "and print the summary."
        ),
    )
    run.add_argument(
        "scenario", type=Path, help="scenario TOML file, e.g. scenarios/pipesd_s1.toml"
    )
    run.add_argument(
        "--out",
        type=out_dir_arg,
        required=True,
        help="output folder: new, empty, or an earlier run's with --force or --resume",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="replace the earlier `pipesd run` results in OUT (a folder of anything else is "
        "always refused)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field by dotted path, e.g. link.uplink_mbps=10 or "
        "policies.pipesd.r1=0.4 (VALUE is read as TOML: numbers, true/false, [lists], "
        "text); repeatable",
    )
    run.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="add a sweep axis (replaces a [sweep] axis of the same name); repeatable",
    )
    run.add_argument(
        "--policies",
        metavar="LABEL,...",
        help="run only these policy labels (the reference policy is always kept)",
    )
    run.add_argument(
        "--timeline",
        action="store_true",
        help="also write OUT/timelines/*.csv: every draft, upload and cloud job (for Gantt plots)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="simulations in parallel: local worker processes, or Ray CPUs (default: all cores)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUT: finished tasks are kept, not recomputed",
    )
    run.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where simulations run: local processes, or a Ray cluster (extra 'ray')",
    )
    run.add_argument(
        "--address", metavar="HOST:PORT", help="Ray cluster to join (default: start a local one)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    sub.add_parser("policies", help="list the policies and their parameters with defaults")
    add_figures_parser(sub)
    add_calibrate_parser(sub)
    add_realrun_parser(sub)
    add_validate_parser(sub)
    add_revalidate_parser(sub)
    add_pool_parser(sub)
    return parser


def _select_policies(points: list[Any], wanted: str | None) -> list[Any]:
    if not wanted:
        return points
    labels = {w.strip() for w in wanted.split(",") if w.strip()}
    if not labels:
        raise ConfigError("--policies", "", f"no label given (got {wanted!r})")
    selected = []
    for point in points:
        scenario = point.scenario
        known = {p.label for p in scenario.policies}
        unknown = labels - known
        if unknown:
            raise ConfigError(
                "--policies",
                "",
                f"unknown label {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(known))})",
            )
        keep = labels | {scenario.model.reference_policy}
        policies = tuple(p for p in scenario.policies if p.label in keep)
        selected.append(replace(point, scenario=replace(scenario, policies=policies)))
    return selected


def _print_summary(console: Console, rows: list[dict[str, Any]], axes: list[str]) -> None:
    table = Table(show_lines=False, header_style="bold")
    for axis in axes:
        table.add_column(axis, justify="right")
    table.add_column("policy")
    for _, title, _ in SHOWN_COLUMNS:
        table.add_column(title, justify="right")
    for row in rows:
        cells = [str(row[a]) for a in axes] + [row["policy"]]
        for key, _, fmt in SHOWN_COLUMNS:
            value = row[key]
            if key == "uplink_bytes":
                value = value / 1e6
            cells.append(
                "-" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
            )
        table.add_row(*cells)
    console.print(table)


def command_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`pipesd run`: expand, validate, simulate, write, print."""
    if args.jobs < 1:
        raise ConfigError("--jobs", "", f"must be at least 1 (got {args.jobs})")

    if args.force and args.resume:
        raise ConfigError("--force", "", "cannot be combined with --resume")
    points = expand_sweep(args.scenario, args.overrides, args.sweep)
    points = _select_policies(points, args.policies)
    # a pipe or a log gets the whole table rather than rich's 80-column default
    console = Console(width=None if sys.stdout.isatty() else 200)
    tasks = plan_tasks(points)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}"),
        console=Console(stderr=True),
        disable=args.quiet,
        transient=False,
    )
    with progress:
        bar = progress.add_task("simulating", total=len(tasks), current="")

        def done(task: Any) -> None:
            label = task.point.scenario.policies[task.policy_index].label
            progress.update(bar, advance=1, current=f"{label} seed {task.seed}")

        backend = make_backend(args.backend, min(args.jobs, len(tasks)), args.address)
        rows = run_scenario(
            args.scenario,
            points,
            args.out,
            ["pipesd", *argv],
            done,
            args.timeline,
            backend,
            args.resume,
            args.force,
        )
    if not args.quiet:
        _print_summary(console, rows, list(points[0].axes))
        console.print(f"wrote {args.out}/summary.csv, results.csv, edges.csv, manifest.json")
    return 0


def command_policies() -> int:
    """`pipesd policies`: every policy with its parameters and defaults."""
    console = Console()
    for name, (model, _) in POLICIES.items():
        console.print(f"[bold]{name}[/bold]: {(model.__doc__ or '').strip()}")
        for field, info in model.model_fields.items():
            default = info.default if info.default is not None else "none"
            note = f"  ({info.description})" if info.description else ""
            console.print(f"    {field} = {default!r}{note}")
    return 0


OPTIONAL_MODULES = {
    "torch": "models",
    "transformers": "models",
    "llama_cpp": "models",
    "gguf": "models",
    "pynvml": "models",
    "fastapi": "realrun",
    "uvicorn": "realrun",
    "httpx": "realrun",
    "msgpack": "realrun",
    "ray": "ray",
}
"""Modules of the optional extras (pyproject.toml) -> the extra that installs them: a command
that needs a missing one stops with one line saying what to install."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pipesd` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args, argv)
        if args.command == "figures":
            return run_figures(args)
        if args.command == "calibrate":
            return run_calibrate(args, argv)
        if args.command == "realrun":
            return run_realrun(args, argv)
        if args.command == "validate":
            return run_validate(args, argv)
        if args.command == "revalidate":
            return run_revalidate(args, argv)
        if args.command == "pool":
            return run_pool(args, argv)
        return command_policies()
    except ConfigError as exc:
        print(f"pipesd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:
        extra = OPTIONAL_MODULES.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"pipesd: error: {args.command}: {exc.name} is not installed "
            f"(pip install -e '.[{extra}]')",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except OSError as exc:  # a file or folder named on the command line cannot be used
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pipesd: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        kept = "; finished simulations are kept: rerun with --resume"
        print(f"pipesd: interrupted{kept if args.command == 'run' else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
