"""Per-request compute traces for a validation run recorded before issue 19 (runs 1-15 hold no
real/compute_*.csv), reconstructed from both sides' results.csv, for `pipesd revalidate`.

Per request: the draft's factor is the simulator's edge busy time per drafted token over the
testbed's, the target's the simulator's verification time per NAV (its busy time less the
prompt's prefill, which the testbed's server does not report) over the testbed's; each at the
request's real start time. With synthetic acceptance both sides draft and verify the same
schedule (NAV counts equal for Vanilla, HSL and EdgeLLM), so this is the work-for-work ratio
the testbed now records directly (realrun.edge.speed_probe.request_speed), per request rather
than per draft step. Writes a copy of RUN with the traces added.

    pipesd revalidate docs/validation/cpu-run15 --out runs/reval-15
    python docs/validation/reconstruct_compute_traces.py docs/validation/cpu-run15 \
        runs/reval-15/sim runs/run15-traced
    pipesd revalidate runs/run15-traced --out runs/reval-15-traced

Run from the repository root (the recorded manifests name the scenario relative to it).
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

from validation.validate import validation_points


def by_request(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """results.csv rows by (point, policy, seed, request)."""
    with path.open(newline="") as handle:
        return {
            (r["point"], r["policy"], r["seed"], r["request"]): r for r in csv.DictReader(handle)
        }


def main(run: Path, sim: Path, copy: Path) -> None:
    """Write `copy`: RUN with real/compute_edge.csv and real/compute_cloud.csv."""
    if copy.exists():
        raise SystemExit(f"{copy} exists: give a new folder")
    shutil.copytree(run, copy)
    manifest_profile = run / "calibration" / "profile.json"
    points = validation_points(Path("scenarios/testbed_cpu.toml"), manifest_profile, [], [])
    real, simulated = by_request(run / "real" / "results.csv"), by_request(sim / "results.csv")
    traces: dict[str, list[dict[str, object]]] = {"edge": [], "cloud": []}
    for key, r in real.items():
        s = simulated.get(key)
        if s is None:
            continue
        point = points[int(key[0])].scenario
        prefill_s = point.profile.profile.target_latency.prefill_s(point.model.prompts.prompt_len)
        row = dict(zip(("point", "policy", "seed", "request"), key, strict=True))
        row["t_s"] = r["start_s"]
        if min(float(r["drafted"]), float(s["drafted"]), float(r["edge_busy_s"])) > 0:
            real_step = float(r["edge_busy_s"]) / float(r["drafted"])
            factor = float(s["edge_busy_s"]) / float(s["drafted"]) / real_step
            traces["edge"].append({**row, "factor": factor})
        if min(float(r["navs"]), float(s["navs"]), float(r["cloud_busy_s"])) > 0:
            real_nav = float(r["cloud_busy_s"]) / float(r["navs"])
            factor = (float(s["cloud_busy_s"]) - prefill_s) / float(s["navs"]) / real_nav
            traces["cloud"].append({**row, "factor": factor})
    for side, rows in traces.items():
        with (copy / "real" / f"compute_{side}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["point", "policy", "seed", "request", "t_s", "factor"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
