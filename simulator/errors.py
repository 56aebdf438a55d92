"""The one error type for bad input: it renders as a single line naming file, field and value."""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """Bad input in a scenario, profile, trace or command-line override."""

    def __init__(self, source: str | Path, field: str, problem: str) -> None:
        self.source, self.field, self.problem = str(source), field, problem
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        super().__init__(where + problem)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        """Pickle by the three fields, so an error raised in a worker process reaches the
        parent as itself (Exception's default pickling passes one argument)."""
        return (ConfigError, (self.source, self.field, self.problem))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits (through Annotated, Optional and unions)."""
    if get_origin(annotation) is Annotated:
        return _models_in(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [model for arg in get_args(annotation) for model in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _tagged_member(
    members: list[type[BaseModel]], discriminator: str, tag: Any
) -> type[BaseModel] | None:
    """The member of a discriminated union whose `discriminator` literal is `tag`."""
    for member in members:
        info = member.model_fields.get(discriminator)
        if info is not None and tag in get_args(info.annotation):
            return member
    return None


def _walk(
    model: type[BaseModel] | None, loc: tuple[Any, ...]
) -> tuple[tuple[Any, ...], type[BaseModel] | None]:
    """Follow pydantic's `loc` through `model`.

    Returns the location without the tags pydantic inserts after a discriminated union (so it
    reads like the input file) and the model that holds its last item (None when lost).
    """
    kept: list[Any] = []
    current = model
    index = 0
    while index < len(loc):
        part = loc[index]
        kept.append(part)
        index += 1
        if index == len(loc):
            break
        fields = getattr(current, "model_fields", None)
        if not fields or not isinstance(part, str) or part not in fields:
            return (*kept, *loc[index:]), None
        info = fields[part]
        members = _models_in(info.annotation)
        if len(members) > 1 and isinstance(info.discriminator, str):
            current = _tagged_member(members, info.discriminator, loc[index])
            if current is None:
                return (*kept, *loc[index:]), None
            index += 1
        else:
            current = members[0] if len(members) == 1 else None
    return tuple(kept), current


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
    """Turn pydantic's first complaint into a ConfigError with a one-line message.

    An unknown field is reported before anything else: a misspelt key usually also leaves a
    required one missing, and the misspelling is the useful news.
    """
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, holder = _walk(model, tuple(first["loc"]))
    field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
    field = field.replace(".[", "[")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = sorted(holder.model_fields) if holder is not None else None
        problem = "unknown field"
        if allowed:
            problem += f" (allowed: {', '.join(allowed)})"
        return ConfigError(source, field, problem)
    if kind == "missing":
        return ConfigError(source, field, "required field is missing")
    ctx = first.get("ctx") or {}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = field + "." + ctx["discriminator"].strip("'")
        if kind == "union_tag_not_found":
            return ConfigError(source, field, "required field is missing")
        return ConfigError(
            source, field, f"unknown value {ctx['tag']!r} (allowed: {ctx['expected_tags']})"
        )
    message = str(ctx["error"]) if kind == "value_error" else first["msg"]
    got = first.get("input")
    if isinstance(got, dict):
        return ConfigError(source, field, message)
    return ConfigError(source, field, f"{message} (got {render_value(got)})")
