"""Per session of a committed real-acceptance run: the real requests' mean duration, draft
busy time and time to first token beside the simulator's, with the run's compute traces
replayed and the K-fold profile (FOLDER/folds/profile.json). Shows whether the replay carries
the draft's speed into the simulation, and where a request's time goes. From the repository
root:

    python docs/validation/replayed_busy_times.py docs/validation/cpu-run23-real164-rest \
        scenarios/testbed_cpu_real164_rest.toml
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
from pathlib import Path

from validation.replay import recorded_traces, simulate_sessions, with_traces, write_traces
from validation.validate import validation_points


def main(folder: Path, scenario: Path) -> None:
    """Print, per (point, policy), real and simulated mean duration, draft busy time and time
    to first token (seconds)."""
    real: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    with (folder / "real" / "results.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            duration = float(row["end_s"]) - float(row["start_s"])
            key = (int(row["point"]), row["policy"])
            first = float(row["first_token_s"]) - float(row["start_s"])
            real.setdefault(key, []).append((duration, float(row["edge_busy_s"]), first))
    points = validation_points(scenario, folder / "folds" / "profile.json", [], [])
    traces = recorded_traces(folder / "real")
    assert traces is not None, "the run recorded no compute traces"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_traces(traces, Path(tmp))
        sessions = {key: with_traces(paths[key]) for key in traces}
        simulated = simulate_sessions(points, sessions)
    print("point policy: duration s real / sim, draft busy s real / sim, first token s real / sim")
    for key, (_, runs) in sorted(simulated.items()):
        records = [record for _, _, outcome in runs for record in outcome.records]
        sim_duration = statistics.mean(r.end_s - r.start_s for r in records)
        sim_edge = statistics.mean(r.edge_busy_s for r in records)
        sim_first = statistics.mean(r.first_token_s - r.start_s for r in records)
        duration, edge, first = (statistics.mean(column) for column in zip(*real[key], strict=True))
        print(
            f"{key[0]} {key[1]}: {duration:.3f} / {sim_duration:.3f}, {edge:.3f} / "
            f"{sim_edge:.3f}, {first:.3f} / {sim_first:.3f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
