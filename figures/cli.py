"""`pipesd figures`: figures from run folders, and the run-independent DiP-SD, PicoSpec,
validation and documentation figures. `add_parser` registers the subcommand, `run` executes it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from figures.load import Run, load_run
from figures.options import DEFAULT_ROUNDS, FORMATS
from simulator.errors import ConfigError
from simulator.outdir import MANIFEST, claim_out_dir, out_dir_arg, release_out_dir
from simulator.results import write_json

if TYPE_CHECKING:
    from figures.build import Options


def add_parser(subparsers: Any) -> None:
    """Add the `figures` subcommand and its arguments to `subparsers` (argparse's
    `add_subparsers()` object)."""
    parser = subparsers.add_parser(
        "figures",
        help="draw figures (PNG/PDF) from run folders",
        description=(
            "Draw the figures each RUN_DIR (an --out folder of `pipesd run`) has data for: TPT "
            "and speedup vs uplink bandwidth (link.uplink_mbps sweep) or edge compute "
            "(edge.compute_factor sweep), energy per token (any run), a Gantt chart of the "
            "first rounds of one request (runs with --timeline), and the bandwidth trace with "
            "each policy's token rate (runs on link.uplink_trace). Files go to RUN_DIR/figures "
            "unless --out is given."
        ),
    )
    parser.add_argument(
        "run_dirs", nargs="*", type=Path, metavar="RUN_DIR", help="folders written by pipesd run"
    )
    parser.add_argument(
        "--out",
        type=out_dir_arg,
        help="output folder (default RUN_DIR/figures; with several RUN_DIRs, one subfolder "
        "per run named like it; with --readme, docs/figures): new, empty, or one `pipesd "
        "figures` wrote before, with --force",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="draw into folders an earlier `pipesd figures` wrote (a folder of anything else "
        "is always refused)",
    )
    parser.add_argument(
        "--format",
        default="png",
        metavar="FMT,...",
        help=f"file formats, comma-separated, from {', '.join(FORMATS)} (default png)",
    )
    parser.add_argument(
        "--policies",
        metavar="LABEL,...",
        help="policies in the line plots (default: all but variants of a policy that is "
        "itself present, e.g. pipesd's ablations)",
    )
    parser.add_argument(
        "--timeline-policies",
        metavar="LABEL,...",
        help="one Gantt panel per label (default: pipesd and vanilla where present)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"answers shown in the Gantt chart (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--real-timeline",
        type=Path,
        metavar="CSV",
        help="a testbed timeline (the simulator's timeline columns) drawn above the simulated "
        "panels of the first RUN_DIR with timelines (alone if none has them)",
    )
    parser.add_argument(
        "--validation",
        type=Path,
        metavar="CSV",
        help="simulated vs measured TPT scatter from a CSV with columns policy, tpt_ms_sim, "
        "tpt_ms_real (optionally point)",
    )
    parser.add_argument(
        "--dipsd",
        action="store_true",
        help="DiP-SD, AD and AD greedy batching throughput vs number of users (about 15 s)",
    )
    parser.add_argument(
        "--picospec",
        action="store_true",
        help="PicoSpec top-K: distribution error and bytes per round vs K (a few seconds)",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="run the README's scenarios in-process and write its figures to --out or "
        "docs/figures (about 30 s)",
    )


FIGURES_KIND = "figures"
"""The `kind` in the manifest of a folder `pipesd figures` draws into (simulator.outdir)."""


def _labels(text: str | None, flag: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    labels = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not labels:
        raise ConfigError(flag, "", f"no label given (got {text!r})")
    return labels


def run_out_dirs(runs: Sequence[Run], out: Path | None) -> list[Path]:
    """Where each run's figures go: RUN_DIR/figures, --out for one run, --out/NAME for several."""
    if out is None:
        return [run.path / "figures" for run in runs]
    if len(runs) == 1:
        return [out]
    names = [run.name for run in runs]
    for name in names:
        if names.count(name) > 1:
            problem = f"two run folders are named {name!r}; rename one or draw them separately"
            raise ConfigError("--out", "", problem)
    return [out / name for name in names]


def run(args: argparse.Namespace) -> int:
    """Execute `pipesd figures`; prints each file written. Bad input raises ConfigError."""
    # matplotlib loads here, not when `pipesd` builds its parser
    from figures.build import Options
    from figures.readme import README_FIGURES
    from figures.style import parse_formats

    options = Options(
        formats=parse_formats(args.format),
        policies=_labels(args.policies, "--policies"),
        timeline_policies=_labels(args.timeline_policies, "--timeline-policies"),
        rounds=args.rounds,
        real_timeline=args.real_timeline,
    )
    extras = args.validation or args.dipsd or args.picospec or args.real_timeline
    if not (args.run_dirs or extras or args.readme):
        raise ConfigError(
            "figures",
            "",
            "nothing to draw: give RUN_DIR or --validation, --real-timeline, --dipsd, "
            "--picospec, --readme",
        )
    for path in (args.real_timeline, args.validation):
        if path is not None and not path.is_file():
            raise ConfigError(path, "", "file not found")
    if options.rounds < 1:
        raise ConfigError("--rounds", "", f"must be at least 1 (got {options.rounds})")
    runs = [load_run(path) for path in args.run_dirs]
    outs = run_out_dirs(runs, args.out)
    common = args.out if args.out is not None else (outs[0] if outs else None)
    if extras and common is None:
        raise ConfigError("--out", "", "required when no RUN_DIR is given")
    # --out before the per-run folders inside it; all claimed before anything is drawn
    folders = [*([args.out] if args.out is not None else []), *outs]
    folders += [common] if common is not None and extras else []
    folders += [README_FIGURES] if args.readme and args.out is None else []
    claimed = {f: claim_out_dir(f, FIGURES_KIND, force=args.force) for f in dict.fromkeys(folders)}
    try:
        written = _draw(args, options, runs, outs, common, extras)
    except ConfigError:  # e.g. an unknown label: the folders stay as they were
        for folder, created in reversed(claimed.items()):
            release_out_dir(folder, created)
        raise
    for folder in claimed:
        files = sorted(str(path.relative_to(folder)) for path in written if path.parent == folder)
        write_json(folder / MANIFEST, {"kind": FIGURES_KIND, "status": "complete", "files": files})
    for path in written:
        print(f"wrote {path}")
    return 0


def _draw(
    args: argparse.Namespace,
    options: Options,
    runs: list[Run],
    outs: list[Path],
    common: Path | None,
    extras: Any,
) -> list[Path]:
    """Draw every figure asked for into the claimed folders; returns the files written."""
    # matplotlib loads here, not when `pipesd` builds its parser
    from figures.build import (
        DIPSD_STEM,
        PICOSPEC_STEM,
        TIMELINE_STEM,
        VALIDATION_STEM,
        run_figures,
    )
    from figures.dipsd_users import dipsd_figure
    from figures.picospec_topk import picospec_figure
    from figures.readme import README_FIGURES, readme_figures
    from figures.style import save
    from figures.timeline import timeline_figure
    from figures.validation import validation_figure

    # the testbed timeline goes above the first run with simulated timelines, else alone
    owner = next((i for i, item in enumerate(runs) if item.timelines()), None)
    written: list[Path] = []
    for index, (item, out) in enumerate(zip(runs, outs, strict=True)):
        written += run_figures(item, out, options, with_real=index == owner)
    if common is not None:
        if args.real_timeline is not None and owner is None:
            figure = timeline_figure(None, rounds=options.rounds, real_timeline=args.real_timeline)
            written += save(figure, common, TIMELINE_STEM, options.formats)
        if args.validation is not None:
            figure = validation_figure(args.validation)
            written += save(figure, common, VALIDATION_STEM, options.formats)
        if args.dipsd:
            written += save(dipsd_figure(), common, DIPSD_STEM, options.formats)
        if args.picospec:
            written += save(picospec_figure(), common, PICOSPEC_STEM, options.formats)
    if args.readme:
        target = args.out if args.out is not None else README_FIGURES
        written += readme_figures(target, options.formats)
    return written
