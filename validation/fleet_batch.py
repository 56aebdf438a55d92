"""The batch term of a many-edge validation's recalibration: batched verification timed now.

A fleet's cloud verifies NAVs of several edges in one forward, and every shipped profile sets
the cost of an extra sequence (`forward_per_extra_sequence_s`) to 0. After `--recalibrate` has
re-measured the draft and the target (validation.recalibrate), `add_batch_term` times the
target's batched verification through the server's own call (calibrate.target_batch: batch
sizes 1..the scenario's `max_batch` x tokens x contexts) and writes the fit's forward terms
(base, per token, per context token, per extra sequence, attention) into the recalibrated
profile; its prefill stays the single-sequence calibration's. A torch target is not timed here
(the profile keeps its forward terms, and the manifest says so).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from calibrate.assemble import write_profile
from calibrate.target_batch import BatchGrid, fit_batches, measure_llama_batches
from realrun.local import batch_rule
from simulator.profile import Profile, load_profile
from simulator.scenario import SweepPoint

BATCH_TOKENS = (1, 2, 4, 6)
"""Tokens verified per sequence (drafts + 1: the testbed's policies draft up to ~5)."""
BATCH_CONTEXTS = (48, 96)
"""Contexts (tokens): the CPU testbed's prompts (~40 tokens formatted) and their outputs."""
REPETITIONS = 3
WARMUP = 1


def batch_grid(points: Sequence[SweepPoint]) -> BatchGrid:
    """Batch sizes 1..the largest `max_batch` of the points (at least 2), BATCH_TOKENS x
    BATCH_CONTEXTS, REPETITIONS rounds after WARMUP."""
    largest = max(2, *(batch_rule(point).max_batch for point in points))
    sizes = tuple(range(1, largest + 1))
    return BatchGrid(sizes, BATCH_TOKENS, BATCH_CONTEXTS, REPETITIONS, WARMUP)


def add_batch_term(
    profile_path: Path,
    target: Path,
    threads: int,
    grid: BatchGrid,
    say: Callable[[str], None],
    command: str,
) -> dict[str, Any]:
    """Time `target`'s batched verification over `grid` with `threads`, write the fitted
    forward terms into the profile at `profile_path` (in place) and the samples beside it
    (batch.json); the manifest's record of it."""
    prefill, forward = measure_llama_batches(target, threads, grid, say=say)
    latency, report = fit_batches(prefill, forward)
    terms = {k: v for k, v in latency.model_dump().items() if k.startswith("forward")}
    base = load_profile(profile_path)
    data = base.profile.model_dump(mode="json")
    data["target_latency"].update(terms)
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    scores = {k: v for k, v in asdict(report).items() if isinstance(v, int | float | str)}
    scores = {k: v for k, v in scores.items() if not (isinstance(v, float) and math.isnan(v))}
    data["provenance"]["notes"]["target_latency.batch"] = (
        f"forward terms re-fitted at {created} from batched verification (calibrate."
        f"target_batch: batch sizes {list(grid.batch_sizes)}, tokens {list(grid.token_counts)}"
        f", contexts {list(grid.contexts)}, {grid.repetitions} rounds after {grid.warmup}; "
        f"held-out error {100 * report.mape_holdout:.1f}%) for {command}; prefill from the "
        "single-sequence calibration"
    )
    write_profile(Profile.model_validate(data), profile_path)
    record = {"grid": asdict(grid), "forward": terms, "report": scores,
              "samples": [asdict(sample) for sample in forward]}  # fmt: skip
    (profile_path.parent / "batch.json").write_text(json.dumps(record, indent=1) + "\n")
    return {key: record[key] for key in ("grid", "forward", "report")}


__all__ = ["add_batch_term", "batch_grid"]
