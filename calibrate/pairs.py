"""Measure a same-tokenizer draft/target pair: greedy acceptance and relative decode speed.

`measure_pair` runs the acceptance recorder (`calibrate.acceptance.record_acceptance`, greedy
verification, llama.cpp) on the given prompts and times one-token decode steps of both models
(`decode_ms`), alternating draft and target so that the machine's drift hits both alike. The
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
"""The prompt decoded when timing (formatted through the chat template, then 32 steps)."""


def decode_ms(llama: Any, prompt: list[int], steps: int) -> float:
    """Median milliseconds of one single-token decode step after `prompt` (greedy)."""
    llama.reset()
    llama._ctx.kv_cache_clear()
    llama.eval(prompt)
    times = []
    for _ in range(steps):
        token = int(np.argmax(llama.scores[llama.n_tokens - 1]))
        began = time.perf_counter()
        llama.eval([token])
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def decode_speeds(
    draft: Path, target: Path, threads: int, steps: int = 32, rounds: int = 3
) -> tuple[float, float]:
    """(draft ms/token, target ms/token): medians over `rounds` alternating timings."""
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
        timings: list[list[float]] = [[], []]
        for _ in range(rounds):
            for i, llama in enumerate(loaded):
                timings[i].append(decode_ms(llama, prompt, steps))
        return statistics.median(timings[0]), statistics.median(timings[1])
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
    """Acceptance and speed of one pair (module docstring), as a flat dict of figures."""
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
    draft_ms, target_ms = decode_speeds(draft, target, threads)
    return {
        "position_acceptance": rec.position_acceptance_rate,
        "drafted_acceptance": rec.acceptance_rate,
        "mean_accepted_per_round": rec.mean_accepted_per_round,
        "positions": len(rec.positions),
        "draft_ms_per_token": draft_ms,
        "target_ms_per_token": target_ms,
        "draft_time_ratio": draft_ms / target_ms,
        "seconds": rec.seconds,
    }


__all__ = ["decode_ms", "decode_speeds", "measure_pair"]
