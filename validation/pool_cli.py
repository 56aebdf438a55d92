"""`pipesd pool`: parse its flags, call `validation.pool`, print as validate does."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from realrun.cli import add_force_argument, make_out
from simulator.errors import ConfigError
from simulator.outdir import out_dir_arg
from validation.cli import print_validation
from validation.pool import pool, pooled_headline, write_pool


def add_pool_parser(subparsers: Any) -> None:
    """Register `pipesd pool`."""
    parser = subparsers.add_parser(
        "pool",
        help="judge several validations of one sweep as one (runs covering different policies)",
        description=(
            "Read the validation.csv of each SOURCE (output folders of `pipesd validate` or "
            "`revalidate` over the same sweep axes, each (sweep point, policy) in one of them) "
            "and print the figures validate prints for one run over all their rows: the three "
            "predictions, the goals, the TPT ranking at each sweep point and the policy pairs "
            "each real run separates beyond chance. Writes OUT/validation.csv (a source column "
            "first) and OUT/manifest.json."
        ),
    )
    parser.add_argument("sources", type=Path, nargs="+", metavar="SOURCE", help="validations")
    parser.add_argument("--quiet", action="store_true", help="no table, only the verdict")
    parser.add_argument("--out", type=out_dir_arg, required=True, help="output folder")
    add_force_argument(parser)


def run_pool(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd pool`."""
    resolved = {source.resolve() for source in args.sources}
    if args.out.resolve() in resolved:
        raise ConfigError("--out", str(args.out), "must differ from every SOURCE (they are read)")
    if len(resolved) < len(args.sources):
        raise ConfigError("SOURCE", " ".join(map(str, args.sources)), "a folder given twice")
    pooled = pool(args.sources)
    headline = pooled_headline(pooled)
    make_out(args, "pool", argv)
    write_pool(args.out, pooled, headline, ["pipesd", *argv])
    scope = f"these {len(args.sources)} validations, pooled"
    print_validation(pooled.rows, pooled.axes, headline, {}, not args.quiet, scope)
    print(f"wrote {args.out}/validation.csv, manifest.json")
    return 0


__all__ = ["add_pool_parser", "run_pool"]
