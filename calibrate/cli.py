"""`pipesd calibrate`: measure parts of a profile on this machine and assemble profiles.

    pipesd calibrate draft  --model PATH|smollm2-135m --threads N --out draft.json
    pipesd calibrate target --model SHAPE|DIR --device cpu|cuda --out target.json
    pipesd calibrate power  [--package-watts W] --out power.json
    pipesd calibrate profile PART.json ... --name NAME --out scenarios/profiles/NAME.json
    pipesd calibrate all    --draft ... --target ... --out scenarios/profiles/NAME.json

Heavy libraries (llama.cpp, torch) load only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError

DEFAULT_BASE = Path("scenarios/profiles/default.json")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 32,128,512 (got {text!r})"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers (got {text!r})")
    return values


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def add_parser(subparsers: Any) -> None:
    """Register `pipesd calibrate` and its subcommands."""
    calibrate = subparsers.add_parser(
        "calibrate",
        help="measure draft, target and power on this machine; assemble profiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = calibrate.add_subparsers(dest="part", required=True)
    draft = sub.add_parser("draft", help="edge draft model on the CPU (llama.cpp)")
    _draft_arguments(draft)
    draft.add_argument("--out", type=Path, required=True, help="part file to write (JSON)")
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


def _draft_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="draft GGUF file, or smollm2-135m (shipped offline)"
    )
    parser.add_argument("--threads", type=int, required=True, help="CPU threads (edge budget)")
    parser.add_argument(
        "--prompt-lengths", type=_ints, default=[32, 128, 512], help="prefill grid (tokens)"
    )
    parser.add_argument(
        "--context-lengths", type=_ints, default=[64, 256, 1024], help="decode grid (tokens)"
    )
    parser.add_argument("--repetitions", type=int, default=5, help="measurements per point")
    parser.add_argument("--warmup", type=int, default=2, help="discarded runs per point")


def measure_draft(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """Profile the draft model and return its part."""
    from calibrate.assemble import new_part
    from calibrate.draft import fit_measurements, profile_draft
    from calibrate.models import resolve_model

    if args.threads < 1:
        raise ConfigError("--threads", "", f"must be at least 1 (got {args.threads})")
    path = resolve_model(args.model)
    try:
        measured = profile_draft(
            path,
            args.threads,
            args.prompt_lengths,
            args.context_lengths,
            args.repetitions,
            args.warmup,
            progress=say,
        )
        latency, reports = fit_measurements(measured)
    except ValueError as exc:
        raise ConfigError("calibrate draft", "", str(exc)) from None
    where = (
        f"measured with llama.cpp {measured.llama_cpp_version}, {args.threads} threads, "
        f"prompts {args.prompt_lengths}, contexts {args.context_lengths}, "
        f"{args.repetitions} repetitions after {args.warmup} warm-up"
    )
    values = {
        "draft_latency": latency.model_dump(),
        "payload.vocab_size": measured.n_vocab,
        "models.draft": {"name": path.name, "parameters_b": 0.0, "quantisation": "gguf"},
    }
    notes = {
        "draft_latency": where,
        "payload.vocab_size": "the draft model's vocabulary (llama.cpp n_vocab)",
    }
    samples = {
        "prefill": [s.to_row() for s in measured.prefill],
        "decode": [s.to_row() for s in measured.decode],
        "confidence": [{"confidence": c} for c in measured.confidences],
    }
    versions = {"llama-cpp-python": _version("llama-cpp-python")}
    return new_part("draft", values, notes, reports, samples, versions, command)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd calibrate ...`."""
    from rich.console import Console

    from calibrate.assemble import assemble, load_part, save_part, write_profile
    from simulator.profile import load_profile

    console = Console(stderr=True)
    command = " ".join(["pipesd", *argv])

    def say(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    if args.part == "profile":
        parts = [load_part(p) for p in args.parts]
        profile = assemble(args.name, parts, load_profile(args.base), command)
        write_profile(profile, args.out)
        print(f"wrote {args.out}")
        return 0
    part = MEASURE[args.part](args, say, command)
    save_part(part, args.out)
    for line in part.notes.values():
        say(line)
    print(f"wrote {args.out}")
    return 0


MEASURE = {"draft": measure_draft}
"""Subcommands that measure one part."""
