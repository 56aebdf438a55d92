"""`pipesd calibrate` subcommands that judge a fitted acceptance model at the policy level.

    pipesd calibrate acceptance-check --model model.json --heldout HELD.csv.gz
                            [--fitting FIT.csv.gz] [--prompt-draws 8]
    pipesd calibrate acceptance-crossval --traces FIT.csv.gz HELD.csv.gz [--folds 4]
    pipesd calibrate acceptance-folds --traces FIT.csv.gz HELD.csv.gz --out FOLDS.json

`acceptance-check` compares a model with a replay of held-out traces
(`calibrate.acceptance_check`) and prints what the comparison would show with no model error
at all: the simulation's own noise, with `--fitting` the fitting prompts' replay, and with
`--prompt-draws` the held-out prompts resampled (`calibrate.acceptance_crossval`).
`acceptance-crossval` fits a model per fold and checks each against its fold;
`acceptance-folds` saves such fold models as one per-request model for a testbed run over the
whole family (`calibrate.acceptance_folds`, `pipesd revalidate --acceptance-model`). Bad input:
one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from calibrate.acceptance_check import (
    FIGURES,
    medians,
    policy_check,
    reference_rows,
    sensitivity_lines,
    table_lines,
)
from calibrate.acceptance_crossval import cross_validate, prompt_bootstrap
from calibrate.acceptance_folds import family_sequences, fit_folds
from calibrate.acceptance_hmm import Pair
from calibrate.cli_files import int_list
from models.pairs import sha256
from models.prompts import FAMILIES, SPLITS
from simulator.acceptance import ReplayTraces
from simulator.acceptance_spec import ByRequestAcceptance, HmmAcceptance
from simulator.errors import ConfigError, from_validation_error
from simulator.provenance import package_versions

Say = Callable[[str], None]

CHECK_PROMPTS = 100
CHECK_SEEDS = list(range(1, 9))
"""The policy-level check's sample: 800 requests per policy, so that its medians are not
the simulation's noise (printed beside them)."""

REFERENCE_LABELS = {
    "noise": "the held-out replay under other seeds (the simulation's sampling noise)",
    "fitting traces": "the fitting traces replayed, no model (the prompt sets' difference)",
}


def state_list(text: str) -> list[int]:
    """argparse type: positive integers separated by commas (state counts, seeds)."""
    return int_list(text, 1, "integers like 1,2,3,4", "positive")


def start_list(text: str) -> list[int]:
    """argparse type: integers >= 0 separated by commas (start-state counts)."""
    return int_list(text, 0, "integers like 0,2,4,6", "non-negative")


START_STATES = [0, 2, 4, 6]
"""Start-state counts `acceptance-fit` and `acceptance-crossval` try by default."""


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's settings, shared by `acceptance-fit` and `acceptance-crossval`."""
    parser.add_argument(
        "--states", type=state_list, default=[1, 2, 3, 4], help="regime counts tried"
    )
    parser.add_argument(
        "--start-states",
        type=start_list,
        default=START_STATES,
        help="start-state counts tried (each with every regime count; default 0,2,4,6)",
    )
    parser.add_argument("--bins", type=int, default=8, help="confidence bins (quantiles)")


def trace_sequences(paths: list[Path]) -> list[Pair]:
    """Every recorded sequence of the given trace files, in file order."""
    return [s for path in paths for s in ReplayTraces.load(path).sequences]


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/pipesd_s1.toml"))
    parser.add_argument(
        "--prompts",
        type=int,
        default=CHECK_PROMPTS,
        help=f"requests per edge (default {CHECK_PROMPTS}: with 8 seeds the simulation's own "
        "noise is about 1%%, with S1's 20 x 3 it is 4-6%% on NAV count and draft length)",
    )
    parser.add_argument(
        "--seeds", type=state_list, default=CHECK_SEEDS, help="seeds (default 1,2,...,8)"
    )


def add_check_parsers(sub: Any) -> None:
    """Register `acceptance-check` and `acceptance-crossval`."""
    check = sub.add_parser(
        "acceptance-check", help="policy-level check: fitted model vs held-out replay"
    )
    check.add_argument("--model", type=Path, required=True, help="model JSON (acceptance-fit)")
    check.add_argument("--heldout", type=Path, required=True, help="held-out trace")
    _sample_arguments(check)
    check.add_argument(
        "--fitting",
        type=Path,
        help="the fitting traces as one file: also show their replay against the held-out "
        "replay (how far the two prompt sets differ with no model at all)",
    )
    check.add_argument(
        "--prompt-draws",
        type=int,
        default=0,
        help="also replay this many resamples of the held-out prompts against the held-out "
        "replay (what a perfect model of the prompt population would show; 8 take ~2 min)",
    )
    check.add_argument(
        "--sensitivity",
        type=Path,
        nargs="+",
        help="instead: these scenarios' TPT and ranking under the profile's own acceptance, the "
        "fitted model and replay of --heldout (Markdown)",
    )
    check.set_defaults(handler=run_check)

    crossval = sub.add_parser(
        "acceptance-crossval",
        help="K-fold check: a model fitted without each fold, checked against the fold",
    )
    crossval.add_argument(
        "--traces", type=Path, nargs="+", required=True, help="every trace (all prompts)"
    )
    crossval.add_argument("--folds", type=int, default=4, help="folds (sequence i: fold i %% K)")
    add_fit_arguments(crossval)
    crossval.add_argument("--fit-seed", type=int, default=0, help="EM seed (as acceptance-fit)")
    _sample_arguments(crossval)
    crossval.set_defaults(handler=run_crossval)

    folds = sub.add_parser(
        "acceptance-folds",
        help="K-fold models as one per-request model: request r by the model without prompt r",
    )
    folds.add_argument(
        "--traces", type=Path, nargs="+", required=True, help="traces covering the split"
    )
    folds.add_argument("--family", choices=FAMILIES, default="humaneval", help="prompt family")
    folds.add_argument(
        "--split", choices=SPLITS, default="all", help="the run's prompts, in request order"
    )
    folds.add_argument("--folds", type=int, default=4, help="folds (prompt r: fold r %% K)")
    add_fit_arguments(folds)
    folds.add_argument("--seed", type=int, default=0, help="EM seed (as acceptance-fit)")
    folds.add_argument("--out", type=Path, required=True, help="model JSON to write")
    folds.set_defaults(handler=run_folds)


def load_model(path: Path, by_request: bool = False) -> Any:
    """The `HmmAcceptance` of a model JSON written by `acceptance-fit`, or with `by_request`
    also the `ByRequestAcceptance` of one written by `acceptance-folds` (one-line errors)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read model ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(path, "", "not a JSON file") from None
    if not isinstance(data, dict) or not isinstance(data.get("acceptance"), dict):
        raise ConfigError(path, "acceptance", "missing (expected acceptance-fit's output)")
    kind: type[HmmAcceptance] | type[ByRequestAcceptance] = HmmAcceptance
    if data["acceptance"].get("kind") == "by_request":
        if not by_request:
            why = "by_request (acceptance-folds' per-request models): give acceptance-fit's"
            raise ConfigError(path, "acceptance.kind", why)
        kind = ByRequestAcceptance
    try:
        return kind.model_validate(data["acceptance"])
    except ValidationError as exc:
        raise from_validation_error(path, exc, kind) from None


def _percentages(values: dict[str, float]) -> str:
    return ", ".join(f"{f} {100 * v:.2f}%" for f, v in values.items())


def run_check(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate acceptance-check`."""
    model = load_model(args.model)
    if args.prompt_draws < 0:
        raise ConfigError("--prompt-draws", "", f"must be 0 or more (got {args.prompt_draws})")
    began = time.perf_counter()
    if args.sensitivity:
        label = "profile's own (Beta)"
        for line in sensitivity_lines(args.sensitivity, model, args.heldout, label):
            print(line)
        say(f"simulated in {time.perf_counter() - began:.1f} s ({command})")
        return 0
    rows = policy_check(args.scenario, model, args.heldout, args.prompts, args.seeds)
    references = reference_rows(args.scenario, args.heldout, args.fitting, args.prompts, args.seeds)
    draws = []
    if args.prompt_draws:
        held = trace_sequences([args.heldout])
        draws = prompt_bootstrap(
            args.scenario, held, args.prompt_draws, prompts=args.prompts, seeds=args.seeds
        )
    say(f"simulated in {time.perf_counter() - began:.1f} s ({command})")
    for line in table_lines(rows, references["noise"]):
        print(line)
    for name, reference in references.items():
        print(f"for reference, {REFERENCE_LABELS[name]}: {_percentages(medians(reference))}")
    if draws:
        typical = {f: statistics.median(d[f] for d in draws) for f in FIGURES}
        spread = {f: float(np.percentile([d[f] for d in draws], 90)) for f in FIGURES}
        print(
            f"for reference, the held-out prompts resampled ({len(draws)} draws; what a perfect "
            f"model of the prompt population would show against them), median: "
            f"{_percentages(typical)}; 90th percentile: {_percentages(spread)}"
        )
    return 0


def run_crossval(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate acceptance-crossval`."""
    if args.bins < 1:
        raise ConfigError("--bins", "", f"must be at least 1 (got {args.bins})")
    sequences = trace_sequences(args.traces)
    began = time.perf_counter()
    try:
        rows, noise, chosen = cross_validate(
            args.scenario,
            sequences,
            args.folds,
            args.states,
            args.bins,
            args.fit_seed,
            args.prompts,
            args.seeds,
            say=say,
            start_states=args.start_states,
        )
    except ValueError as exc:
        raise ConfigError("--folds", "", str(exc)) from None
    say(f"fitted and simulated in {time.perf_counter() - began:.1f} s ({command})")
    print(
        f"{len(sequences)} prompts in {args.folds} folds; start states + regimes chosen per "
        f"fold: {', '.join(f'{a}+{b}' for a, b in chosen)}; "
        "figures averaged over the folds (each prompt held out once)"
    )
    for line in table_lines(rows, noise):
        print(line)
    print(f"for reference, {REFERENCE_LABELS['noise']}: {_percentages(medians(noise))}")
    return 0


def run_folds(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate acceptance-folds`."""
    if args.out.exists():
        raise ConfigError("--out", "", f"{args.out} exists (never overwritten)")
    if args.bins < 1:
        raise ConfigError("--bins", "", f"must be at least 1 (got {args.bins})")
    prompt_ids, sequences = family_sequences(args.traces, args.family, args.split)
    began = time.perf_counter()
    try:
        fitted = fit_folds(
            prompt_ids, sequences, args.folds, args.states, args.bins, args.seed,
            args.start_states, say,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError("--folds", "", str(exc)) from None
    say(f"fitted in {time.perf_counter() - began:.1f} s")
    record = {
        "acceptance": fitted.acceptance.model_dump(mode="json"),
        "fit": {
            "folds": args.folds,
            "start_states_and_regimes": [list(c) for c in fitted.chosen],
            "bins": args.bins,
            "seed": args.seed,
            "prompts": len(sequences),
        },
        "provenance": {
            "traces": [str(p) for p in args.traces],
            "trace_sha256": {str(p): sha256(p) for p in args.traces},
            "family": args.family,
            "split": args.split,
            "command": command,
            "versions": package_versions(("pipesd-kit", "numpy")),
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(
        f"{len(sequences)} prompts of {args.family}/{args.split} in {args.folds} folds; start "
        f"states + regimes per fold: {', '.join(f'{a}+{b}' for a, b in fitted.chosen)}"
    )
    print(f"wrote {args.out}")
    return 0


__all__ = [
    "add_check_parsers",
    "add_fit_arguments",
    "load_model",
    "run_check",
    "run_crossval",
    "run_folds",
    "start_list",
    "state_list",
    "trace_sequences",
]
