"""Raw calibration measurements: one small, validated, immutable record per measured event.

Each sample checks its fields at construction (ValueError naming the field) and converts to and
from a CSV row (`to_row` / `from_row`), so profilers can store what they measured and the fitters
(`calibrate.fit`) can be re-run on the stored data. `write_csv` / `read_csv` do whole files.

Integer fields accept Python or NumPy integers and integral floats (stored as int); booleans are
refused there (a `True` prompt length is a bug). Times are seconds, finite and >= 0.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np

ACCEPTED_TEXT = {
    "1": True,
    "true": True,
    "True": True,
    "0": False,
    "false": False,
    "False": False,
}
"""How an `accepted` cell may spell its verdict (as in the simulator's replay traces)."""


def _integer(cls_name: str, name: str, value: Any, minimum: int) -> int:
    """`value` as an int >= minimum, or ValueError naming the field."""
    integral = isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value)
    )
    if isinstance(value, bool | np.bool_) or not integral:
        raise ValueError(f"{cls_name}.{name} must be an integer >= {minimum} (got {value!r})")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{cls_name}.{name} must be an integer >= {minimum} (got {number})")
    return number


def _real(cls_name: str, name: str, value: Any, low: float, high: float = math.inf) -> float:
    """`value` as a finite float in [low, high], or ValueError naming the field."""
    allowed = f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{cls_name}.{name} must be a finite number {allowed} (got {value!r})")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{cls_name}.{name} must be a finite number {allowed} (got {number!r})")
    return number


def _boolean(cls_name: str, name: str, value: Any) -> bool:
    """`value` as a bool (bool, NumPy bool, or the integers 0 and 1)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(f"{cls_name}.{name} must be a bool (or 0/1) (got {value!r})")


def _cell(cls_name: str, row: Mapping[str, Any], name: str) -> Any:
    """The value of column `name`, parsed from text where it is text."""
    if name not in row:
        raise ValueError(f"{cls_name} row has no {name!r} column (columns: {sorted(row)})")
    value = row[name]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name == "accepted":
        if text not in ACCEPTED_TEXT:
            allowed = ", ".join(ACCEPTED_TEXT)
            raise ValueError(f"{cls_name}.accepted must be one of {allowed} (got {value!r})")
        return ACCEPTED_TEXT[text]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{cls_name}.{name}: cannot read {value!r} as a number") from None


def _text(value: Any) -> str:
    """A cell's text: exact (repr) for floats, 1/0 for booleans."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


class _Row:
    """Row conversion shared by the sample classes (fields in declaration order)."""

    __slots__ = ()

    @classmethod
    def _columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_row(self) -> dict[str, str]:
        """The sample as a CSV row: column name -> exact text (floats via repr)."""
        return {name: _text(getattr(self, name)) for name in self._columns()}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build a sample from a row (text or numbers); extra columns are ignored."""
        values = {name: _cell(cls.__name__, row, name) for name in cls._columns()}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class PrefillSample(_Row):
    """One prefill of a `prompt_len`-token prompt that took `seconds`."""

    prompt_len: int
    seconds: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "prompt_len", _integer(name, "prompt_len", self.prompt_len, 0))
        object.__setattr__(self, "seconds", _real(name, "seconds", self.seconds, 0.0))


@dataclass(frozen=True, slots=True)
class DecodeSample(_Row):
    """One drafted token with `context_len` tokens already in context, taking `seconds`."""

    context_len: int
    seconds: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "context_len", _integer(name, "context_len", self.context_len, 0))
        object.__setattr__(self, "seconds", _real(name, "seconds", self.seconds, 0.0))


@dataclass(frozen=True, slots=True)
class ForwardSample(_Row):
    """One target forward pass over `batch` sequences, taking `seconds`.

    `new_positions` and `context_len` are summed over the batch, as `TargetLatency.forward_s`
    takes them; every sequence has at least one new position, so new_positions >= batch.
    """

    new_positions: int
    context_len: int
    batch: int
    seconds: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        batch = _integer(name, "batch", self.batch, 1)
        positions = _integer(name, "new_positions", self.new_positions, 1)
        if positions < batch:
            raise ValueError(
                f"{name}.new_positions must be >= batch ({batch}): it is summed over the batch "
                f"and each sequence has at least one new position (got {positions})"
            )
        object.__setattr__(self, "batch", batch)
        object.__setattr__(self, "new_positions", positions)
        object.__setattr__(self, "context_len", _integer(name, "context_len", self.context_len, 0))
        object.__setattr__(self, "seconds", _real(name, "seconds", self.seconds, 0.0))


@dataclass(frozen=True, slots=True)
class TransferSample(_Row):
    """One message of `n_bytes` bytes that took `seconds` to cross the link."""

    n_bytes: int
    seconds: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "n_bytes", _integer(name, "n_bytes", self.n_bytes, 0))
        object.__setattr__(self, "seconds", _real(name, "seconds", self.seconds, 0.0))


@dataclass(frozen=True, slots=True)
class AcceptanceSample(_Row):
    """One draft token: its top-1 probability `confidence` and whether the target `accepted` it.

    `from_row` reads the simulator's replay traces too (their extra columns are ignored).
    """

    confidence: float
    accepted: bool

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "confidence", _real(name, "confidence", self.confidence, 0.0, 1.0))
        object.__setattr__(self, "accepted", _boolean(name, "accepted", self.accepted))


Sample = PrefillSample | DecodeSample | ForwardSample | TransferSample | AcceptanceSample
S = TypeVar("S", PrefillSample, DecodeSample, ForwardSample, TransferSample, AcceptanceSample)


def write_csv(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write samples of one kind to a CSV file with a header; returns the number written."""
    items = list(samples)
    kinds = {type(s) for s in items}
    if len(kinds) > 1:
        names = sorted(k.__name__ for k in kinds)
        raise ValueError(f"write_csv: samples must be of one kind (got {', '.join(names)})")
    if not items:
        raise ValueError("write_csv: no samples to write")
    columns = items[0]._columns()
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(s.to_row() for s in items)
    return len(items)


def read_csv(path: str | Path, kind: type[S]) -> list[S]:
    """Read a CSV file of `kind` samples; a bad row raises ValueError naming its line."""
    samples: list[S] = []
    with Path(path).open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                samples.append(kind.from_row(row))
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
    return samples
