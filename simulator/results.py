"""Result files: per-request rows, the summary table and the run manifest, written safely.

Every file is replaced atomically (written beside, then renamed), so an interrupted run never
leaves a half-written table; it gets the mode a plain `open` would give it (0666 less the umask),
not the temporary file's private 0600.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""Mode of every result file: what `open(path, "w")` would create under this umask."""


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step (write a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (numpy scalars and NaN turned into plain values)."""
    write_atomic(path, json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def format_cell(value: Any) -> str:
    """CSV text for one value: floats with 6 significant digits, NaN as empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_table(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write a whole CSV table atomically."""
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_quote(format_cell(row.get(c, ""))) for c in columns))
    write_atomic(path, "\n".join(lines) + "\n")


def _quote(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text
