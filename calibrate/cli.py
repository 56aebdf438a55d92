"""`pipesd calibrate`: measure parts of a profile on this machine and assemble profiles.

    pipesd calibrate draft  --model PATH|smollm2-135m --threads N --out draft.json
    pipesd calibrate target --model SHAPE|DIR --device cpu|cuda --out target.json
    pipesd calibrate target --backend llama --model PATH.gguf|smollm2-135m --threads N --out ...
    pipesd calibrate target --backend torch-served --model SHAPE|DIR|GGUF --device cpu|cuda ...
    pipesd calibrate power  [--package-watts W] --out power.json
    pipesd calibrate link   --server URL | --testbed SCENARIO.toml --out link.json
    pipesd calibrate wire   [--session SCENARIO.toml --draft D.gguf] --out payload.json
    pipesd calibrate acceptance --draft D.gguf --target T.gguf --out acceptance.json
    pipesd calibrate profile PART.json ... --name NAME --out scenarios/profiles/NAME.json
    pipesd calibrate refit  PART.json [--out PART.json]    (fits the stored samples again)
    pipesd calibrate all    --draft ... --target ... --out scenarios/profiles/NAME.json
    pipesd calibrate distill --target smollm2-135m [--layers 0,10,20,29 --steps N --out D.gguf]
    pipesd calibrate shape-gguf --shape TinyLlama-1.1B [--quant Q4_K_M --out X.gguf --seed 0]

Each subcommand parses its flags into the options of `calibrate.options` and calls the
measurement (`calibrate.measure`); heavy libraries (llama.cpp, torch) load only when it runs.
Pairs, acceptance traces and fits: `calibrate.acceptance_cli`; their policy-level checks:
`calibrate.acceptance_check_cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from calibrate.acceptance_check_cli import add_check_parsers
from calibrate.acceptance_cli import add_acceptance_parsers
from calibrate.assemble import PART_KINDS, save_part
from calibrate.campaign import add_campaign_parser
from calibrate.cli_files import DEFAULT_BASE, add_file_parsers, int_list
from calibrate.measure import measure, measure_profile
from calibrate.options import (
    TARGET_BACKENDS,
    AcceptanceOptions,
    DraftOptions,
    LinkOptions,
    MeasureOptions,
    PowerOptions,
    TargetOptions,
    WireOptions,
    option_names,
)
from simulator.outdir import check_out_file, check_side_folder

BY_BACKEND = "default per backend (calibrate/measure_target.py, calibrate/target_llama.py)"

Say = Callable[[str], None]


def _ints(text: str) -> list[int]:
    return int_list(text, 1, "integers like 32,128,512", "positive")


def _from_args(options_type: type, args: argparse.Namespace, **extra: Any) -> Any:
    """`options_type` built from the flags of the same names (and `extra`)."""
    given = {n: getattr(args, n) for n in option_names(options_type) if hasattr(args, n)}
    return options_type(**{**given, **extra})


def add_parser(subparsers: Any) -> None:
    """Register `pipesd calibrate` and its subcommands; each sets `handler(args, command, say)`."""
    calibrate = subparsers.add_parser(
        "calibrate",
        help="measure draft, target and power on this machine; assemble profiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = calibrate.add_subparsers(dest="part", required=True)
    draft = sub.add_parser("draft", help="edge draft model on the CPU (llama.cpp)")
    _draft_arguments(draft)
    _measures(draft, lambda args: _from_args(DraftOptions, args))
    _add_target(sub)
    _add_power(sub)
    _add_link(sub)
    _add_wire(sub)
    _add_acceptance(sub)
    _add_all(sub)
    add_file_parsers(sub)
    add_acceptance_parsers(sub)
    add_check_parsers(sub)
    # Subcommands defined in other modules register here: `add_xxx_parser(sub)`, each setting
    # `handler` with `set_defaults` (e.g. `pipesd calibrate campaign`, issue 20).
    add_campaign_parser(sub)


def _measures(
    parser: argparse.ArgumentParser,
    build: Callable[[Any], MeasureOptions],
    out_help: str = "part file to write (JSON)",
) -> None:
    """A subcommand measuring one part: `--out`, and a handler building its options."""
    parser.add_argument("--out", type=Path, required=True, help=out_help)

    def handler(args: argparse.Namespace, command: str, say: Say) -> int:
        part = measure(build(args), say, command)
        save_part(part, args.out)
        for line in part.notes.values():
            say(line)
        print(f"wrote {args.out}")
        return 0

    parser.set_defaults(handler=handler)


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


def _add_target(sub: Any) -> None:
    target = sub.add_parser(
        "target", help="cloud target model (PyTorch cuda/cpu, or the testbed's llama.cpp CPU)"
    )
    target.add_argument(
        "--backend",
        choices=TARGET_BACKENDS,
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
    target.add_argument(
        "--batch-sizes",
        type=_ints,
        help="torch-served: 1 only; llama: above 1 fits the forward on batched verification "
        "(calibrate/target_batch.py); " + BY_BACKEND,
    )
    target.add_argument("--context-lengths", type=_ints, help=BY_BACKEND)
    target.add_argument("--prompt-lengths", type=_ints, help=BY_BACKEND)
    target.add_argument("--repetitions", type=int, default=5)
    target.add_argument("--warmup", type=int, default=2)
    _measures(target, lambda args: _from_args(TargetOptions, args))


def _add_power(sub: Any) -> None:
    power = sub.add_parser("power", help="edge CPU package power: RAPL, else a declared model")
    power.add_argument(
        "--package-watts",
        type=float,
        help="the CPU package's rated power, used (with measured utilisation) without RAPL",
    )
    power.add_argument("--seconds", type=float, default=2.0, help="length of each window")
    power.add_argument("--threads", type=int, help="busy threads while measuring (default all)")
    _measures(power, lambda args: _from_args(PowerOptions, args))


def _add_link(sub: Any) -> None:
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
    _measures(link, lambda args: _from_args(LinkOptions, args))


def _add_wire(sub: Any) -> None:
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
    _measures(wire, lambda args: _from_args(WireOptions, args))


def _add_acceptance(sub: Any) -> None:
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
    _measures(
        accept,
        lambda args: _from_args(AcceptanceOptions, args, trace=args.out.with_suffix(".trace.csv")),
        "part file; the replay trace goes beside it (OUT.trace.csv)",
    )


def _add_all(sub: Any) -> None:
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
    every.set_defaults(handler=run_all)


def all_steps(args: argparse.Namespace) -> list[MeasureOptions]:
    """`calibrate all`'s draft, target and power options from its flags."""
    common = {"repetitions": args.repetitions, "warmup": args.warmup}
    target_threads = args.target_threads
    if target_threads is None and args.target_backend == "llama":
        target_threads = args.threads
    return [
        DraftOptions(
            model=args.draft,
            threads=args.threads,
            prompt_lengths=args.draft_prompt_lengths,
            context_lengths=args.draft_context_lengths,
            burst=args.draft_burst,
            pause_ms=args.draft_pause_ms,
            **common,
        ),
        TargetOptions(
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
        PowerOptions(package_watts=args.package_watts),
    ]


def run_all(args: argparse.Namespace, command: str, say: Say) -> int:
    """`pipesd calibrate all`: every part with a progress bar, then the profile."""
    steps = all_steps(args)
    parts = [f"{kind}.json" for kind in PART_KINDS]  # never overwrites other files there
    check_side_folder(args.out.with_suffix(".parts"), parts)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = progress.add_task("calibrating", total=len(steps))

        def report(kind: str, line: str | None) -> None:
            if line is None:
                progress.advance(bar)
            else:
                progress.update(bar, description=f"{kind}: {line}")

        measure_profile(args.name, steps, args.base, args.out, command, report)
    print(f"wrote {args.out} (parts in {args.out.with_suffix('.parts')})")
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd calibrate ...`: the subcommand's handler."""
    console = Console(stderr=True)

    def say(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    if getattr(args, "out", None) is not None:
        check_out_file(args.out)  # a folder or device as --out fails before measuring
    return args.handler(args, " ".join(["pipesd", *argv]), say)


__all__ = ["add_parser", "all_steps", "run"]
