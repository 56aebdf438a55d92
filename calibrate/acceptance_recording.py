"""The acceptance recorder's results and outputs (trace CSV, fitter samples), free of llama.cpp."""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from calibrate.samples import AcceptanceSample

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositionRecord:
    """One drafted token on the correct prefix: sequence (prompt index), output position,
    the draft's top-1 probability, and the target's greedy verdict; then the drafted token id,
    the sampling acceptance probability min(1, p/q) at temperature 1 (p the target's
    probability of the token, q the draft's), and the target's top-K ids and probabilities
    (most probable first; empty when recorded with top_k 0)."""

    sequence: int
    position: int
    confidence: float
    accepted: bool
    token: int = -1
    accept_prob: float = math.nan
    top_ids: tuple[int, ...] = ()
    top_probs: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One draft-verify round: output position of its first drafted token, tokens drafted,
    tokens accepted (0..drafted)."""

    sequence: int
    position: int
    drafted: int
    accepted: int


@dataclass(frozen=True)
class AcceptanceRecording:
    """What `record_acceptance` recorded (see the module docstring).

    `outputs[s]` is the token ids generated for prompt s; `prompt_tokens[s]` the tokens of the
    formatted prompt. `seconds` is the wall-clock time of the whole recording.
    """

    draft_path: Path
    target_path: Path
    prompts: tuple[str, ...]
    prompt_tokens: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[int, ...], ...]
    positions: tuple[PositionRecord, ...]
    rounds: tuple[RoundRecord, ...]
    draft_len: int
    max_new_tokens: int
    threads: int
    seconds: float
    llama_cpp_version: str = ""

    @property
    def drafted(self) -> int:
        """Tokens drafted, on- and off-path."""
        return sum(r.drafted for r in self.rounds)

    @property
    def accepted(self) -> int:
        """Drafted tokens the target accepted."""
        return sum(r.accepted for r in self.rounds)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (off-path tokens count as drafted, not accepted)."""
        return self.accepted / self.drafted if self.drafted else math.nan

    @property
    def position_acceptance_rate(self) -> float:
        """Accepted / recorded (on-path) positions: P(accept) as the replay trace has it."""
        return self.accepted / len(self.positions) if self.positions else math.nan

    @property
    def mean_accepted_per_round(self) -> float:
        """Mean accepted draft tokens per round."""
        return self.accepted / len(self.rounds) if self.rounds else math.nan

    @property
    def generated(self) -> int:
        """Output tokens over all prompts."""
        return sum(len(o) for o in self.outputs)

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        conf = np.array([p.confidence for p in self.positions], dtype=float)
        return [
            f"draft {self.draft_path.name} -> target {self.target_path.name}: "
            f"{len(self.prompts)} prompt(s), max {self.max_new_tokens} new tokens, draft_len "
            f"{self.draft_len}, {self.threads} thread(s), {self.seconds:.1f} s",
            f"rounds {len(self.rounds)}, drafted {self.drafted}, accepted {self.accepted} "
            f"(acceptance rate {self.acceptance_rate:.3f}; on-path positions "
            f"{len(self.positions)}, rate {self.position_acceptance_rate:.3f}), mean accepted "
            f"per round {self.mean_accepted_per_round:.3f}, generated {self.generated} tokens",
            "draft confidence on recorded positions: "
            + (
                f"mean {conf.mean():.3f}, median {np.median(conf):.3f}"
                if conf.size
                else "none recorded"
            ),
        ]


# --------------------------------------------------------------------------------------------
# Outputs for the simulator and the fitter
# --------------------------------------------------------------------------------------------


TRACE_COLUMNS = ("sequence", "position", "confidence", "accepted")
"""The replay trace's columns (`simulator.acceptance.ReplayTraces.load`)."""


def _open_for_writing(path: Path) -> TextIO:
    """`path` opened to write text: gzip-compressed when it ends in `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "wt", newline="", encoding="utf-8")
    return path.open("w", newline="")


def write_replay_rows(rows: Iterable[tuple[int, int, float, bool]], path: Path) -> Path:
    """Write a replay trace CSV from (sequence, position, confidence, accepted) rows
    (confidence exact, accepted as 1/0), gzip-compressed when `path` ends in `.gz` (as the
    replay reads it). Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_for_writing(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(TRACE_COLUMNS)
        for sequence, position, confidence, accepted in rows:
            writer.writerow([sequence, position, repr(float(confidence)), int(accepted)])
    return path


def write_trace(rec: AcceptanceRecording, path: Path) -> Path:
    """Write the replay trace CSV: one row per recorded position. ValueError if nothing was
    recorded. Returns `path`."""
    if not rec.positions:
        raise ValueError("write_trace: the recording holds no positions")
    rows = ((p.sequence, p.position, p.confidence, p.accepted) for p in rec.positions)
    return write_replay_rows(rows, path)


def write_rounds(rec: AcceptanceRecording, path: Path) -> Path:
    """Write the per-round CSV (sequence, position, drafted, accepted). Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("sequence", "position", "drafted", "accepted"))
        for r in rec.rounds:
            writer.writerow([r.sequence, r.position, r.drafted, r.accepted])
    return path


def samples(rec: AcceptanceRecording) -> list[AcceptanceSample]:
    """The recorded positions as `AcceptanceSample`s, for `calibrate.fit.fit_acceptance`."""
    return [AcceptanceSample(confidence=p.confidence, accepted=p.accepted) for p in rec.positions]


__all__ = [
    "TRACE_COLUMNS",
    "AcceptanceRecording",
    "PositionRecord",
    "RoundRecord",
    "samples",
    "write_replay_rows",
    "write_rounds",
    "write_trace",
]
