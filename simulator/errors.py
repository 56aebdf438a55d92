"""The one error type for bad input: it renders as a single line naming file, field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """Bad input in a scenario, profile, trace or command-line override."""

    def __init__(self, source: str | Path, field: str, problem: str) -> None:
        self.source, self.field, self.problem = str(source), field, problem
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        super().__init__(where + problem)


def _allowed_fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """Walk a pydantic model along `loc` (minus its last item) and list the fields found there."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or not isinstance(part, str) or part not in fields:
            return None
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def render_value(value: Any) -> str:
    """A short representation of an offending value for an error line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def from_validation_error(
    source: str | Path,
    error: ValidationError,
    model: type[BaseModel] | None = None,
    prefix: str = "",
) -> ConfigError:
    """Turn pydantic's first complaint into a ConfigError with a one-line message."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
    field = field.replace(".[", "[")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        allowed = _allowed_fields(model, loc)
        problem = "unknown field"
        if allowed:
            problem += f" (allowed: {', '.join(allowed)})"
        return ConfigError(source, field, problem)
    if first["type"] == "missing":
        return ConfigError(source, field, "required field is missing")
    got = first.get("input")
    return ConfigError(source, field, f"{message} (got {render_value(got)})")
