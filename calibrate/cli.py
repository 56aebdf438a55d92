"""`pipesd calibrate`: measure parts of a profile on this machine and assemble profiles.

    pipesd calibrate draft  --model PATH|smollm2-135m --threads N --out draft.json
    pipesd calibrate target --model SHAPE|DIR --device cpu|cuda --out target.json
    pipesd calibrate target --backend llama --model PATH.gguf|smollm2-135m --threads N --out ...
    pipesd calibrate target --backend torch-served --model SHAPE|DIR|GGUF --device cpu|cuda ...
    pipesd calibrate power  [--package-watts W] --out power.json
    pipesd calibrate profile PART.json ... --name NAME --out scenarios/profiles/NAME.json
    pipesd calibrate refit  PART.json [--out PART.json]    (fits the stored samples again)
    pipesd calibrate all    --draft ... --target ... --out scenarios/profiles/NAME.json
    pipesd calibrate distill --target smollm2-135m [--layers 0,10,20,29 --steps N --out D.gguf]
    pipesd calibrate shape-gguf --shape TinyLlama-1.1B [--quant Q4_K_M --out X.gguf --seed 0]

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

TORCH_TARGET_DEFAULTS: dict[str, Any] = {
    "device": "cuda",
    "dtype": "bfloat16",
    "token_counts": [1, 2, 4, 8, 16, 32, 64],
    "batch_sizes": [1, 2, 4, 8, 16, 32],
    "context_lengths": [128, 512, 1024],
    "prompt_lengths": [64, 256, 1024],
}
"""`calibrate target` settings left unset, torch backend (llama: calibrate.target_llama)."""

BY_BACKEND = "default per backend (calibrate/cli.py, calibrate/target_llama.py)"


def _int_list(text: str, minimum: int, example: str, kind: str) -> list[int]:
    """A comma-separated list of integers >= `minimum` (argparse's error otherwise)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {example} (got {text!r})") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind} integers (got {text!r})")
    return values


def _ints(text: str) -> list[int]:
    return _int_list(text, 1, "integers like 32,128,512", "positive")


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
    target = sub.add_parser(
        "target", help="cloud target model (PyTorch cuda/cpu, or the testbed's llama.cpp CPU)"
    )
    target.add_argument(
        "--backend",
        choices=("torch", "torch-served", "llama"),
        default="torch",
        help="torch (eager transformers, batched), torch-served (the testbed server's "
        "TorchTarget: static cache, CUDA graphs on a GPU) or llama (its llama.cpp target)",
    )
    target.add_argument(
        "--model",
        required=True,
        help="torch: a named shape with random weights (see models/shapes.py, e.g. "
        "Llama-2-7B) or a local Hugging Face model folder; llama: a GGUF file or smollm2-135m",
    )
    target.add_argument("--threads", type=int, help="CPU threads (llama, torch-served)")
    target.add_argument("--device", choices=("cpu", "cuda"), help="torch (default cuda)")
    target.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), help="torch (default bfloat16)"
    )
    target.add_argument("--token-counts", type=_ints, help=BY_BACKEND)
    target.add_argument("--batch-sizes", type=_ints, help="llama: 1 only; " + BY_BACKEND)
    target.add_argument("--context-lengths", type=_ints, help=BY_BACKEND)
    target.add_argument("--prompt-lengths", type=_ints, help=BY_BACKEND)
    target.add_argument("--repetitions", type=int, default=5)
    target.add_argument("--warmup", type=int, default=2)
    target.add_argument("--out", type=Path, required=True, help="part file to write (JSON)")
    power = sub.add_parser("power", help="edge CPU package power: RAPL, else a declared model")
    power.add_argument(
        "--package-watts",
        type=float,
        help="the CPU package's rated power, used (with measured utilisation) without RAPL",
    )
    power.add_argument("--seconds", type=float, default=2.0, help="length of each window")
    power.add_argument("--threads", type=int, help="busy threads while measuring (default all)")
    power.add_argument("--out", type=Path, required=True, help="part file to write (JSON)")
    link = sub.add_parser("link", help="the link to a running `pipesd realrun cloud` server")
    where = link.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="a running server's URL, e.g. http://127.0.0.1:8600")
    where.add_argument(
        "--testbed",
        type=Path,
        help="scenario TOML: probe the testbed's own path (its tbf link and delay relay, or "
        "the software shaper, a server started behind them); its one-way latency is the "
        "link's, the rest overhead",
    )
    link.add_argument("--model", default="smollm2-135m", help="with --testbed: the server's model")
    link.add_argument(
        "--testbed-mbps",
        type=float,
        default=1000.0,
        help="with --testbed: the link rate both ways while probing (high: overhead, not bytes)",
    )
    link.add_argument(
        "--testbed-shaping",
        choices=("tbf", "software"),
        default="tbf",
        help="with --testbed: the shaping the validation will use (software: no root needed, "
        "e.g. the GPU machine)",
    )
    link.add_argument("--token", help="the server's shared secret, if it has one")
    link.add_argument(
        "--sizes", type=_ints, default=[1024, 65536, 262144, 1048576, 4000000], help="bytes"
    )
    link.add_argument("--repetitions", type=int, default=10)
    link.add_argument(
        "--emulated-latency-s",
        type=float,
        help="the one-way delay a relay on the path emulates: the rest of the round trip "
        "becomes per-message overhead",
    )
    link.add_argument("--out", type=Path, required=True, help="part file to write (JSON)")
    wire = sub.add_parser(
        "wire",
        help="bytes per testbed message on the wire (tbf counters; needs root, ip and tc)",
    )
    wire.add_argument("--model", default="smollm2-135m", help="the server's target GGUF")
    wire.add_argument("--threads", type=int, default=1, help="the server's CPU threads")
    wire.add_argument("--tokens", type=int, default=4, help="draft tokens per NAV")
    wire.add_argument("--messages", type=int, default=40, help="NAVs counted")
    wire.add_argument(
        "--session",
        type=Path,
        metavar="SCENARIO",
        help="measure in real edge sessions instead: SCENARIO's one-message-per-NAV policies, "
        "synthetic acceptance, the draft below (calibrate.wire_session)",
    )
    wire.add_argument("--draft", help="with --session: the edge's draft GGUF")
    wire.add_argument("--draft-threads", type=int, default=1, help="with --session")
    wire.add_argument("--requests", type=int, default=2, help="with --session: per policy")
    wire.add_argument("--out", type=Path, required=True, help="part file to write (JSON)")
    accept = sub.add_parser(
        "acceptance", help="a real draft/target pair's acceptance (llama.cpp, greedy)"
    )
    accept.add_argument(
        "--draft", required=True, help="draft GGUF (sharing the target's tokenizer)"
    )
    accept.add_argument("--target", required=True, help="target GGUF, or smollm2-135m")
    accept.add_argument("--prompts", type=Path, help="one prompt per line (default: built-in)")
    accept.add_argument("--max-new-tokens", type=int, default=64)
    accept.add_argument("--draft-len", type=int, default=4)
    accept.add_argument("--threads", type=int, default=1)
    accept.add_argument("--bins", type=int, default=10, help="confidence bins of the fit")
    accept.add_argument(
        "--out", type=Path, required=True, help="part file; the replay trace goes beside it"
    )
    every = sub.add_parser(
        "all", help="draft, target and power in one go, assembled into a profile"
    )
    every.add_argument("--draft", required=True, help="draft GGUF file, or smollm2-135m")
    every.add_argument("--threads", type=int, required=True, help="draft CPU threads")
    every.add_argument("--draft-prompt-lengths", type=_ints, default=[32, 128, 512])
    every.add_argument("--draft-context-lengths", type=_ints, default=[64, 256, 1024])
    every.add_argument(
        "--draft-burst", type=int, default=0, help="draft decode steps per burst (0: back to back)"
    )
    every.add_argument(
        "--draft-pause-ms", type=float, default=0.0, help="idle between draft bursts (ms)"
    )
    every.add_argument(
        "--target", required=True, help="torch: named shape or local HF folder; llama: GGUF"
    )
    every.add_argument("--target-backend", choices=("torch", "llama"), default="torch")
    every.add_argument("--target-threads", type=int, help="llama target (default --threads)")
    every.add_argument("--device", choices=("cpu", "cuda"), help="torch (default cuda)")
    every.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="torch")
    every.add_argument("--token-counts", type=_ints, help=BY_BACKEND)
    every.add_argument("--batch-sizes", type=_ints, help=BY_BACKEND)
    every.add_argument("--target-context-lengths", type=_ints, help=BY_BACKEND)
    every.add_argument("--target-prompt-lengths", type=_ints, help=BY_BACKEND)
    every.add_argument("--package-watts", type=float, help="edge package power without RAPL")
    every.add_argument("--repetitions", type=int, default=5)
    every.add_argument("--warmup", type=int, default=2)
    every.add_argument("--name", required=True, help="the profile's name")
    every.add_argument("--base", type=Path, default=DEFAULT_BASE, help="profile for the rest")
    every.add_argument(
        "--out", type=Path, required=True, help="profile to write; parts go to OUT.parts/"
    )
    _distill_arguments(sub)
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
    refit = sub.add_parser(
        "refit",
        help="fit a part's stored samples again (draft, target, link, acceptance); measures "
        "nothing",
    )
    refit.add_argument("part_file", metavar="PART", type=Path, help="part file to refit")
    refit.add_argument(
        "--out", type=Path, help="part file to write (default: PART itself, rewritten)"
    )
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


def _indices(text: str) -> list[int]:
    return _int_list(text, 0, "block indices like 0,1,28,29", "non-negative")


def _distill_arguments(sub: Any) -> None:
    from models.distill import QUANTS, DistillConfig
    from models.registry import DRAFT_FILE

    d = DistillConfig(layers=(0,), steps=1)
    distill = sub.add_parser(
        "distill", help="distil a shallow draft GGUF for a llama GGUF target (torch, CPU)"
    )
    distill.add_argument("--target", default="smollm2-135m", help="target GGUF, or smollm2-135m")
    distill.add_argument(
        "--layers",
        type=_indices,
        default=list(DISTILL_LAYERS),
        help="target blocks the student starts from, in order (default %(default)s)",
    )
    distill.add_argument("--steps", type=int, default=DISTILL_STEPS, help="optimiser steps")
    distill.add_argument("--seed", type=int, default=d.seed)
    distill.add_argument("--prompts", type=int, default=d.n_prompts, help="training prompts")
    distill.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    distill.add_argument("--top-k", type=int, default=d.top_k, help="target logits kept")
    distill.add_argument("--lr", type=float, default=d.lr)
    distill.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    distill.add_argument(
        "--negatives",
        type=int,
        default=d.negatives,
        help="random tokens added to each step's softmax (0: whole vocabulary)",
    )
    distill.add_argument("--threads", type=int, default=d.threads)
    distill.add_argument("--quant", choices=QUANTS, default=d.quant, help="blocks' type")
    distill.add_argument(
        "--out",
        type=Path,
        help=f"GGUF to write (default: MODELS/{DRAFT_FILE}, MODELS = $PIPESD_MODELS or "
        "~/.cache/pipesd/models); OUT.recipe.json and OUT.labels.npz go beside it",
    )


DISTILL_LAYERS = (0, 10, 20, 29)
"""Default student: four of the target's blocks, evenly spread, first and last included."""

DISTILL_STEPS = 250
"""Default optimiser steps."""


def run_distill(args: argparse.Namespace, command: str, say: Callable[[str], None]) -> int:
    """`pipesd calibrate distill`: build the draft GGUF and its recipe."""
    from models.distill import DistillConfig, distill
    from models.registry import DRAFT_FILE, models_dir, resolve_model

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
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="time decode steps in bursts of N with --pause-ms idle between them, the edge's "
        "duty cycle (0: back to back)",
    )
    parser.add_argument("--pause-ms", type=float, default=0.0, help="idle time between bursts (ms)")


def measure_draft(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """Profile the draft model and return its part."""
    from calibrate.assemble import new_part
    from calibrate.draft import fit_measurements, profile_draft
    from models.registry import resolve_model

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
            burst=args.burst,
            pause_s=args.pause_ms / 1e3,
        )
        latency, reports = fit_measurements(measured)
    except ValueError as exc:
        raise ConfigError("calibrate draft", "", str(exc)) from None
    from calibrate.draft import VISIT_STEPS

    where = (
        f"measured with llama.cpp {measured.llama_cpp_version}, {args.threads} threads, "
        f"prompts {args.prompt_lengths}, contexts {args.context_lengths}, "
        f"{args.repetitions} repetitions after {args.warmup} warm-up"
        + (
            f"; decode steps in bursts of {args.burst} with {args.pause_ms:g} ms idle between "
            "them (the edge's duty cycle)"
            if args.burst
            else f"; decode steps back to back in visits of {VISIT_STEPS}"
        )
        + "; contexts visited in turn (interleaved rounds)"
    )
    values = {
        "draft_latency": latency.model_dump(),
        "payload.vocab_size": measured.n_vocab,
        "models.draft": {
            "name": path.name,
            "parameters_b": measured.n_params / 1e9,
            "quantisation": measured.file_type,
        },
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

    if args.part == "all":
        return calibrate_all(args, command, console)
    if args.part == "profile":
        parts = [load_part(p) for p in args.parts]
        profile = assemble(args.name, parts, load_profile(args.base), command)
        write_profile(profile, args.out)
        print(f"wrote {args.out}")
        return 0
    if args.part == "distill":
        return run_distill(args, command, say)
    if args.part == "refit":
        return run_refit(args, command, say)
    if args.part == "shape-gguf":
        return run_shape_gguf(args, say)
    part = MEASURE[args.part](args, say, command)
    save_part(part, args.out)
    for line in part.notes.values():
        say(line)
    print(f"wrote {args.out}")
    return 0


def run_refit(args: argparse.Namespace, command: str, say: Callable[[str], None]) -> int:
    """`pipesd calibrate refit`: the part's fits run again on its samples, the part rewritten."""
    from calibrate.assemble import load_part, save_part
    from calibrate.refit import refit_part

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


def run_shape_gguf(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """`pipesd calibrate shape-gguf`: build a named shape's random-weight GGUF (llama.cpp)."""
    import time

    from models.registry import models_dir
    from models.shape_gguf import (
        build_shape_gguf,
        default_file_name,
        resolve_quant,
        resolve_shape,
        weight_count,
    )

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


def _target_model(args: argparse.Namespace) -> tuple[Any, str]:
    """A local Hugging Face folder, or a named shape with random weights."""
    import torch

    from models.shapes import SHAPES, build_random_model, get_shape

    dtype = getattr(torch, args.dtype)
    folder = Path(args.model)
    if folder.is_dir():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        return model.to(args.device).eval(), folder.name
    try:
        name = next(key for key, shape in SHAPES.items() if shape is get_shape(args.model))
        return build_random_model(name, dtype, args.device), name
    except (ValueError, MemoryError) as exc:
        raise ConfigError("--model", "", str(exc)) from None


def measure_target(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """Profile the target model; GPU energy and idle power when a meter is present."""
    from calibrate.assemble import new_part
    from calibrate.target import fit_measurements, profile_target

    if args.backend == "llama":
        from calibrate.target_llama import measure_part

        return measure_part(args, say, command)
    if args.backend == "torch-served":
        from calibrate.target_served_torch import measure_part as measure_served

        return measure_served(args, say, command)
    if args.threads is not None:
        raise ConfigError("--threads", "", "only for --backend llama (torch sets its own)")
    for key, value in TORCH_TARGET_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device", "cuda", "no CUDA device here (use --device cpu)")
    model, name = _target_model(args)
    try:
        measured = profile_target(
            model,
            args.device,
            token_counts=args.token_counts,
            batch_sizes=args.batch_sizes,
            context_lengths=args.context_lengths,
            prompt_lengths=args.prompt_lengths,
            repetitions=args.repetitions,
            warmup=args.warmup,
            progress=say,
            model_name=name,
        )
        latency, reports = fit_measurements(measured)
    except ValueError as exc:
        raise ConfigError("calibrate target", "", str(exc)) from None
    values: dict[str, Any] = {
        "target_latency": latency.model_dump(),
        "models.target": {"name": name, "parameters_b": 0.0, "quantisation": measured.dtype},
    }
    notes = {
        "target_latency": (
            f"measured on {measured.device_name} ({measured.device}, {measured.dtype}, "
            f"torch {measured.torch_version}), tokens {args.token_counts}, batches "
            f"{args.batch_sizes}, contexts {args.context_lengths}, {args.repetitions} repetitions"
        ),
    }
    power, power_notes = measured.power_fields("energy over verification windows", "measured")
    values.update(power)
    notes.update(power_notes)
    samples = measured.sample_rows()
    versions = {
        "torch": measured.torch_version,
        "transformers": measured.transformers_version,
        "nvidia-ml-py": _version("nvidia-ml-py"),
    }
    return new_part("target", values, notes, reports, samples, versions, command)


def measure_wire(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """The payload section's message header and token sizes, as the testbed sends them."""
    import llama_cpp

    from calibrate.assemble import new_part
    from calibrate.wire import measure_wire as measure
    from calibrate.wire import payload_values
    from models.registry import resolve_model

    if args.tokens < 1 or args.messages < 1 or args.requests < 1:
        raise ConfigError("calibrate wire", "--tokens/--messages/--requests", "must be >= 1")
    model = resolve_model(args.model)
    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False).n_vocab()
    if args.session is not None:
        return measure_session_wire(args, model, int(vocab), say, command)
    m = measure(str(model), args.threads, args.tokens, args.messages, say=say)
    values = payload_values(m, int(vocab))
    notes = {
        "payload.message_header_bytes": (
            f"tbf counters over {m.messages} NAVs of {m.n_tokens} tokens: "
            f"{m.uplink_wire_bytes:.1f} wire bytes ({m.uplink_packets:.2f} packets) per uplink "
            f"message = {m.uplink_payload_bytes:.1f} payload bytes, minus the tokens; downlink "
            f"answers {m.downlink_payload_bytes:.1f} payload bytes "
            f"({m.downlink_body_bytes:.1f} of msgpack body); the uplink's pure ACKs (packet "
            f"capture: {100 * m.uplink_ack_share:.1f}% of its frame bytes) are "
            "payload.message_ack_bytes, sent after the answer"
        ),
        "payload.token_id_bytes": "msgpack size of the vocabulary's largest id",
    }
    return new_part("payload", values, notes, {}, {}, {}, command)


def measure_session_wire(
    args: argparse.Namespace, model: Path, vocab: int, say: Callable[[str], None], command: str
) -> Any:
    """`calibrate wire --session`: the message sizes of real edge sessions."""
    import tempfile

    from calibrate.assemble import new_part
    from calibrate.wire import PROBABILITY_BYTES, msgpack_int_bytes
    from calibrate.wire_session import measure_session_wire as measure
    from calibrate.wire_session import session_payload_values
    from models.registry import resolve_model
    from realrun.local import LocalOptions

    if args.draft is None:
        raise ConfigError("calibrate wire", "--draft", "--session needs the edge's draft GGUF")
    if not args.session.is_file():
        raise ConfigError("--session", str(args.session), "scenario file not found")
    options = LocalOptions(
        target=model,
        draft=resolve_model(args.draft),
        target_threads=args.threads,
        draft_threads=args.draft_threads,
    )
    with tempfile.TemporaryDirectory(prefix="pipesd-wire-") as tmp:
        m = measure(args.session, options, Path(tmp), args.requests, say)
    values = {
        "payload.vocab_size": vocab,
        "payload.token_id_bytes": msgpack_int_bytes(vocab),
        "payload.probability_bytes": PROBABILITY_BYTES,
        **session_payload_values(m),
    }
    notes = {
        "payload.message_header_bytes": (
            f"real edge sessions ({', '.join(m.policies)}; {m.requests} requests, synthetic "
            f"acceptance, tbf at 100 Mbit/s): {m.uplink_bytes:.0f} uplink bytes (tbf counter, "
            f"payload units) over {m.messages} messages, minus {m.token_bytes:.0f} of verified "
            f"tokens and {m.prompt_bytes:.0f} of prompt ids = {m.per_message_bytes:.1f} per "
            f"message; the pure ACKs (packet capture: {100 * m.ack_share:.1f}% of the uplink's "
            "frame bytes) are payload.message_ack_bytes, the rest goes before the message"
        ),
        "payload.token_id_bytes": "msgpack size of the vocabulary's largest id",
    }
    return new_part("payload", values, notes, {}, {}, {}, command)


def measure_power(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """Edge busy and idle package power."""
    from calibrate.assemble import new_part
    from calibrate.power import PowerUnavailable, edge_power

    try:
        power = edge_power(args.package_watts, args.seconds, args.threads)
    except PowerUnavailable as exc:
        raise ConfigError("calibrate power", "", str(exc)) from None
    except ValueError as exc:
        raise ConfigError("--package-watts", "", str(exc)) from None
    values = {"power.edge_busy_w": power.busy_w, "power.edge_idle_w": power.idle_w}
    notes = {"power.edge_busy_w": power.method, "power.edge_idle_w": power.method}
    return new_part("power", values, notes, {}, {}, {}, command)


def _probe_testbed(args: argparse.Namespace, say: Callable[[str], None]) -> Any:
    """Probe a server started behind the scenario's link (first sweep point), shaped as
    `--testbed-shaping` says."""
    import dataclasses
    import tempfile

    from calibrate.link import nav_overhead, probe_link
    from models.registry import resolve_model
    from realrun.link.shaping import LinkSpec, open_link
    from realrun.local import LocalOptions, cloud_server, free_port
    from simulator.link import ConstantBandwidth
    from simulator.scenario import expand_sweep

    if not args.testbed_mbps > 0:
        raise ValueError("--testbed-mbps must be > 0")
    rate = ConstantBandwidth(args.testbed_mbps)
    spec = LinkSpec.from_point(expand_sweep(args.testbed, [])[0])
    spec = dataclasses.replace(spec, uplink=rate, downlink=rate)
    model = resolve_model(args.model)
    port = free_port()
    shaping = args.testbed_shaping
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_link(spec, shaping, server_port=port) as link,
    ):
        options = LocalOptions(target=model, draft=model)
        with cloud_server(link, port, options, Path(tmp) / "server.log"):
            url = link.client_url(port)
            say(f"testbed link: {link.describe()['kind']}, server at {url}")
            probed = probe_link(
                url, args.sizes, args.repetitions, None, say,
                emulated_latency_s=spec.one_way_latency_s, transport=link.transport(),
            )  # fmt: skip
            navs = nav_overhead(
                url, spec.one_way_latency_s, repetitions=args.repetitions,
                transport=link.transport(),
            )  # fmt: skip
            say(f"NAV overhead {1e3 * navs.overhead_s:.2f} ms ({len(navs.samples)} verifies)")
            return probed, navs


def measure_link(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """Probe the link to a running cloud server; both directions get the fitted values."""
    import httpx

    from calibrate.assemble import new_part
    from calibrate.link import probe_link

    try:
        if args.emulated_latency_s is not None and args.emulated_latency_s < 0:
            raise ValueError("--emulated-latency-s must be >= 0")
        navs = None
        if args.testbed is not None:
            measured, navs = _probe_testbed(args, say)
        else:
            measured = probe_link(
                args.server,
                args.sizes,
                args.repetitions,
                args.token,
                say,
                emulated_latency_s=args.emulated_latency_s,
            )
    except httpx.HTTPStatusError as exc:
        problem = f"HTTP {exc.response.status_code} from {exc.request.url.path} (wrong --token?)"
        raise ConfigError("--server", args.server, problem) from None
    except httpx.HTTPError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("--server", args.server, f"cannot probe ({reason})") from None
    except RuntimeError as exc:  # the testbed's link or server could not be set up
        raise ConfigError("--testbed", str(args.testbed), str(exc).splitlines()[0]) from None
    except ValueError as exc:
        raise ConfigError("calibrate link", "", str(exc)) from None
    target = args.server or (
        f"the testbed link of {args.testbed} at {args.testbed_mbps} Mbit/s "
        f"({args.testbed_shaping} shaping)"
    )
    how = (
        f"probed {target} with {args.sizes} byte messages x {args.repetitions}; "
        "the probe times an HTTP request both ways, so both directions get the same values"
    )
    values = {
        "link.uplink_mbps": measured.mbps,
        "link.downlink_mbps": measured.mbps,
        "link.one_way_latency_s": measured.one_way_latency_s,
        "link.uplink_overhead_s": measured.overhead_s,
        "link.downlink_overhead_s": 0.0,
    }
    notes = {
        "link": how,
        "link.one_way_latency_s": (
            "half the fastest empty round trip (/v1/health)"
            if measured.round_trips_s and args.testbed is None and args.emulated_latency_s is None
            else "the emulated one-way delay (the relay's or the software shaper's); the rest "
            "of the round trip is overhead"
        ),
        "link.uplink_overhead_s": "fit intercept minus the round trip",
    }
    samples = {"transfer": [s.to_row() for s in measured.samples]}
    if navs is not None:  # the testbed's NAVs cost more than probes: they set the overhead
        values["link.uplink_overhead_s"] = navs.overhead_s
        notes["link.uplink_overhead_s"] = (
            f"median over {len(navs.samples)} NAVs (verify carrying 1-8 tokens) of round trip "
            f"- target time - queueing - 2 x latency (calibrate.link.nav_overhead); the padded "
            f"probes' fit gave {1e3 * measured.overhead_s:.2f} ms"
        )
        samples["nav"] = [{"tokens": n, "overhead_s": v} for n, v in navs.samples]
    versions = {"httpx": _version("httpx")}
    return new_part("link", values, notes, {"link": measured.report}, samples, versions, command)


def measure_acceptance(args: argparse.Namespace, say: Callable[[str], None], command: str) -> Any:
    """Record per-position (confidence, accepted) of a real pair; fit the calibrated model."""
    from calibrate.acceptance import record_acceptance, samples, write_trace
    from calibrate.assemble import new_part
    from calibrate.fit import fit_acceptance
    from models.prompts import default_prompts, read_prompts
    from models.registry import resolve_model

    prompts = read_prompts(args.prompts) if args.prompts else default_prompts()
    draft, target = resolve_model(args.draft), resolve_model(args.target)
    try:
        recording = record_acceptance(
            draft,
            target,
            prompts,
            args.max_new_tokens,
            args.draft_len,
            threads=args.threads,
            progress=say,
        )
        model, report = fit_acceptance(samples(recording), bins=args.bins)
    except ValueError as exc:
        raise ConfigError("calibrate acceptance", "", str(exc)) from None
    trace = args.out.with_suffix(".trace.csv")
    write_trace(recording, trace)
    how = (
        f"recorded with draft {draft.name} and target {target.name} (llama.cpp, greedy, "
        f"draft length {args.draft_len}) on {len(prompts)} prompts x {args.max_new_tokens} "
        f"tokens: acceptance {recording.acceptance_rate:.3f} of drafted tokens, "
        f"{recording.mean_accepted_per_round:.2f} accepted per round; replay trace {trace.name}"
    )
    values = {"acceptance": model.model_dump(mode="json")}
    rows = [{"confidence": s.confidence, "accepted": int(s.accepted)} for s in samples(recording)]
    versions = {"llama-cpp-python": _version("llama-cpp-python")}
    return new_part(
        "acceptance",
        values,
        {"acceptance": how},
        {"acceptance": report},
        {"positions": rows},
        versions,
        command,
    )


MEASURE = {
    "acceptance": measure_acceptance,
    "draft": measure_draft,
    "target": measure_target,
    "power": measure_power,
    "link": measure_link,
    "wire": measure_wire,
}


def calibrate_all(args: argparse.Namespace, command: str, console: Any) -> int:
    """Every part with a progress bar, each saved as it finishes, then the profile."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from calibrate.assemble import assemble, save_part, write_profile
    from simulator.profile import load_profile

    common = {"repetitions": args.repetitions, "warmup": args.warmup}
    target_threads = args.target_threads
    if target_threads is None and args.target_backend == "llama":
        target_threads = args.threads
    steps = {
        "draft": argparse.Namespace(
            model=args.draft,
            threads=args.threads,
            prompt_lengths=args.draft_prompt_lengths,
            context_lengths=args.draft_context_lengths,
            burst=args.draft_burst,
            pause_ms=args.draft_pause_ms,
            **common,
        ),
        "target": argparse.Namespace(
            model=args.target,
            backend=args.target_backend,
            threads=target_threads,
            device=args.device,
            dtype=args.dtype,
            token_counts=args.token_counts,
            batch_sizes=args.batch_sizes,
            context_lengths=args.target_context_lengths,
            prompt_lengths=args.target_prompt_lengths,
            **common,
        ),
        "power": argparse.Namespace(package_watts=args.package_watts, seconds=2.0, threads=None),
    }
    base = load_profile(args.base)
    parts_dir = args.out.with_suffix(".parts")
    parts = []
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("calibrating", total=len(steps))
        for kind, step_args in steps.items():
            progress.update(bar, description=f"calibrating {kind}")

            def say(message: str, kind: str = kind) -> None:
                progress.update(bar, description=f"{kind}: {message}")

            part = MEASURE[kind](step_args, say, command)
            save_part(part, parts_dir / f"{kind}.json")
            parts.append(part)
            progress.advance(bar)
    write_profile(assemble(args.name, parts, base, command), args.out)
    print(f"wrote {args.out} (parts in {parts_dir})")
    return 0


"""Subcommands that measure one part."""
