"""Reading input files defensively: regular files only, bounded in size and nesting, finite.

Scenario (TOML), profile and part (JSON) files and CSV traces pass through here before any
schema sees them, so a FIFO or /dev/zero given as a file, a multi-gigabyte file, a document
nested thousands of levels deep or a NaN hidden in a list is one ConfigError line naming the
file and the field, never a hang, a memory blow-up or a RecursionError.
"""

from __future__ import annotations

import csv
import json
import math
import os
import stat
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError

MAX_INPUT_BYTES = 64 * 1024 * 1024
"""Largest scenario, profile or part file read (the shipped ones are kilobytes)."""
MAX_TRACE_BYTES = 256 * 1024 * 1024
"""Largest CSV trace read (bandwidth or acceptance replay)."""
MAX_DEPTH = 32
"""Deepest nesting of tables and lists accepted (the schemas need fewer than 8 levels)."""


def check_regular(path: Path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> None:
    """Refuse `path` unless it is a regular file of at most `max_bytes` (checked with `stat`
    before opening, so a FIFO or device is refused instead of blocking or streaming)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read {what} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(path, "", f"cannot read {what}: not a regular file")
    if info.st_size > max_bytes:
        raise ConfigError(path, "", f"{what} larger than {max_bytes} bytes ({info.st_size})")


def read_regular(path: Path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `max_bytes`."""
    check_regular(path, what, max_bytes)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read {what} ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise ConfigError(path, "", f"{what} larger than {max_bytes} bytes")
    return data


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as plain data, checked by `check_data`."""
    raw = read_regular(path, what)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(path, "", f"nested more than {MAX_DEPTH} levels deep") from None
    check_data(data, path)
    return data


def load_json(path: Path, what: str, finite: bool = True) -> tuple[Any, bytes]:
    """A JSON file as plain data (checked by `check_data`; `finite=False` lets NaN and
    infinities through, for files whose recorded samples may hold them) and its bytes."""
    raw = read_regular(path, what)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(path, "", f"nested more than {MAX_DEPTH} levels deep") from None
    check_data(data, path, finite=finite)
    return data, raw


def check_data(data: Any, source: str | Path, prefix: str = "", finite: bool = True) -> None:
    """Refuse nesting deeper than MAX_DEPTH and (with `finite`) non-finite numbers anywhere in
    `data`, naming the dotted field; iterative, so no depth makes it recurse."""
    stack: list[tuple[Any, str, int]] = [(data, prefix, 0)]
    while stack:
        value, where, depth = stack.pop()
        if finite and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(source, where, f"must be a finite number (got {value})")
        if isinstance(value, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ConfigError(source, where, f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(value, dict):
                items = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
            else:
                items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            stack.extend((v, w, depth + 1) for w, v in reversed(items))


MAX_TRACE_S = 1e9
"""The longest time a step-function trace may name (s)."""


@contextmanager
def csv_input(path: Path, what: str) -> Iterator[csv.DictReader[str]]:
    """A CSV input file's rows (a regular file of bounded size): a file that cannot be read or
    is no CSV text is a one-line ConfigError naming it, however far the reading got."""
    check_regular(path, what, MAX_TRACE_BYTES)
    try:
        with path.open(newline="") as handle:
            yield csv.DictReader(handle)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read {what} ({exc.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(path, "", f"not a CSV text file ({exc})") from None


def read_step_trace(
    path: Path, what: str, column: str, low: float, high: float
) -> tuple[list[float], list[float]]:
    """Read a step-function trace CSV with columns t_s and `column` (a header row is required):
    times finite, from 0 and increasing strictly, values finite in [low, high]; anything else
    is a one-line ConfigError naming the file (`what` says which trace) and the line."""
    times: list[float] = []
    values: list[float] = []
    with csv_input(path, what) as reader:
        if not {"t_s", column} <= set(reader.fieldnames or []):
            raise ConfigError(path, "header", f"{what} needs columns t_s, {column}")
        for line, row in enumerate(reader, start=2):
            try:
                t, value = float(row["t_s"]), float(row[column])
            except (TypeError, ValueError):
                problem = f"t_s and {column} must be numbers"
                raise ConfigError(path, f"line {line}", problem) from None
            if not (math.isfinite(t) and abs(t) <= MAX_TRACE_S):
                problem = f"t_s must be finite and at most {MAX_TRACE_S:g} (got {t})"
                raise ConfigError(path, f"line {line}", problem)
            if not (math.isfinite(value) and low <= value <= high):
                problem = f"{column} must be in [{low:g}, {high:g}] (got {value})"
                raise ConfigError(path, f"line {line}", problem)
            if times and t <= times[-1]:
                raise ConfigError(path, f"line {line}", "t_s must increase strictly")
            times.append(t)
            values.append(value)
    if not times:
        raise ConfigError(path, "", f"{what} holds no rows")
    if times[0] != 0.0:
        raise ConfigError(path, "line 2", f"the first t_s must be 0 (got {times[0]})")
    return times, values


def read_samples(path: Path, what: str, column: str, low: float, high: float) -> list[float]:
    """Read a CSV column of samples (a header row naming `column` is required; other columns
    are ignored): each finite in [low, high], at least one; anything else is a one-line
    ConfigError naming the file (`what` says which samples) and the line."""
    values: list[float] = []
    with csv_input(path, what) as reader:
        if column not in (reader.fieldnames or []):
            raise ConfigError(path, "header", f"{what} needs a column {column}")
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                raise ConfigError(path, f"line {line}", f"{column} must be a number") from None
            if not (math.isfinite(value) and low <= value <= high):
                problem = f"{column} must be in [{low:g}, {high:g}] (got {value})"
                raise ConfigError(path, f"line {line}", problem)
            values.append(value)
    if not values:
        raise ConfigError(path, "", f"{what} holds no rows")
    return values
