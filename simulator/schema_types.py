"""The schema's base: strict immutable parts and the bounded numbers every part uses."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for schema parts: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_MAGNITUDE = 1e12
"""Upper bound of every profile number without a tighter physical one: large enough for any
real coefficient, small enough that sums and products of them stay finite."""

NonNeg = Annotated[float, Field(ge=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

__all__ = ["MAX_MAGNITUDE", "Finite", "NonNeg", "Positive", "Strict"]
