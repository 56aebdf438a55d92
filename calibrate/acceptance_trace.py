"""Acceptance trace files: per-position records of a real pair, with provenance, as CSV.gz.

Format (version 1), gzip-compressed UTF-8 text:

- line 1: `# pipesd-acceptance-trace 1 ` followed by one line of JSON: the provenance (pair
  recipe, draft and target files and checksums, prompt family and split, generation settings,
  package versions, command);
- line 2: the header `sequence,position,token,confidence,accepted,accept_prob,top_ids,top_probs`;
- one row per recorded position (`calibrate.acceptance_recording.PositionRecord`): confidence and
  accept_prob as Python's shortest exact float text, accepted as 1/0, the target's top-K ids
  and probabilities as space-separated lists (probabilities to 4 significant digits).

The simulator's replay (`simulator.acceptance.ReplayTraces.load`) reads these files directly
(it skips the comment line and the extra columns). `read_trace` reads one back in full; a bad
file is a one-line `ConfigError` naming the file, the line and what is wrong.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from calibrate.acceptance_recording import PositionRecord
from simulator.errors import ConfigError

MAGIC = "# pipesd-acceptance-trace 1 "
"""The first line's prefix (format version 1); the provenance JSON follows on that line."""

COLUMNS = (
    "sequence",
    "position",
    "token",
    "confidence",
    "accepted",
    "accept_prob",
    "top_ids",
    "top_probs",
)
"""The trace's columns, in order."""


def write_trace_gz(
    positions: Sequence[PositionRecord], path: Path, provenance: dict[str, Any]
) -> Path:
    """Write `positions` with `provenance` (JSON-serialisable) to `path` (CSV.gz, format in the
    module docstring). ValueError if there are no positions or `path` exists (never
    overwritten). Returns `path`."""
    path = Path(path)
    if not positions:
        raise ValueError("write_trace_gz: no positions to write")
    if path.exists():
        raise ValueError(f"write_trace_gz: {path} exists (traces are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    text.write(MAGIC + json.dumps(provenance, sort_keys=True) + "\n")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in positions:
        writer.writerow(
            [
                p.sequence,
                p.position,
                p.token,
                repr(float(p.confidence)),
                int(p.accepted),
                repr(float(p.accept_prob)),
                " ".join(str(i) for i in p.top_ids),
                " ".join(f"{q:.4g}" for q in p.top_probs),
            ]
        )
    # mtime 0: the same records give the same bytes
    path.write_bytes(gzip.compress(text.getvalue().encode("utf-8"), mtime=0))
    return path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split())


def _row(path: Path, line: int, row: list[str]) -> PositionRecord:
    if len(row) != len(COLUMNS):
        raise ConfigError(path, f"line {line}", f"expected {len(COLUMNS)} columns, got {len(row)}")
    try:
        sequence, position, token = int(row[0]), int(row[1]), int(row[2])
        confidence, ratio = float(row[3]), float(row[5])
        ids, probs = _ints(row[6]), _floats(row[7])
    except ValueError:
        raise ConfigError(
            path, f"line {line}", "sequence/position/token/confidence/accept_prob not numbers"
        ) from None
    if row[4] not in ("0", "1"):
        raise ConfigError(path, f"line {line}", f"accepted must be 0 or 1 (got {row[4]!r})")
    if not 0.0 < confidence <= 1.0:
        raise ConfigError(path, f"line {line}", f"confidence {confidence} not in (0, 1]")
    if not (math.isnan(ratio) or 0.0 <= ratio <= 1.0):
        raise ConfigError(path, f"line {line}", f"accept_prob {ratio} not in [0, 1]")
    if len(ids) != len(probs):
        raise ConfigError(path, f"line {line}", "top_ids and top_probs differ in length")
    return PositionRecord(sequence, position, confidence, row[4] == "1", token, ratio, ids, probs)


@contextlib.contextmanager
def _trace_errors(path: Path) -> Iterator[None]:
    """Reading a trace file: a missing, non-gzip or non-UTF-8 file is a one-line ConfigError."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError):
        raise ConfigError(path, "", "acceptance trace is not a gzip file (.csv.gz)") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, "", f"cannot read acceptance trace ({reason})") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "acceptance trace is not UTF-8 text") from None


def _provenance(path: Path, first_line: str) -> dict[str, Any]:
    """The provenance JSON of a trace's first line (one-line ConfigError if it is not one)."""
    if not first_line.startswith(MAGIC):
        raise ConfigError(path, "line 1", f"expected the trace header {MAGIC.strip()!r}")
    try:
        return json.loads(first_line[len(MAGIC) :])
    except ValueError:
        raise ConfigError(path, "line 1", "provenance is not JSON") from None


def read_provenance(path: Path) -> dict[str, Any]:
    """The provenance on a trace file's first line, without reading its rows; one-line
    ConfigError for a file that is not a trace."""
    path = Path(path)
    with _trace_errors(path), gzip.open(path, "rt", encoding="utf-8") as handle:
        first = handle.readline()
    return _provenance(path, first)


def read_trace(path: Path) -> tuple[dict[str, Any], list[PositionRecord]]:
    """(provenance, positions) of a trace file; one-line ConfigError for a bad file."""
    path = Path(path)
    with _trace_errors(path):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    lines = text.split("\n")
    provenance = _provenance(path, lines[0])
    rows = list(csv.reader(lines[1:]))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise ConfigError(path, "line 2", f"header must be {','.join(COLUMNS)}")
    positions = [_row(path, n, row) for n, row in enumerate(rows[1:], start=3) if row]
    if not positions:
        raise ConfigError(path, "", "acceptance trace holds no rows")
    return provenance, positions


__all__ = ["COLUMNS", "MAGIC", "read_provenance", "read_trace", "write_trace_gz"]
