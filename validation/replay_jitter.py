"""Replaying the spread of a real session's upload durations as the simulated uplink's jitter.

The testbed's timeline keeps every upload duration its edge handed the policy (lane `report`:
an upload, or the link part of a NAV that carried tokens, timed while no other message was in
flight). Around their median they spread by several milliseconds (threads, event loops, the
delay relay), while a simulated link delivers every message of a size after the same time.
PipeSD's batch plan is sensitive to that spread where drafting a token takes about as long as
a message (docs/validation.md, "Run 27"). Here each session's durations less their median
become its `[link] uplink_jitter` samples (simulator/link_jitter.py), centred as the profile's
uplink overhead is (a median). Runs recorded before the lane existed replay without jitter.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from simulator.records import TIMELINE_NAME
from simulator.results import write_atomic

Session = tuple[int, str, int]
"""(sweep point, policy label, seed)."""

REPORT_LANE = "report"


def recorded_jitter(real: Path) -> dict[Session, list[float]]:
    """Per session whose timeline (REAL/timelines/) holds upload reports: each report's
    duration less the session's median, in seconds, in the order they were heard."""
    folder = real / "timelines"
    samples: dict[Session, list[float]] = {}
    for path in sorted(folder.glob("timeline_p*.csv")) if folder.is_dir() else []:
        name = TIMELINE_NAME.fullmatch(path.name)
        if name is None:
            continue
        with path.open(newline="") as handle:
            durations = [
                float(row["end_s"]) - float(row["start_s"])
                for row in csv.DictReader(handle)
                if row["lane"] == REPORT_LANE
            ]
        if durations:
            centre = statistics.median(durations)
            session = (int(name["point"]), name["label"], int(name["seed"]))
            samples[session] = [duration - centre for duration in durations]
    return samples


def write_jitter(samples: dict[Session, list[float]], folder: Path) -> dict[Session, Path]:
    """Write each session's samples as a `jitter_s` file in `folder`; their paths."""
    paths: dict[Session, Path] = {}
    for (point, policy, seed), values in sorted(samples.items()):
        path = folder / f"p{point}_{policy}_s{seed}_uplink_jitter.csv"
        write_atomic(path, "jitter_s\n" + "".join(f"{value!r}\n" for value in values))
        paths[(point, policy, seed)] = path.resolve()
    return paths


__all__ = ["REPORT_LANE", "recorded_jitter", "write_jitter"]
