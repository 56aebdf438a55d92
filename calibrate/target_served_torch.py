"""Profile the testbed's torch target as the cloud server serves it (`--backend torch-served`).

`profile_torch_served_target` builds `realrun.cloud.torch_target.TorchTarget` with the settings the
server gives it (static KV cache of n_ctx + 65 positions, verification forwards padded to
fixed buckets; on CUDA each bucket compiled and replayed as a CUDA graph) and times it through
its session methods (`calibrate.served.time_served`). Why a second torch profiler: the plain
torch backend (`calibrate.target`) times eager transformers with a DynamicCache, which is what
the server's eager mode does but not its static/CUDA-graph mode (several times faster on a GPU
for a few tokens); a validation must be simulated with the latency of the code path that runs.

Batch 1 only (the server's TorchTarget verifies one session at a time), fitted by
`calibrate.target_llama.fit_single_sequence`. Energy: NVML on a GPU over windows of at least
`min_window_s` of back-to-back verifications per token count (its counter advances in steps
of tens of milliseconds), RAPL read around every verification on the CPU; absent meters leave
the energy fields None with the reason. Default grids: the llama.cpp profiler's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calibrate.fit_report import FitReport
from calibrate.served import resolve_clock, served_needs, time_served
from calibrate.target_llama import (
    DEFAULT_CONTEXT_LENGTHS,
    DEFAULT_PROMPT_LENGTHS,
    DEFAULT_TOKEN_COUNTS,
    fit_single_sequence,
)
from calibrate.target_results import TargetMeasurements
from calibrate.target_setup import (
    AUTO,
    SEED,
    _device_name,
    _open_meter,
    _served_grids,
    _shape_of,
)
from realrun.cloud.torch_target import TorchTarget
from simulator.profile import TargetLatency


@dataclass(frozen=True)
class ServedTorchMeasurements(TargetMeasurements):
    """`TargetMeasurements` of the server's TorchTarget: its mode, compilation and sizes."""

    mode: str = ""
    compile_mode: str | None = None
    compile_backend: str = ""
    n_ctx: int = 0
    max_verify: int = 0
    n_params: int = 0

    def fit(self) -> tuple[TargetLatency, dict[str, FitReport]]:
        return fit_single_sequence(self.prefill, self.forward)

    def setup(self) -> str:
        """The code path measured, in one phrase."""
        compiled = (
            f"compiled ({self.compile_backend}, {self.compile_mode})"
            if self.compile_mode
            else "not compiled"
        )
        return (
            f"realrun.cloud.torch_target.TorchTarget mode {self.mode}, {compiled}, n_ctx "
            f"{self.n_ctx}, max_verify {self.max_verify}"
        )

    def lines(self) -> list[str]:
        head = (
            f"{self.model_name} on {self.device} ({self.device_name}), {self.dtype}, "
            f"{self.setup()}, torch {self.torch_version}, transformers "
            f"{self.transformers_version}, {self.repetitions} repetitions after {self.warmup} "
            f"warm-up" + (f", {self.threads} CPU thread(s)" if self.device == "cpu" else "")
        )
        return [head, *super().lines()[1:]]


def profile_torch_served_target(
    model: Any,
    device: str = "cuda",
    dtype: str = "auto",
    mode: str = "static",
    compile_backend: str = "inductor",
    token_counts: Sequence[int] = DEFAULT_TOKEN_COUNTS,
    context_lengths: Sequence[int] = DEFAULT_CONTEXT_LENGTHS,
    prompt_lengths: Sequence[int] = DEFAULT_PROMPT_LENGTHS,
    repetitions: int = 5,
    warmup: int = 2,
    energy_meter: Any = AUTO,
    min_window_s: float = 1.0,
    idle_window_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
    n_ctx: int = 2048,
    threads: int | None = None,
    seed: int = SEED,
    clock: str = "wall",
) -> ServedTorchMeasurements:
    """Measure the server's TorchTarget (see the module docstring).

    `model`: what TorchTarget takes (a named shape, a Hugging Face folder, a GGUF file, or a
    built model). `n_ctx` must be the server's (`--n-ctx`, 2048 by default): the static cache's
    length sets the attention cost. Grids: distinct integers >= 1 (prompts >= 2); token counts
    at most 65 (the server's max_verify + 1). `clock` (`calibrate.served`): "wall" (default),
    "cpu" (CPU time, CPU only) or "auto" (cpu on a CPU with one torch
    thread, else wall). ValueError for anything out of range.
    """
    import torch  # optional (extra 'models'): loaded only when used
    import transformers  # optional (extra 'models'): loaded only when used

    tokens, contexts, prompts, repetitions, warmup = _served_grids(
        "profile_torch_served_target",
        token_counts,
        context_lengths,
        prompt_lengths,
        repetitions,
        warmup,
    )
    say = progress or (lambda _line: None)
    target = TorchTarget(
        model, device, dtype, mode, n_ctx=n_ctx, compile_backend=compile_backend, threads=threads
    )
    try:
        if max(tokens) > target.n_batch:
            raise ValueError(
                f"profile_torch_served_target: at most {target.n_batch} tokens per verification "
                f"(got {max(tokens)})"
            )
        on_gpu = target.device.type == "cuda"
        needed = served_needs(contexts, tokens, prompts, windows=on_gpu)
        if needed > target.n_ctx:
            raise ValueError(
                f"profile_torch_served_target: needs {needed} positions (largest context + "
                f"summed token counts, or largest prompt) but n_ctx is {target.n_ctx}; "
                "measure less"
            )
        meter, energy_reason = _open_meter(energy_meter, target.device)
        say(f"loaded {target.model_name} on {target.device} ({target.mode})")
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
            energy_window_s=min_window_s if on_gpu else None,
            clock=resolve_clock(clock, target.device.type, torch.get_num_threads()),
            threads=torch.get_num_threads(),
        )
        parameter = next(target.model.parameters())
        measured = ServedTorchMeasurements(
            device=target.device.type,
            device_name=_device_name(target.device),
            dtype=str(parameter.dtype).removeprefix("torch."),
            model_name=target.model_name,
            shape=_shape_of(target.model.config),
            **timed.measurement_fields(),
            torch_version=str(torch.__version__),
            transformers_version=str(transformers.__version__),
            repetitions=repetitions,
            warmup=warmup,
            threads=int(torch.get_num_threads()),
            energy_unavailable=None if meter is not None else energy_reason,
            min_window_s=float(min_window_s),
            mode=target.mode,
            compile_mode=target.compile_mode,
            compile_backend=compile_backend if target.compile_mode else "",
            n_ctx=target.n_ctx,
            max_verify=target.max_verify,
            n_params=sum(p.numel() for p in target.model.parameters()),
        )
        for line in measured.warnings():
            say(line)
        return measured
    finally:
        target.close()


__all__ = ["ServedTorchMeasurements", "profile_torch_served_target"]
