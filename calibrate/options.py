"""What each calibration measurement takes: typed options, checked when they are made.

One frozen dataclass per measurement (`DraftOptions` for `calibrate.measure.measure_draft`, ...).
The command line (`calibrate.cli`) only parses flags into these; a library caller (e.g.
`validation.recalibrate`) builds them directly. A bad value raises `ConfigError` at
construction, one line naming the field as its command-line flag (`--threads`), the value and
what is allowed, so the CLI and a library caller get the same message. Grids are stored as
tuples of positive integers (the profilers check what they need beyond that); `None` in a
target field means "the backend's default" (`calibrate.measure_target`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError

TARGET_BACKENDS = ("torch", "torch-served", "llama")
"""torch: eager transformers, batched; torch-served: the testbed server's TorchTarget;
llama: its llama.cpp target."""

DEVICE_PATTERN = r"cpu|cuda(:\d+)?"
"""A torch device: cpu, cuda or cuda:N."""

DTYPES = ("bfloat16", "float16", "float32")
SHAPINGS = ("tbf", "software")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bad(name: str, value: Any, problem: str) -> ConfigError:
    shown = ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
    return ConfigError(_flag(name), shown, problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise _bad(name, value, f"must be an integer >= {minimum}")


def _check_number(name: str, value: Any, minimum: float, strict: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise _bad(name, value, f"must be a number {'>' if strict else '>='} {minimum:g}")


def _grid(name: str, values: Sequence[int] | None, minimum: int = 1) -> tuple[int, ...] | None:
    """A grid as a tuple (None stays None); ConfigError for an empty one or a bad entry."""
    if values is None:
        return None
    grid = tuple(values)
    if not grid or not all(_is_int(v) and v >= minimum for v in grid):
        raise _bad(name, grid, f"must be a non-empty list of integers >= {minimum}")
    return grid


def _freeze_grids(options: Any, names: Sequence[str]) -> None:
    """Store the named grid fields as checked tuples (frozen dataclass: object.__setattr__)."""
    for name in names:
        object.__setattr__(options, name, _grid(name, getattr(options, name)))


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise _bad(name, value, f"allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class DraftOptions:
    """`measure_draft`: the edge draft model (GGUF or a shipped name) with llama.cpp."""

    model: str | Path
    threads: int
    prompt_lengths: tuple[int, ...] = (32, 128, 512)
    context_lengths: tuple[int, ...] = (64, 256, 1024)
    repetitions: int = 5
    warmup: int = 2
    burst: int = 0
    """Decode steps per burst, `pause_ms` idle between bursts (0: back to back)."""
    pause_ms: float = 0.0

    def __post_init__(self) -> None:
        _check_int("threads", self.threads, 1)
        _freeze_grids(self, ("prompt_lengths", "context_lengths"))
        _check_int("repetitions", self.repetitions, 1)
        _check_int("warmup", self.warmup, 0)
        _check_int("burst", self.burst, 0)
        _check_number("pause_ms", self.pause_ms, 0.0, strict=False)


@dataclass(frozen=True)
class TargetOptions:
    """`measure_target`: the cloud target with one of `TARGET_BACKENDS`.

    torch: a named shape (models/shapes.py) or a Hugging Face folder, batched, on `device`
    (default cuda); no `threads`. llama: a GGUF or a shipped name on the CPU, `threads`
    required, batch 1 only, no `dtype`. torch-served: what the server's TorchTarget loads,
    batch 1 only, `threads` optional. Unset grids take the backend's defaults.
    """

    model: str | Path
    backend: str = "torch"
    threads: int | None = None
    device: str | None = None
    dtype: str | None = None
    token_counts: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    context_lengths: tuple[int, ...] | None = None
    prompt_lengths: tuple[int, ...] | None = None
    repetitions: int = 5
    warmup: int = 2

    def __post_init__(self) -> None:
        _choice("backend", self.backend, TARGET_BACKENDS)
        _freeze_grids(self, ("token_counts", "batch_sizes", "context_lengths", "prompt_lengths"))
        _check_int("repetitions", self.repetitions, 1)
        _check_int("warmup", self.warmup, 0)
        if self.device is not None and not re.fullmatch(DEVICE_PATTERN, str(self.device)):
            raise _bad("device", self.device, "allowed: cpu, cuda, cuda:N")
        if self.dtype is not None:
            _choice("dtype", self.dtype, DTYPES)
        if self.backend == "torch" and self.threads is not None:
            raise _bad("threads", self.threads, "only for --backend llama (torch sets its own)")
        if self.backend == "llama" and self.threads is None:
            raise ConfigError("--threads", "", "required with --backend llama (llama.cpp threads)")
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        if self.backend == "torch-served" and self.batch_sizes not in (None, (1,)):
            raise _bad(
                "batch_sizes",
                self.batch_sizes,
                f"--backend {self.backend} verifies one sequence at a time: allowed 1",
            )
        if self.backend == "llama" and self.device not in (None, "cpu"):
            raise _bad("device", self.device, "--backend llama runs on the CPU: allowed cpu")
        if self.backend == "llama" and self.dtype is not None:
            raise _bad("dtype", self.dtype, "not for --backend llama (the GGUF sets it)")


@dataclass(frozen=True)
class PowerOptions:
    """`measure_power`: the edge CPU package's busy and idle power (`calibrate.power`)."""

    package_watts: float | None = None
    """The package's rated power, used with measured utilisation where RAPL is absent."""
    seconds: float = 2.0
    threads: int | None = None
    """Busy threads while measuring (None: every CPU this process may use)."""

    def __post_init__(self) -> None:
        if self.package_watts is not None:
            _check_number("package_watts", self.package_watts, 0.0, strict=True)
        _check_number("seconds", self.seconds, 0.0, strict=True)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)


@dataclass(frozen=True)
class LinkOptions:
    """`measure_link`: a running server's link (`server`), or the testbed's own shaped path
    to a server started behind it (`testbed`: a scenario file; exactly one of the two)."""

    server: str | None = None
    testbed: Path | None = None
    model: str | Path = "smollm2-135m"
    testbed_mbps: float = 1000.0
    testbed_shaping: str = "tbf"
    token: str | None = None
    sizes: tuple[int, ...] = (1024, 65536, 262144, 1048576, 4000000)
    repetitions: int = 10
    emulated_latency_s: float | None = None

    def __post_init__(self) -> None:
        if (self.server is None) == (self.testbed is None):
            raise ConfigError("calibrate link", "", "give exactly one of --server and --testbed")
        _check_number("testbed_mbps", self.testbed_mbps, 0.0, strict=True)
        _choice("testbed_shaping", self.testbed_shaping, SHAPINGS)
        _freeze_grids(self, ("sizes",))
        _check_int("repetitions", self.repetitions, 1)
        if self.emulated_latency_s is not None:
            _check_number("emulated_latency_s", self.emulated_latency_s, 0.0, strict=False)


@dataclass(frozen=True)
class WireOptions:
    """`measure_wire`: bytes per testbed message on the wire, from NAVs sent one by one, or
    (`session`: a scenario file) from real edge sessions with `draft`."""

    model: str | Path = "smollm2-135m"
    threads: int = 1
    tokens: int = 4
    messages: int = 40
    session: Path | None = None
    draft: str | Path | None = None
    draft_threads: int = 1
    requests: int = 2

    def __post_init__(self) -> None:
        for name in ("threads", "tokens", "messages", "draft_threads", "requests"):
            _check_int(name, getattr(self, name), 1)
        if self.session is not None:
            if self.draft is None:
                raise ConfigError("calibrate wire", "--draft", "--session needs the edge's draft")
            if not Path(self.session).is_file():
                raise ConfigError("--session", str(self.session), "scenario file not found")


@dataclass(frozen=True)
class AcceptanceOptions:
    """`measure_acceptance`: a real draft/target pair's greedy acceptance (llama.cpp); the
    replay trace is written to `trace`."""

    draft: str | Path
    target: str | Path
    trace: Path
    prompts: Path | None = None
    """One prompt per line (None: models.prompts' built-in prompts)."""
    max_new_tokens: int = 64
    draft_len: int = 4
    threads: int = 1
    bins: int = 10

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "draft_len", "threads", "bins"):
            _check_int(name, getattr(self, name), 1)


MeasureOptions = (
    DraftOptions | TargetOptions | PowerOptions | LinkOptions | WireOptions | AcceptanceOptions
)
"""Options of any measurement (`calibrate.measure.measure` runs the one they are for)."""


def option_names(options_type: type) -> list[str]:
    """The field names of an options class (the CLI copies these flags across)."""
    return [f.name for f in fields(options_type)]


__all__ = [
    "TARGET_BACKENDS",
    "AcceptanceOptions",
    "DraftOptions",
    "LinkOptions",
    "MeasureOptions",
    "PowerOptions",
    "TargetOptions",
    "WireOptions",
    "option_names",
]
