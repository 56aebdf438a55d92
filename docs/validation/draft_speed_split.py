"""The draft's speed against the profile, prefill and decoding apart, per session of a
`pipesd validate` output that kept its timelines (OUT/real/timelines/, not committed: MBs).
The compute traces keep one factor per request for both (realrun.edge.speed_probe); this
shows when they moved apart. From the repository root, a CSV on stdout:

    python docs/validation/draft_speed_split.py runs/validate-cpu-real164-rest
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from simulator.profile import load_profile

COLUMNS = ("point", "policy", "prefill_s", "prefill_predicted_s", "decode_s",
           "decode_predicted_s", "prefill_speed", "decode_speed", "request_speed")  # fmt: skip
"""Seconds summed over the session's requests; speed = predicted / measured (1: the profile)."""


def main(run: Path) -> None:
    """Print point, policy, measured and predicted prefill and decode seconds, their speeds."""
    draft = load_profile(run / "calibration" / "profile.json").profile.draft_latency
    with (run / "real" / "results.csv").open(newline="") as handle:
        prompt_len = {
            (row["point"], row["policy"], row["request"]): int(row["prompt_len"])
            for row in csv.DictReader(handle)
        }
    writer = csv.writer(sys.stdout)
    writer.writerow(COLUMNS)
    for path in sorted((run / "real" / "timelines").glob("timeline_p*.csv")):
        point = path.name.split("_")[1].removeprefix("p")
        policy = path.name.split("_", 3)[3].rsplit("_s", 1)[0]
        sums = [0.0, 0.0, 0.0, 0.0]  # prefill measured, predicted; decode measured, predicted
        with path.open(newline="") as handle:
            for span in csv.DictReader(handle):
                if span["lane"] != "draft":
                    continue
                length = prompt_len[(point, policy, span["request"])]
                measured = float(span["end_s"]) - float(span["start_s"])
                if span["label"] == "prefill":
                    sums[0] += measured
                    sums[1] += draft.prefill_s(length)
                else:
                    sums[2] += measured
                    sums[3] += draft.decode_s(length + int(span["first"]))
        speeds = (sums[1] / sums[0], sums[3] / sums[2], (sums[1] + sums[3]) / (sums[0] + sums[2]))
        writer.writerow([point, policy, *(f"{s:.4g}" for s in (*sums, *speeds))])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
