"""The cost of batched verification on the testbed's llama.cpp target, measured as served.

`measure_batches` drives `realrun.cloud.llama_target.LlamaTarget.verify_batch` (the call the
cloud server's Batcher makes: every session of a batch in one llama_decode) over a grid of
batch sizes (1..max_batch sequences) x tokens verified per sequence x contexts. Per context,
`max_batch` sessions are opened once (their prefills are the prefill samples); every round
visits each (batch size, tokens) configuration once, in a fresh random order, each
verification taking the first b sessions with k - 1 random draft tokens each. A verification
commits 1..k tokens, so contexts grow a little over the rounds; each sample records the
summed context it was measured at. The first `warmup` rounds are discarded.

`fit_batches` fits the target's forward model (calibrate.fit.fit_target_latency: base, per
token, per context token, per extra sequence, attention) with its held-out error. The
measurement is also `python -m calibrate.target_batch` (see `main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.fit import fit_target_latency
from calibrate.fit_report import FitReport
from calibrate.samples import ForwardSample, PrefillSample
from models.registry import resolve_model
from realrun.cloud.llama_target import LlamaTarget
from simulator.errors import ConfigError
from simulator.profile import TargetLatency

CLOCKS = ("wall", "cpu")
"""`wall`: the target's own timing of the batch (VerifyResult.target_ms); `cpu`: this
process's CPU time around the call / threads (steadier on a machine shared with others)."""


@dataclass(frozen=True)
class BatchGrid:
    """What `measure_batches` measures (see the module docstring)."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    token_counts: tuple[int, ...] = (1, 2, 4, 8)
    contexts: tuple[int, ...] = (64, 256)
    repetitions: int = 3
    warmup: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "token_counts", "contexts"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                 for v in values):  # fmt: skip
                raise ValueError(f"BatchGrid.{name} must be integers >= 1 (got {values!r})")
        if self.repetitions < 1 or self.warmup < 0:
            raise ValueError("BatchGrid: repetitions must be >= 1 and warmup >= 0")


def measure_batches(
    target: Any,
    grid: BatchGrid,
    clock: str = "wall",
    threads: int = 1,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
) -> tuple[list[PrefillSample], list[ForwardSample]]:
    """(prefill samples, forward samples) of `target` (a LlamaTarget with kv_slots >= the
    largest batch, n_ctx above the largest context plus the rounds' growth)."""
    if clock not in CLOCKS:
        raise ValueError(f"measure_batches: clock must be one of {', '.join(CLOCKS)}")
    rng = np.random.default_rng(seed)
    max_batch = max(grid.batch_sizes)

    def ids(n: int) -> list[int]:
        return [int(t) for t in rng.integers(0, target.n_vocab, n)]

    def timed(call: Callable[[], Any], wall_s: Callable[[Any], float]) -> tuple[Any, float]:
        cpu_start = time.process_time()
        result = call()
        if clock == "cpu":
            return result, (time.process_time() - cpu_start) / threads
        return result, wall_s(result)

    prefill: list[PrefillSample] = []
    forward: list[ForwardSample] = []
    configs = [(b, k) for b in grid.batch_sizes for k in grid.token_counts]
    for context in grid.contexts:
        sids = []
        for _ in range(max_batch):
            prompt = ids(context + 1)
            (sid, _), seconds = timed(lambda p=prompt: target.open(p), lambda o: o[1] / 1e3)
            sids.append(sid)
            prefill.append(PrefillSample(context, seconds))
        for rnd in range(grid.warmup + grid.repetitions):
            for i in rng.permutation(len(configs)):
                b, k = configs[i]
                batch = sids[:b]
                for sid in batch:
                    target.upload(sid, ids(k - 1), None)
                summed = sum(len(target.sessions[sid].committed) for sid in batch)
                _, seconds = timed(
                    lambda batch=batch: target.verify_batch(batch), lambda r: r[0].target_ms / 1e3
                )
                if rnd >= grid.warmup:
                    forward.append(ForwardSample(b * k, summed, b, seconds))
            if say is not None:
                say(f"context {context}: round {rnd + 1}/{grid.warmup + grid.repetitions}")
        for sid in sids:
            target.drop(sid)
    return prefill, forward


def measure_llama_batches(
    model_path: Path,
    threads: int,
    grid: BatchGrid,
    clock: str = "wall",
    seed: int = 0,
    say: Callable[[str], None] | None = None,
) -> tuple[list[PrefillSample], list[ForwardSample]]:
    """`measure_batches` on a LlamaTarget (as the server holds it) sized for `grid`: a KV slot
    per sequence of the largest batch, each long enough for the largest context and the
    rounds' growth."""
    rounds = (grid.warmup + grid.repetitions) * len(grid.batch_sizes) * len(grid.token_counts)
    n_ctx = max(grid.contexts) + rounds * (max(grid.token_counts) + 1) + 16
    target = LlamaTarget(model_path, threads, n_ctx=n_ctx, kv_slots=max(grid.batch_sizes))
    try:
        return measure_batches(target, grid, clock, threads, seed, say)
    finally:
        target.close()


def fit_batches(
    prefill: Sequence[PrefillSample], forward: Sequence[ForwardSample]
) -> tuple[TargetLatency, FitReport]:
    """The fitted target latency and the forward model's report (held-out error)."""
    latency, reports = fit_target_latency(prefill, forward)
    return latency, reports["forward"]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m calibrate.target_batch`: measure, fit, print and write OUT (JSON)."""
    parser = argparse.ArgumentParser(prog="python -m calibrate.target_batch")
    parser.add_argument("--model", default="smollm2-135m", help="GGUF file or registry name")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--tokens", default="1,2,4,8")
    parser.add_argument("--contexts", default="64,256")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (new)")
    args = parser.parse_args(argv)

    def counts(flag: str, text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            parser.error(f"{flag}: comma-separated integers >= 1 (got {text!r})")
        return values

    try:
        grid = BatchGrid(
            counts("--batch-sizes", args.batch_sizes),
            counts("--tokens", args.tokens),
            counts("--contexts", args.contexts),
            args.repetitions,
            args.warmup,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.out.exists():
        parser.error(f"--out: {args.out} exists (never overwritten)")

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        path = resolve_model(args.model)
    except ConfigError as exc:
        parser.error(str(exc))
    prefill, forward = measure_llama_batches(path, args.threads, grid, args.clock, args.seed, say)
    latency, report = fit_batches(prefill, forward)
    result = {
        "model": str(args.model),
        "threads": args.threads,
        "clock": args.clock,
        "grid": asdict(grid),
        "forward": {k: v for k, v in latency.model_dump().items() if k.startswith("forward")},
        "report": {k: v for k, v in asdict(report).items() if isinstance(v, int | float | str)},
        "samples": [asdict(s) for s in forward],
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"forward": result["forward"], "report": result["report"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
