"""`measure_target`: the cloud target's part of a profile, with the backend the options name.

- torch (`calibrate.target`): eager transformers, batched, a named shape with random weights
  or a local Hugging Face folder, on cuda (default) or the CPU; energy from NVML where present.
- llama (`calibrate.target_llama`): the testbed server's llama.cpp target on the CPU, batch 1;
  with `--batch-sizes` above 1 the forward model is fitted on batched verification instead
  (`calibrate.target_batch`: the server's `verify_batch`).
- torch-served (`calibrate.target_served_torch`): the testbed server's TorchTarget (static
  cache, CUDA graphs on a GPU), batch 1.

Unset grids take the backend's defaults (`TORCH_TARGET_DEFAULTS`, or the llama profiler's for
both served backends). Measurement errors (a grid the model cannot hold, ...) become one-line
`ConfigError`s; option errors were raised when the `TargetOptions` was made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibrate.assemble import Part, new_part
from calibrate.fit_report import FitReport
from calibrate.options import TargetOptions
from calibrate.target import profile_target
from calibrate.target_batch import BatchGrid, fit_batches, measure_llama_batches
from calibrate.target_llama import (
    BATCH_NOTE,
    DEFAULT_CONTEXT_LENGTHS,
    DEFAULT_PROMPT_LENGTHS,
    DEFAULT_TOKEN_COUNTS,
    forward_mape_note,
    profile_llama_target,
)
from calibrate.target_results import TargetMeasurements, fit_measurements
from calibrate.target_served_torch import profile_torch_served_target
from models.registry import resolve_model
from models.shapes import SHAPES, build_random_model, get_shape
from simulator.errors import ConfigError
from simulator.profile import TargetLatency
from simulator.provenance import package_versions

TORCH_TARGET_DEFAULTS: dict[str, Any] = {
    "device": "cuda",
    "dtype": "bfloat16",
    "token_counts": (1, 2, 4, 8, 16, 32, 64),
    "batch_sizes": (1, 2, 4, 8, 16, 32),
    "context_lengths": (128, 512, 1024),
    "prompt_lengths": (64, 256, 1024),
}
"""Settings left unset, torch backend (the served backends: calibrate.target_llama's)."""

TORCH_VERSIONS = ("torch", "transformers", "nvidia-ml-py")
"""Packages a torch target part records."""

Say = Callable[[str], None]


def measure_target(options: TargetOptions, say: Say, command: str) -> Part:
    """Profile the target model with `options.backend`; GPU energy and idle power where a meter
    is present. Returns the target part (see the module docstring)."""
    if options.backend == "llama":
        return _llama_part(options, say, command)
    if options.backend == "torch-served":
        return _served_torch_part(options, say, command)
    return _torch_part(options, say, command)


def _grids(options: TargetOptions) -> tuple[list[int], list[int], list[int]]:
    """Token counts, contexts and prompts of a served backend (its defaults where unset)."""
    return (
        list(options.token_counts or DEFAULT_TOKEN_COUNTS),
        list(options.context_lengths or DEFAULT_CONTEXT_LENGTHS),
        list(options.prompt_lengths or DEFAULT_PROMPT_LENGTHS),
    )


def _torch_model(model: str | Path, dtype_name: str, device: str) -> tuple[Any, str]:
    """A local Hugging Face folder, or a named shape with random weights."""
    import torch  # optional (extra 'models'): loaded only when a torch target is measured

    dtype = getattr(torch, dtype_name)
    folder = Path(model)
    if folder.is_dir():
        from transformers import AutoModelForCausalLM  # optional, as torch

        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        return loaded.to(device).eval(), folder.name
    try:
        name = next(key for key, shape in SHAPES.items() if shape is get_shape(str(model)))
        return build_random_model(name, dtype, device), name
    except (ValueError, MemoryError) as exc:
        raise ConfigError("--model", "", str(exc)) from None


def _torch_part(options: TargetOptions, say: Say, command: str) -> Part:
    """Eager transformers, batched (`calibrate.target.profile_target`)."""
    settings = {
        key: getattr(options, key) if getattr(options, key) is not None else default
        for key, default in TORCH_TARGET_DEFAULTS.items()
    }
    device = settings["device"]
    if device.startswith("cuda"):
        import torch  # optional (extra 'models'): loaded only when a torch target is measured

        if not torch.cuda.is_available():
            raise ConfigError("--device", "cuda", "no CUDA device here (use --device cpu)")
    model, name = _torch_model(options.model, settings["dtype"], device)
    tokens, batches = list(settings["token_counts"]), list(settings["batch_sizes"])
    contexts = list(settings["context_lengths"])
    try:
        measured = profile_target(
            model,
            device,
            token_counts=tokens,
            batch_sizes=batches,
            context_lengths=contexts,
            prompt_lengths=list(settings["prompt_lengths"]),
            repetitions=options.repetitions,
            warmup=options.warmup,
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
            f"torch {measured.torch_version}), tokens {tokens}, batches {batches}, contexts "
            f"{contexts}, {options.repetitions} repetitions"
        ),
    }
    power, power_notes = measured.power_fields("energy over verification windows", "measured")
    values.update(power)
    notes.update(power_notes)
    samples = measured.sample_rows()
    versions = package_versions(TORCH_VERSIONS)
    return new_part("target", values, notes, reports, samples, versions, command)


def _llama_part(options: TargetOptions, say: Say, command: str) -> Part:
    """The testbed server's llama.cpp target on the CPU (`profile_llama_target`)."""
    path = resolve_model(str(options.model))
    tokens, contexts, prompts = _grids(options)
    assert options.threads is not None  # TargetOptions requires it for this backend
    try:
        measured = profile_llama_target(
            path,
            options.threads,
            tokens,
            contexts,
            prompts,
            options.repetitions,
            options.warmup,
            progress=say,
        )
        for line in measured.lines():
            say(line)
        latency, reports = measured.fit()
        batch_note = BATCH_NOTE
        batches = options.batch_sizes or (1,)
        if max(batches) > 1:  # batched verification, as the server batches (target_batch)
            grid = BatchGrid(batches, tuple(tokens), tuple(contexts), options.repetitions,
                             options.warmup)  # fmt: skip
            _, forward = measure_llama_batches(path, options.threads, grid, say=say)
            latency, reports["forward"] = fit_batches(measured.prefill, forward)
            batch_note = (f"forward fitted on batched verification (LlamaTarget.verify_batch, "
                          f"batch sizes {list(batches)}; calibrate/target_batch.py)")  # fmt: skip
    except ValueError as exc:
        raise ConfigError("calibrate target", "", str(exc)) from None
    how = (
        f"measured through realrun.cloud.llama_target.LlamaTarget (the testbed server's target: "
        f"llama.cpp, flash attention, KV kept, seq_rm rollback) on {measured.device_name}, "
        f"{measured.threads} thread(s), llama-cpp-python {measured.llama_cpp_version}, "
        f"{measured.model_description}, n_ctx {measured.n_ctx}; tokens verified {tokens}, "
        f"contexts {contexts}, prompts {prompts}, {options.repetitions} repetitions after "
        f"{options.warmup} warm-up"
    )
    return served_target_part(
        measured,
        latency,
        reports,
        path.name,
        how,
        ("CPU target during verification", "CPU target idle"),
        package_versions(["llama-cpp-python"]),
        command,
        {"target.llama_system_info": measured.system_info},
        batch_note,
    )


def _served_torch_part(options: TargetOptions, say: Say, command: str) -> Part:
    """The testbed server's TorchTarget (`profile_torch_served_target`); `device` defaults to
    cuda, `dtype` to the server's ("auto": bfloat16 on CUDA, float32 on the CPU)."""
    tokens, contexts, prompts = _grids(options)
    try:
        measured = profile_torch_served_target(
            str(options.model),
            options.device or "cuda",
            options.dtype or "auto",
            token_counts=tokens,
            context_lengths=contexts,
            prompt_lengths=prompts,
            repetitions=options.repetitions,
            warmup=options.warmup,
            progress=say,
            threads=options.threads,
        )
        for line in measured.lines():
            say(line)
        latency, reports = measured.fit()
    except ValueError as exc:
        raise ConfigError("calibrate target", "", str(exc)) from None
    how = (
        f"measured through {measured.setup()} (the testbed server's torch target) on "
        f"{measured.device_name} ({measured.device}, {measured.dtype}, torch "
        f"{measured.torch_version}); tokens verified {tokens}, contexts {contexts}, prompts "
        f"{prompts}, {options.repetitions} repetitions after {options.warmup} warm-up"
    )
    return served_target_part(
        measured,
        latency,
        reports,
        measured.model_name,
        how,
        ("energy over verification windows", "measured"),
        package_versions(TORCH_VERSIONS),
        command,
    )


def served_target_part(
    measured: TargetMeasurements,
    latency: TargetLatency,
    reports: dict[str, FitReport],
    model_name: str,
    how: str,
    power_labels: tuple[str, str],
    versions: dict[str, str],
    command: str,
    extra_notes: dict[str, str] | None = None,
    batch_note: str = BATCH_NOTE,
) -> Part:
    """The target part of a served-target profiler (llama.cpp or torch-served): the fitted
    batch-1 latency, the model, the power fields (`power_labels`: what busy and idle power
    measured), `how` it was measured (with the batch note and the forward fit's MAPE)."""
    values: dict[str, Any] = {
        "target_latency": latency.model_dump(),
        "models.target": {
            "name": model_name,
            "parameters_b": measured.n_params / 1e9,  # type: ignore[attr-defined]
            "quantisation": measured.dtype,
        },
    }
    notes = {
        "target_latency": f"{how}; {batch_note}; {forward_mape_note(reports['forward'])}",
        **(extra_notes or {}),
    }
    power, power_notes = measured.power_fields(*power_labels)
    values.update(power)
    notes.update(power_notes)
    return new_part("target", values, notes, reports, measured.sample_rows(), versions, command)


__all__ = ["TORCH_TARGET_DEFAULTS", "measure_target", "served_target_part"]
