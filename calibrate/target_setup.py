"""What every target profiler checks and describes before it times: grids, meter, device, shape.

The torch, llama.cpp and torch-served profilers take the same grids and energy-meter argument
and report the device and the model's dimensions alike; one copy of those rules keeps their
messages and part files the same.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from realrun.cloud.energy import (
    EnergyMeter,
    NvmlEnergyMeter,
    PowerUnavailable,
    RaplMeter,
    nvml_index_for_cuda,
)

AUTO = "auto"
"""`energy_meter` default: NVML on a cuda device, RAPL on the CPU (each if available)."""

SEED = 1234
"""Seed of the random token ids."""


def _count(name: str, value: Any, minimum: int) -> int:
    """`value` as an int >= `minimum` (ValueError naming `name` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"profile_target: {name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _grid(name: str, values: Any) -> tuple[int, ...]:
    """`values` as a non-empty tuple of distinct integers >= 1 (ValueError naming `name`)."""
    try:
        items = tuple(values)
    except TypeError:
        raise ValueError(f"profile_target: {name} must be a sequence of integers") from None
    if not items:
        raise ValueError(f"profile_target: {name} must not be empty")
    checked = tuple(_count(f"each of {name}", v, 1) for v in items)
    if len(set(checked)) != len(checked):
        raise ValueError(f"profile_target: {name} has repeated values ({list(checked)})")
    return checked


def _served_grids(
    caller: str,
    token_counts: Any,
    context_lengths: Any,
    prompt_lengths: Any,
    repetitions: Any,
    warmup: Any,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int, int]:
    """(tokens, contexts, prompts, repetitions, warmup) of a profiler timing a target through
    its server methods, checked: prompts must be >= 2 (the server prefills all but the last
    prompt token), messages name `caller`."""
    tokens = _grid("token_counts", token_counts)
    contexts = _grid("context_lengths", context_lengths)
    prompts = _grid("prompt_lengths", prompt_lengths)
    if min(prompts) < 2:
        raise ValueError(
            f"{caller}: prompt lengths must be >= 2 (the server prefills all but the last "
            f"prompt token; got {min(prompts)})"
        )
    return (
        tokens,
        contexts,
        prompts,
        _count("repetitions", repetitions, 1),
        _count("warmup", warmup, 0),
    )


def _device_name(device: Any) -> str:
    import torch  # optional (extra 'models'): loaded only when used

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _shape_of(config: Any) -> dict[str, Any]:
    """The model's dimensions from its transformers config."""
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    shape = {
        "model_type": getattr(config, "model_type", None),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden": hidden,
        "intermediate": getattr(config, "intermediate_size", None),
        "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None),
        "head_dim": head_dim,
        "vocab": getattr(config, "vocab_size", None),
        "rope": dict(rope) if isinstance(rope, dict) else rope,
        "tie_word_embeddings": getattr(config, "tie_word_embeddings", None),
    }
    note = getattr(config, "pipesd_architecture_note", None)
    if note:
        shape["note"] = note
    return shape


def _open_meter(energy_meter: Any, device: Any) -> tuple[EnergyMeter | None, str | None]:
    """(meter, None) or (None, why there is none)."""
    if energy_meter is False or energy_meter is None:
        return None, "energy measurement switched off (energy_meter=None)"
    try:
        if energy_meter == AUTO:
            if device.type == "cuda":
                return NvmlEnergyMeter(nvml_index_for_cuda(device.index or 0)), None
            return RaplMeter(), None
        if isinstance(energy_meter, type) or (
            callable(energy_meter) and not hasattr(energy_meter, "read_j")
        ):
            return energy_meter(), None
    except PowerUnavailable as exc:
        return None, str(exc)
    if not hasattr(energy_meter, "read_j"):
        raise ValueError(
            f"profile_target: energy_meter must be 'auto', None, a meter with read_j(), or a "
            f"callable making one (got {energy_meter!r})"
        )
    return energy_meter, None


__all__ = ["AUTO", "SEED"]
