"""Validated parameter sets for policies: one pydantic model per policy, unknown keys refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PolicyParams(BaseModel):
    """Base of every policy's parameters: frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
