"""Profile the testbed's cloud target: a llama.cpp GGUF model on the CPU, evaluated as served.

`profile_llama_target` drives `realrun.cloud.llama_target.LlamaTarget` (the object the cloud
server holds: flash attention, KV cache kept between verifications, rollback with seq_rm)
through its public methods only (`calibrate.served.time_served`: prefill vs prompt length,
verification vs tokens verified and context, interleaved rounds after warm-up, unstable
configurations re-measured), so every time is the server's own measurement of its own calls.

Batch size is 1 here: one sequence per verification. Batched verification (the server's
`LlamaTarget.verify_batch`) is measured by `calibrate.target_batch` (`pipesd calibrate target
--backend llama --batch-sizes ...`). `fit_single_sequence` therefore fits the forward model
without the batch term (forward_per_extra_sequence_s = 0, not measured) with
`calibrate.fit.fit_target_parts`, as `fit_target_latency` does (that fitter needs 2+ batch sizes).

Energy: the CPU packages' RAPL counters (`realrun.cloud.energy.RaplMeter`) read around every kept
verification (RAPL updates about every millisecond, fine enough for one forward); they count
the whole package, other processes included. Without RAPL (e.g. no /sys/class/powercap) the
energy fields are None and say why.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibrate.assemble import machine_info
from calibrate.fit import fit_target_parts
from calibrate.fit_report import FitReport
from calibrate.samples import ForwardSample, PrefillSample
from calibrate.served import resolve_clock, served_needs, time_served
from calibrate.target_results import TargetMeasurements
from calibrate.target_setup import AUTO, SEED, _count, _open_meter, _served_grids
from models.registry import gguf_file_type
from realrun.cloud.llama_target import LlamaTarget
from simulator.profile import TargetLatency

DEFAULT_TOKEN_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16)
"""Tokens verified per forward (positions evaluated) measured by default."""

DEFAULT_CONTEXT_LENGTHS = (128, 256, 512, 1024)
"""Context lengths (KV positions before a verification) measured by default."""

DEFAULT_PROMPT_LENGTHS = (64, 256, 1024)
"""Prompt lengths prefilled by default."""

NOT_USED = "not used (llama.cpp backend)"
"""What the torch-only fields of TargetMeasurements hold for this backend."""

BATCH_NOTE = (
    "batch 1 only (the server verifies one sequence at a time): "
    "forward_per_extra_sequence_s not measured, set to 0"
)


# --------------------------------------------------------------------------------------------
# Results and fit
# --------------------------------------------------------------------------------------------


def fit_single_sequence(
    prefill: Sequence[PrefillSample], forward: Sequence[ForwardSample]
) -> tuple[TargetLatency, dict[str, FitReport]]:
    """The target latency model from batch-1 samples, and its reports ("prefill", "forward").

    As `fit_target_latency`, without the batch term: forward = forward_base_s +
    forward_per_token_s * new_positions + forward_per_context_token_s * context_len +
    forward_per_position_context_s * new_positions * context_len, and
    forward_per_extra_sequence_s = 0 (the forward report's method says so). ValueError if a
    forward sample has batch != 1 (use `fit_target_latency` then) or the fit is not identified.
    """
    latency, reports = fit_target_parts("fit_single_sequence", prefill, forward, batched=False)
    forward_report = reports["forward"]
    reports["forward"] = dataclasses.replace(
        forward_report, method=f"{forward_report.method}; {BATCH_NOTE}"
    )
    return latency, reports


FORWARD_MAPE_PREFIX = "held-out MAPE forward "
"""How the part's target_latency note ends: `forward_mape_note` (`calibrate refit` rewrites it)."""


def forward_mape_note(forward: FitReport) -> str:
    """The forward fit's held-out MAPE for the part's target_latency note: per configuration
    and per sample where both were measured, else per sample."""
    per_sample = f"{100 * forward.mape_holdout:.2f}%"
    if math.isnan(forward.mape_holdout_config):
        return f"{FORWARD_MAPE_PREFIX}{per_sample}"
    return (
        f"{FORWARD_MAPE_PREFIX}{100 * forward.mape_holdout_config:.2f}% per configuration "
        f"({per_sample} per sample)"
    )


@dataclass(frozen=True)
class LlamaTargetMeasurements(TargetMeasurements):
    """`TargetMeasurements` of the llama.cpp target (torch fields hold NOT_USED).

    `fit` is `fit_single_sequence` (batch 1 only); `model_description` is llama.cpp's
    description of the model (architecture, size, file type), `n_params` its parameter count.
    """

    llama_cpp_version: str = ""
    n_ctx: int = 0
    n_params: int = 0
    model_description: str = ""
    system_info: str = ""

    def fit(self) -> tuple[TargetLatency, dict[str, FitReport]]:
        return fit_single_sequence(self.prefill, self.forward)

    def lines(self) -> list[str]:
        head = (
            f"{self.model_name} ({self.model_description}) on {self.device_name}, llama.cpp "
            f"(llama-cpp-python {self.llama_cpp_version}) as "
            f"realrun.cloud.llama_target.LlamaTarget, "
            f"{self.threads} thread(s), n_ctx {self.n_ctx}, {self.repetitions} repetitions "
            f"after {self.warmup} warm-up"
        )
        return [head, *super().lines()[1:]]


# --------------------------------------------------------------------------------------------
# Profiler
# --------------------------------------------------------------------------------------------


def _shape_of(metadata: dict[str, str], n_vocab: int) -> dict[str, Any]:
    """The model's dimensions from its GGUF metadata (the keys `calibrate.target_setup` reports)."""
    arch = metadata.get("general.architecture", "")

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        return int(float(value)) if value is not None else None

    hidden, heads = number("embedding_length"), number("attention.head_count")
    head_dim = number("attention.key_length") or (hidden // heads if hidden and heads else None)
    return {
        "model_type": arch or None,
        "layers": number("block_count"),
        "hidden": hidden,
        "intermediate": number("feed_forward_length"),
        "heads": heads,
        "kv_heads": number("attention.head_count_kv"),
        "head_dim": head_dim,
        "vocab": n_vocab,
        "rope": {"freq_base": metadata.get(f"{arch}.rope.freq_base")},
    }


def _cpu_name() -> str:
    return machine_info()["cpu"]


def profile_llama_target(
    model_path: Path | str,
    threads: int,
    token_counts: Sequence[int] = DEFAULT_TOKEN_COUNTS,
    context_lengths: Sequence[int] = DEFAULT_CONTEXT_LENGTHS,
    prompt_lengths: Sequence[int] = DEFAULT_PROMPT_LENGTHS,
    repetitions: int = 5,
    warmup: int = 2,
    energy_meter: Any = AUTO,
    idle_window_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
    n_ctx: int | None = None,
    seed: int = SEED,
    clock: str = "wall",
) -> LlamaTargetMeasurements:
    """Measure the llama.cpp target's prefill and verification times (see module doc).

    `threads` >= 1 are llama.cpp's compute threads; grids are distinct integers >= 1 (prompt
    lengths >= 2: a one-token prompt prefills nothing). `n_ctx` defaults to LlamaTarget's (the
    server's) default; every context + the summed token counts and every prompt must fit it.
    `energy_meter`: "auto" (RAPL), None, a meter (`read_j()`, `name()`) or a callable making one.
    `progress`, if given, receives one line per round. `clock` (`calibrate.served`): "wall"
    (default: the server's own target_ms), "cpu" (CPU time: a busy
    machine's preemption is not counted) or "auto" (cpu with one thread, else wall). Needs
    llama-cpp-python.
    """
    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    threads = _count("threads", threads, 1)
    tokens, contexts, prompts, repetitions, warmup = _served_grids(
        "profile_llama_target", token_counts, context_lengths, prompt_lengths, repetitions, warmup
    )
    if not isinstance(idle_window_s, int | float) or not idle_window_s > 0:
        raise ValueError(f"profile_llama_target: idle_window_s must be > 0 (got {idle_window_s!r})")
    path = Path(model_path)
    say = progress or (lambda _line: None)
    options = {} if n_ctx is None else {"n_ctx": _count("n_ctx", n_ctx, 1)}
    target = LlamaTarget(path, threads, **options)
    try:
        needed = served_needs(contexts, tokens, prompts)
        train = int(target.llama._model.n_ctx_train())
        for limit, what in ((target.n_ctx, "n_ctx"), (train, "training context")):
            if 0 < limit < needed:
                raise ValueError(
                    f"profile_llama_target: needs {needed} positions (largest context + summed "
                    f"token counts, or largest prompt) but {what} is {limit}; measure less"
                )
        # calibrate.target_setup's meter choice: "auto" on a CPU device is RAPL
        meter, energy_reason = _open_meter(energy_meter, types.SimpleNamespace(type="cpu"))
        timed = time_served(
            target,
            tokens,
            contexts,
            prompts,
            repetitions,
            warmup,
            meter,
            energy_reason,
            say,
            seed,
            idle_window_s,
            clock=resolve_clock(clock, "cpu", threads),
            threads=threads,
        )
        description = str(target.llama._model.desc())
        measured = LlamaTargetMeasurements(
            device="cpu",
            device_name=_cpu_name(),
            dtype=gguf_file_type(target.llama),
            model_name=path.name,
            shape=_shape_of(dict(target.llama.metadata), target.n_vocab),
            **timed.measurement_fields(),
            torch_version=NOT_USED,
            transformers_version=NOT_USED,
            repetitions=repetitions,
            warmup=warmup,
            threads=threads,
            energy_unavailable=None if meter is not None else energy_reason,
            llama_cpp_version=str(llama_cpp.__version__),
            n_ctx=target.n_ctx,
            n_params=int(target.llama._model.n_params()),
            model_description=description,
            system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        )
        for line in measured.warnings():
            say(line)
        return measured
    finally:
        target.close()
