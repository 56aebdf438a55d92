"""Measure a same-tokenizer draft/target pair: greedy acceptance and relative decode speed.

`measure_pair` runs the acceptance recorder (`calibrate.acceptance.record_acceptance`, greedy
verification, llama.cpp) on the given prompts and times one-token decode steps of both models
(`decode_speeds`), alternating draft and target step by step so that the machine's drift hits
both alike. The
figures: the position acceptance rate (P(accept) of a draft token on the correct prefix, what
the simulator's streams model), the rate over all drafted tokens, the mean accepted per round,
and the draft's decode time per token relative to the target's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.acceptance import record_acceptance
from models.prompts import format_prompt

DECODE_PROMPT = "Write a Python function that returns the n-th Fibonacci number."
"""The prompt decoded when timing (formatted through the chat template, then 96 steps)."""


def _step_s(llama: Any) -> float:
    """Seconds of one greedy single-token decode step of a loaded model."""
    token = int(np.argmax(llama.scores[llama.n_tokens - 1]))
    began = time.perf_counter()
    llama.eval([token])
    return time.perf_counter() - began


def decode_speeds(draft: Path, target: Path, threads: int, steps: int = 96) -> tuple[float, float]:
    """(draft ms/token, target ms/token): medians of `steps` single-token decode steps after
    the same prompt, draft and target alternating step by step (so that a change of the
    machine's load within the measurement hits both alike)."""
    # llama_cpp is heavy and optional: imported only when a pair is measured.
    import llama_cpp

    loaded = [
        llama_cpp.Llama(
            model_path=str(path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=256,
            logits_all=True,
            flash_attn=True,
            verbose=False,
        )
        for path in (draft, target)
    ]
    try:
        prompt = format_prompt(loaded[1], DECODE_PROMPT)
        for llama in loaded:
            llama.eval(prompt)
        timings: list[list[float]] = [[], []]
        for _ in range(steps):
            for i, llama in enumerate(loaded):
                timings[i].append(_step_s(llama))
        return 1e3 * statistics.median(timings[0]), 1e3 * statistics.median(timings[1])
    finally:
        for llama in loaded:
            llama.close()


def measure_pair(
    draft: Path,
    target: Path,
    prompts: Sequence[str],
    max_new_tokens: int,
    threads: int,
    draft_len: int = 4,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Acceptance and speed of one pair (module docstring), as a flat dict of figures; speed
    only when `prompts` is empty."""
    draft_ms, target_ms = decode_speeds(draft, target, threads)
    speed = {
        "draft_ms_per_token": draft_ms,
        "target_ms_per_token": target_ms,
        "draft_time_ratio": draft_ms / target_ms,
    }
    if not prompts:
        return speed
    rec = record_acceptance(
        draft,
        target,
        prompts,
        max_new_tokens,
        draft_len,
        threads=threads,
        top_k=0,
        progress=progress,
    )
    return {
        "position_acceptance": rec.position_acceptance_rate,
        "drafted_acceptance": rec.acceptance_rate,
        "mean_accepted_per_round": rec.mean_accepted_per_round,
        "positions": len(rec.positions),
        **speed,
        "seconds": rec.seconds,
    }


__all__ = ["decode_speeds", "measure_pair"]
