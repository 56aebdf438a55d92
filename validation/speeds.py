"""The draft's and the target's speed during a real validation run, and the simulator
re-run at it: per (point, policy) from both sides' results (`measured_speeds`, the "at mean run
speed" prediction) and per session from the testbed's speed references (`probed_speeds`)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from simulator.scenario import SweepPoint
from simulator.scenario_sections import ScenarioModel
from validation.replay import resimulate_sessions


def _work(results: Path) -> dict[tuple[int, str], list[float]]:
    """Per (point, policy) from a results.csv: [edge busy s, drafted, cloud busy s, NAVs,
    requests]."""
    work: dict[tuple[int, str], list[float]] = {}
    with results.open(newline="") as handle:
        for row in csv.DictReader(handle):
            acc = work.setdefault((int(row["point"]), row["policy"]), [0.0] * 5)
            for i, name in enumerate(("edge_busy_s", "drafted", "cloud_busy_s", "navs")):
                acc[i] += float(row[name])
            acc[4] += 1
    return work


def measured_speeds(
    out_dir: Path, points: Sequence[SweepPoint]
) -> dict[tuple[int, str], tuple[float, float]]:
    """(edge factor, cloud factor) per (point, policy): how much faster the testbed's draft
    step and target time per NAV were during the real run than the profile predicts for the
    same work (the simulator's; < 1: slower). The simulator's cloud busy time includes each
    request's prompt prefill, the testbed's does not (the server reports verifications only)."""
    real, sim = _work(out_dir / "real" / "results.csv"), _work(out_dir / "sim" / "results.csv")
    speeds = {}
    for (point, policy), r in real.items():
        s = sim.get((point, policy))
        if s is None or min(r[1], r[3], s[1], s[3]) <= 0 or min(r[0], r[2]) <= 0:
            continue
        scenario = points[point].scenario
        prefill = scenario.profile.profile.target_latency.prefill_s(
            scenario.model.prompts.prompt_len
        )
        sim_verify = s[2] - s[4] * prefill
        edge = (s[0] / s[1]) / (r[0] / r[1])
        speeds[(point, policy)] = (edge, (sim_verify / s[3]) / (r[2] / r[3]))
    return speeds


def resimulate(
    points: Sequence[SweepPoint],
    factors: dict[tuple[int, str, int], tuple[float, float]],
    draws: int = 1,
) -> dict[tuple[int, str], float]:
    """TPT (ms) per (point, policy) the simulator predicts when each (point, policy, seed) of
    `factors` runs with the draft and the target at its own (edge, cloud) speed factors
    (relative to the profile; > 1: faster), `draws` acceptance draws each
    (validation.replay.draw_seeds)."""

    def faster(edge: float, cloud: float) -> Callable[[ScenarioModel], ScenarioModel]:
        def change(model: ScenarioModel) -> ScenarioModel:
            edge_factor = model.edge.compute_factor * edge
            cloud_factor = model.cloud.compute_factor * cloud
            return model.model_copy(
                update={
                    "edge": model.edge.model_copy(update={"compute_factor": edge_factor}),
                    "cloud": model.cloud.model_copy(update={"compute_factor": cloud_factor}),
                }
            )

        return change

    sessions = {key: faster(edge, cloud) for key, (edge, cloud) in factors.items()}
    return resimulate_sessions(points, sessions, draws)


def resimulate_at_measured_speeds(
    out_dir: Path, points: Sequence[SweepPoint], draws: int = 1
) -> dict[tuple[int, str], float]:
    """TPT (ms) the simulator predicts per (point, policy) with the draft and the target at the
    speeds the testbed showed during the real run (`measured_speeds`): a diagnostic that
    separates the model's error from the machine's drift since calibration. It uses the real
    run's timings, so it is not a prediction."""
    factors = {
        (index, policy, seed): speeds
        for (index, policy), speeds in measured_speeds(out_dir, points).items()
        for seed in points[index].scenario.model.seeds
    }
    return resimulate(points, factors, draws)


def probed_speeds(path: Path) -> dict[tuple[int, str, int], tuple[float, float]]:
    """(edge, cloud) speed factors per (point, policy, seed) from a testbed's speeds.csv (the
    reference each session timed just before it ran, realrun.edge.speed_probe); {} without one."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {
            (int(r["point"]), r["policy"], int(r["seed"])): (
                float(r["edge_speed"]),
                float(r["cloud_speed"]),
            )
            for r in csv.DictReader(handle)
        }


def mean_speeds(
    probes: dict[tuple[int, str, int], tuple[float, float]],
) -> dict[tuple[int, str], tuple[float, float]]:
    """Per (point, policy), the mean over the seeds of per-session speed factors."""
    by_key: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for (index, policy, _), factors in probes.items():
        by_key.setdefault((index, policy), []).append(factors)
    return {key: tuple(np.mean(values, axis=0).tolist()) for key, values in by_key.items()}
