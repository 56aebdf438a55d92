"""`pipesd calibrate profile|refit|distill|shape-gguf`: the subcommands that build files from
parts or models rather than measure (flags parsed here, the work done by `calibrate.assemble`,
`calibrate.refit`, `models.distill` and `models.shape_gguf`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibrate.assemble import assemble, load_part, save_part, write_profile
from calibrate.refit import refit_part
from models.distill import QUANTS, DistillConfig, distill
from models.registry import DRAFT_FILE, models_dir, resolve_model
from models.shape_gguf import (
    build_shape_gguf,
    default_file_name,
    resolve_quant,
    resolve_shape,
    weight_count,
)
from simulator.errors import ConfigError
from simulator.profile import load_profile

DEFAULT_BASE = Path(__file__).resolve().parents[1] / "scenarios" / "profiles" / "default.json"
"""The profile giving every section no part measured: the shipped default, found from this file
so the commands work from any folder."""

DISTILL_LAYERS = (0, 10, 20, 29)
"""Default student: four of the target's blocks, evenly spread, first and last included."""

DISTILL_STEPS = 250
"""Default optimiser steps."""

Say = Callable[[str], None]


def int_list(text: str, minimum: int, example: str, kind: str) -> list[int]:
    """A comma-separated list of integers >= `minimum` (argparse's error otherwise)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {example} (got {text!r})") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind} integers (got {text!r})")
    return values


def _indices(text: str) -> list[int]:
    return int_list(text, 0, "block indices like 0,1,28,29", "non-negative")


def add_file_parsers(sub: Any) -> None:
    """Register `profile`, `refit`, `distill` and `shape-gguf` under `pipesd calibrate`."""
    profile = sub.add_parser("profile", help="assemble a profile from part files")
    profile.add_argument("parts", nargs="+", type=Path, help="part files (calibrate draft, ...)")
    profile.add_argument("--name", required=True, help="the profile's name")
    profile.add_argument(
        "--base",
        type=Path,
        default=DEFAULT_BASE,
        help=f"profile giving every section no part measured (default {DEFAULT_BASE})",
    )
    profile.add_argument("--out", type=Path, required=True, help="profile file to write")
    profile.set_defaults(handler=run_profile)
    refit = sub.add_parser(
        "refit",
        help="fit a part's stored samples again (draft, target, link, acceptance); measures "
        "nothing",
    )
    refit.add_argument("part_file", metavar="PART", type=Path, help="part file to refit")
    refit.add_argument(
        "--out", type=Path, help="part file to write (default: PART itself, rewritten)"
    )
    refit.set_defaults(handler=run_refit)
    _add_distill(sub)
    shape_gguf = sub.add_parser(
        "shape-gguf",
        help="a random-weight GGUF of a named shape for llama.cpp latency calibration "
        "(acceptance with it is meaningless)",
    )
    shape_gguf.add_argument(
        "--shape", required=True, help="a named shape (models/shapes.py), e.g. TinyLlama-1.1B"
    )
    shape_gguf.add_argument(
        "--quant", default="Q4_K_M", help="Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0 or F16 (%(default)s)"
    )
    shape_gguf.add_argument("--seed", type=int, default=0, help="weights' seed (%(default)s)")
    shape_gguf.add_argument("--threads", type=int, help="quantiser threads (default: all cores)")
    shape_gguf.add_argument(
        "--out",
        type=Path,
        help="GGUF to write (default: MODELS/<shape>-random-<quant>.gguf in lower case, MODELS = "
        "$PIPESD_MODELS or ~/.cache/pipesd/models)",
    )
    shape_gguf.set_defaults(handler=run_shape_gguf)


def _add_distill(sub: Any) -> None:
    d = DistillConfig(layers=(0,), steps=1)
    parser = sub.add_parser(
        "distill", help="distil a shallow draft GGUF for a llama GGUF target (torch, CPU)"
    )
    parser.add_argument("--target", default="smollm2-135m", help="target GGUF, or smollm2-135m")
    parser.add_argument(
        "--layers",
        type=_indices,
        default=list(DISTILL_LAYERS),
        help="target blocks the student starts from, in order (default %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=DISTILL_STEPS, help="optimiser steps")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--prompts", type=int, default=d.n_prompts, help="training prompts")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--top-k", type=int, default=d.top_k, help="target logits kept")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    parser.add_argument(
        "--negatives",
        type=int,
        default=d.negatives,
        help="random tokens added to each step's softmax (0: whole vocabulary)",
    )
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--quant", choices=QUANTS, default=d.quant, help="blocks' type")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"GGUF to write (default: MODELS/{DRAFT_FILE}, MODELS = $PIPESD_MODELS or "
        "~/.cache/pipesd/models); OUT.recipe.json and OUT.labels.npz go beside it",
    )
    parser.set_defaults(handler=run_distill)


def run_profile(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate profile`: parts assembled over the base profile."""
    parts = [load_part(p) for p in args.parts]
    write_profile(assemble(args.name, parts, load_profile(args.base), command), args.out)
    print(f"wrote {args.out}")
    return 0


def run_refit(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate refit`: the part's fits run again on its samples, the part rewritten."""
    part = load_part(args.part_file)
    try:
        refitted, changes = refit_part(part, command)
    except ValueError as exc:
        raise ConfigError(args.part_file, "samples", str(exc)) from None
    out = args.out if args.out is not None else args.part_file
    save_part(refitted, out)
    for key, note in refitted.notes.items():
        if key.startswith(f"{part.kind}.fit."):
            say(f"{key}: {note}")
    for line in changes or ["fitted values unchanged"]:
        say(line)
    print(f"wrote {out}")
    return 0


def run_distill(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate distill`: build the draft GGUF and its recipe."""
    target = resolve_model(args.target)
    out = args.out if args.out is not None else models_dir() / DRAFT_FILE
    if out.suffix.lower() != ".gguf":
        raise ConfigError("--out", str(out), "must end in .gguf")
    if out.resolve() == target.resolve():
        raise ConfigError("--out", str(out), "must differ from the target")
    config = DistillConfig(
        layers=tuple(args.layers),
        steps=args.steps,
        seed=args.seed,
        n_prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
        lr=args.lr,
        batch_tokens=args.batch_tokens,
        negatives=args.negatives,
        threads=args.threads,
        quant=args.quant,
    )
    try:
        recipe = distill(target, out, config, command, progress=say)
    except ValueError as exc:
        raise ConfigError("calibrate distill", "", str(exc)) from None
    agreement = recipe["heldout"]["after"]["top1_agreement"]
    print(f"wrote {out} (held-out top-1 agreement {agreement:.3f}) and its recipe")
    return 0


def run_shape_gguf(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate shape-gguf`: build a named shape's random-weight GGUF (llama.cpp)."""
    name, shape = resolve_shape(args.shape)
    quant = resolve_quant(args.quant)
    out = args.out if args.out is not None else models_dir() / default_file_name(name, quant)
    start = time.perf_counter()
    try:
        path = build_shape_gguf(name, out, quant, args.seed, progress=say, threads=args.threads)
    except RuntimeError as exc:
        raise ConfigError("calibrate shape-gguf", "", str(exc)) from None
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    print(
        f"wrote {path} ({size / 2**30:.2f} GiB, {weight_count(shape) / 1e9:.3f}B parameters, "
        f"{name} in {quant}, seed {args.seed}, {elapsed:.0f} s)"
    )
    print(
        "random weights and a made-up tokenizer: its latency is the real architecture's, "
        "but any acceptance measured with it is meaningless"
    )
    return 0


__all__ = ["DEFAULT_BASE", "add_file_parsers", "int_list"]
