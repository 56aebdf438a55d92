"""Add the draft's prefill and step factors (realrun.request_costs.EDGE_SPLIT_COLUMNS) to the
edge compute trace of a run recorded before the testbed wrote them, from the timelines its
`pipesd validate` output kept (OUT/real/timelines/, not committed: MBs). From the repository
root:

    python docs/validation/split_compute_traces.py runs/validate-cpu-real164-rest \\
        docs/validation/cpu-run23-real164-rest

rewrites COMMITTED/real/compute_edge.csv with the two columns added (the others unchanged).
Each request goes through realrun.edge.speed_probe.request_speed, as the testbed does since the
split. The timelines hold times at 6 significant digits (1 ms late in a session), so the steps'
measured time is the recorded `measured_s` (full work, 6 digits) less the timeline's prefill
and tuner spans: prefill factors within about 0.3% of the testbed's (spans of 0.1-0.4 s),
step factors within about 0.1%. Checked per request: the predicted seconds rebuilt equal the
recorded ones (the same spans and prompt length), the measured ones agree within the
timelines' rounding. Prints one line per session: requests, prefill and step speeds.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

from figures.load import read_timeline
from realrun.edge.speed_probe import request_speed
from realrun.request_costs import EDGE_SPLIT_COLUMNS
from simulator.profile import load_profile
from simulator.records import TIMELINE_NAME, RequestRecord, Span
from simulator.results import format_cell, write_table

ROUNDING_S = 5e-4
"""Half a unit of the timelines' last digit late in a session (times of 100-999 s)."""


def read_spans(folder: Path) -> dict[tuple[str, str, str, str], list[Span]]:
    """Every timeline's spans per (point, policy, seed, request)."""
    spans: dict[tuple[str, str, str, str], list[Span]] = defaultdict(list)
    for path in sorted(folder.glob("timeline_p*.csv")):
        name = TIMELINE_NAME.fullmatch(path.name)
        assert name is not None, path
        for span in read_timeline(path):
            key = (name["point"], name["label"], name["seed"], str(span.request))
            spans[key].append(span)
    return spans


def main(run: Path, committed: Path) -> None:
    """Rewrite COMMITTED/real/compute_edge.csv with the split columns (module docstring)."""
    profile = load_profile(run / "calibration" / "profile.json").profile
    with (run / "real" / "results.csv").open(newline="") as handle:
        prompt_len = {
            (r["point"], r["policy"], r["seed"], r["request"]): int(r["prompt_len"])
            for r in csv.DictReader(handle)
        }
    spans = read_spans(run / "real" / "timelines")
    path = committed / "real" / "compute_edge.csv"
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in reader.fieldnames or () if c not in EDGE_SPLIT_COLUMNS]
        rows = list(reader)
    sessions: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0] * 4)
    for row in rows:
        key = (row["point"], row["policy"], row["seed"], row["request"])
        record = RequestRecord(request=int(row["request"]), prompt_len=prompt_len[key])
        speed = request_speed(record, spans[key], profile.draft_latency, profile.target_latency)
        if format_cell(speed.edge_predicted_s) != row["predicted_s"]:
            sys.exit(f"{path}: {key}: predicted {speed.edge_predicted_s} != {row['predicted_s']}")
        measured_s = float(row["measured_s"])
        tolerance_s = 2 * ROUNDING_S * sum(s.lane == "draft" for s in spans[key])
        if abs(speed.edge_s - measured_s) > tolerance_s:
            sys.exit(f"{path}: {key}: measured {speed.edge_s} vs recorded {measured_s}")
        tuner_s = speed.edge_s - speed.prefill_s - speed.decode_s
        decode_s = measured_s - speed.prefill_s - tuner_s
        row["prefill_factor"] = speed.prefill_factor
        row["decode_factor"] = speed.decode_predicted_s / decode_s
        sums = sessions[(row["point"], row["policy"], row["seed"])]
        for i, value in enumerate((speed.prefill_s, speed.prefill_predicted_s, decode_s,
                                   speed.decode_predicted_s)):  # fmt: skip
            sums[i] += value
    write_table(path, [*columns, *EDGE_SPLIT_COLUMNS], rows)
    for (point, policy, seed), sums in sorted(sessions.items()):
        count = sum((r["point"], r["policy"], r["seed"]) == (point, policy, seed) for r in rows)
        print(f"p{point} {policy} s{seed}: {count} requests, prefill speed "
              f"{sums[1] / sums[0]:.3f}, steps {sums[3] / sums[2]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
