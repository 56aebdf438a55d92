"""`pipesd validate`: a scenario on the real testbed and in the simulator (with a given
profile), compared row by row: relative errors, their median and p90, and the TPT ranking.

Both sides run the very same sweep points (the scenario with `profile` replaced by PROFILE, so
the seeds, prompts, token budgets, policies and link are shared); the comparison reads both
sides' summary.csv back, so `validation.csv` can be recomputed from `real/` and `sim/`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from realrun.local import LocalOptions, check_points, run_local
from simulator.errors import ConfigError
from simulator.results import write_json, write_table
from simulator.runner import run_scenario
from simulator.scenario import SweepPoint, expand_sweep
from validation.draws import acceptance_draws, with_draws
from validation.lossless import check_lossless
from validation.replay import resimulate_replayed
from validation.speeds import (
    mean_speeds,
    measured_speeds,
    probed_speeds,
    resimulate,
    resimulate_at_measured_speeds,
)

METRICS = (
    "tpt_ms",
    "tokens_per_s",
    "nav_count",
    "mean_accepted_len",
    "uplink_bytes",
    "energy_per_token_j",
)
"""Summary columns compared: each gives `<metric>_real`, `<metric>_sim`, `<metric>_err`."""

GOAL_MEDIAN = 0.03
"""Goal for the median |TPT error| over rows."""

GOAL_P90 = 0.08
"""Goal for the 90th percentile of |TPT error| over rows."""


def validation_points(
    scenario_path: Path, profile_path: Path, overrides: Sequence[str], sweeps: Sequence[str]
) -> list[SweepPoint]:
    """The scenario's sweep points with its profile replaced by `profile_path`."""
    if not profile_path.is_file():
        raise ConfigError("--profile", "", f"profile file {str(profile_path)!r} not found")
    replaced = f"profile={json.dumps(str(profile_path.resolve()))}"
    return expand_sweep(scenario_path, [*overrides, replaced], list(sweeps))


def number(text: str | None) -> float:
    """A CSV cell as a float (empty or missing: NaN)."""
    return float(text) if text not in (None, "") else math.nan


def relative_error(sim: float, real: float) -> float:
    """(sim - real) / real; NaN where real is zero or either side is not finite."""
    if not (math.isfinite(sim) and math.isfinite(real)) or real == 0.0:
        return math.nan
    return (sim - real) / real


def compare(
    real_rows: Sequence[dict[str, str]], sim_rows: Sequence[dict[str, str]], axes: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (point, policy) the real run has: both sides' metrics and their errors."""
    sim_by_key = {(r["point"], r["policy"]): r for r in sim_rows}
    table = []
    for real in real_rows:
        key = (real["point"], real["policy"])
        if key not in sim_by_key:
            raise ValueError(f"no simulated row for point {key[0]}, policy {key[1]}")
        sim = sim_by_key[key]
        row: dict[str, Any] = {"point": int(real["point"])}
        row.update({axis: real[axis] for axis in axes})
        row.update(policy=real["policy"], policy_name=real["policy_name"])
        for metric in METRICS:
            real_value, sim_value = number(real[metric]), number(sim[metric])
            row[f"{metric}_real"] = real_value
            row[f"{metric}_sim"] = sim_value
            row[f"{metric}_err"] = relative_error(sim_value, real_value)
        table.append(row)
    return table


def error_stats(errors: Sequence[float]) -> tuple[float, float]:
    """Median and 90th percentile (linear interpolation) of |error| over the finite errors."""
    values = np.abs(np.array([e for e in errors if math.isfinite(e)], dtype=float))
    if values.size == 0:
        return math.nan, math.nan
    return float(np.median(values)), float(np.percentile(values, 90))


def rankings(rows: Sequence[dict[str, Any]], side: str) -> dict[int, list[str]]:
    """Per sweep point, the policy labels from fastest to slowest by `tpt_ms_<side>`."""
    by_point: dict[int, list[tuple[float, str]]] = {}
    for row in rows:
        tpt = row[f"tpt_ms_{side}"]
        by_point.setdefault(row["point"], []).append(
            (tpt if math.isfinite(tpt) else math.inf, row["policy"])
        )
    return {point: [label for _, label in sorted(pairs)] for point, pairs in by_point.items()}


def ranking_mismatches(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweep points where the real and simulated TPT rankings differ, with both orders."""
    real, sim = rankings(rows, "real"), rankings(rows, "sim")
    return [
        {"point": point, "real": real[point], "sim": sim[point]}
        for point in sorted(real)
        if real[point] != sim[point]
    ]


def separated_pairs(
    results: Path, confidence: float = 0.95
) -> dict[int, list[tuple[str, str, float, float]]]:
    """Per sweep point, the policy pairs whose real TPTs differ beyond chance: a paired t-test
    over the requests both ran (same seed, same request: same prompt and acceptance stream)
    at `confidence`. Each pair is (faster, slower, TPT gap in ms, the gap's half-width)."""
    tpt: dict[tuple[int, str], dict[tuple[str, str], float]] = {}
    with results.open(newline="") as handle:
        for row in csv.DictReader(handle):
            value = number(row.get("tpt_ms"))
            if math.isfinite(value):
                key = (row["seed"], row["request"])
                tpt.setdefault((int(row["point"]), row["policy"]), {})[key] = value
    pairs: dict[int, list[tuple[str, str, float, float]]] = {}
    for (point, a), a_runs in sorted(tpt.items()):
        for (other_point, b), b_runs in sorted(tpt.items()):
            if other_point != point or b <= a:
                continue
            shared = sorted(set(a_runs) & set(b_runs))
            if len(shared) < 2:
                continue
            gaps = np.array([a_runs[k] - b_runs[k] for k in shared])
            half = float(
                student_t.ppf(0.5 + confidence / 2, len(gaps) - 1)
                * gaps.std(ddof=1)
                / math.sqrt(len(gaps))
            )
            mean = float(gaps.mean())
            if abs(mean) > half:
                faster, slower = (a, b) if mean < 0 else (b, a)
                pairs.setdefault(point, []).append((faster, slower, abs(mean), half))
    return pairs


def separated_ranking(
    rows: Sequence[dict[str, Any]], pairs: dict[int, list[tuple[str, str, float, float]]]
) -> dict[str, Any]:
    """Whether the simulator orders every pair the real run separates (`separated_pairs`) as
    the real run does: the part of the ranking that the measurement itself supports."""
    sim = {(int(row["point"]), row["policy"]): row["tpt_ms_sim"] for row in rows}
    compared = [(point, pair) for point, found in sorted(pairs.items()) for pair in found]
    swapped = [
        {
            "point": point,
            "faster": faster,
            "slower": slower,
            "real_gap_ms": gap,
            "half_width_ms": half,
        }
        for point, (faster, slower, gap, half) in compared
        if (point, faster) in sim
        and (point, slower) in sim
        and not sim[(point, faster)] < sim[(point, slower)]
    ]
    n_policies: dict[int, int] = {}
    for point, _ in sim:
        n_policies[point] = n_policies.get(point, 0) + 1
    return {
        "identical": not swapped,
        "separated_pairs": len(compared),
        "pairs": sum(n * (n - 1) // 2 for n in n_policies.values()),
        "mismatches": swapped,
        "meaning": "the TPT ranking restricted to the policy pairs whose real TPTs differ "
        "beyond chance (paired t-test over the requests, 95%); pairs within the run's own "
        "noise may come out in either order",
    }


def validation_columns(axes: Sequence[str]) -> list[str]:
    """validation.csv's columns: point, axes, policy, then real/sim/err for each metric."""
    metrics = [f"{m}_{side}" for m in METRICS for side in ("real", "sim", "err")]
    return ["point", *axes, "policy", "policy_name", *metrics, *AT_RUN_SPEED, *PROBED, *REPLAYED]


AT_RUN_SPEED = ("edge_speed", "cloud_speed", "tpt_ms_sim_at_run_speed", "tpt_ms_err_at_run_speed")
"""Diagnostic columns: the testbed's draft and target speed during the run relative to the
profile, and the simulator's TPT at those speeds (`resimulate_at_measured_speeds`)."""

PROBED = ("edge_speed_probe", "cloud_speed_probe", "tpt_ms_sim_probed", "tpt_ms_err_probed")
"""A second prediction: the speeds the reference before each session showed (mean over the
seeds; realrun.edge.speed_probe), and the simulator's TPT with each session at its own."""


REPLAYED = ("tpt_ms_sim_replayed", "tpt_ms_err_replayed")
"""The prediction the goals apply to: the simulator with every session at the compute traces
the testbed recorded during it (validation.replay; NaN for runs that recorded none)."""

PREDICTIONS_MEANING = (
    "three predictions of the same real run. calibration: the profile alone (measured before "
    "the run; blind to the machine's drift during it). replayed_compute_traces: every session "
    "with the draft's and the target's speed per request as the testbed recorded them, "
    "replayed as compute traces, as a link's bandwidth trace is replayed (and, where its "
    "timeline keeps the upload durations the edge heard, their spread around the median as "
    "the uplink's jitter, [link] uplink_jitter): the goals apply to "
    "this one, since it asks whether the twin predicts the run given the machine's speed as "
    "it moved (its environment), which is what a twin is for; the machine's own drift is an "
    "input, not something a model of the system can foresee. mean_run_speed: each policy at "
    "its mean draft and target speed over the run (a constant factor), what a single number "
    "per run can give"
)


def add_speeds(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    speeds: dict[tuple[int, str], tuple[float, float]],
    predicted: dict[tuple[int, str], float],
) -> None:
    """Fill `columns` (AT_RUN_SPEED or PROBED: edge speed, cloud speed, simulated TPT, its
    error) of validation rows from per (point, policy) speeds and TPTs (NaN where missing)."""
    for row in rows:
        key = (int(row["point"]), row["policy"])
        edge, cloud = speeds.get(key, (math.nan, math.nan))
        tpt = predicted.get(key, math.nan)
        values = (edge, cloud, tpt, relative_error(tpt, row["tpt_ms_real"]))
        row.update(zip(columns, values, strict=True))


def read_summary(path: Path) -> list[dict[str, str]]:
    """A summary.csv as rows of text."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verdict(met: bool) -> str:
    """'met' or 'missed'."""
    return "met" if met else "missed"


def summarise_validation(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: |TPT error| median and p90, ranking mismatches, goals."""
    median, p90 = error_stats([r["tpt_ms_err"] for r in rows])
    mismatches = ranking_mismatches(rows)
    return {
        "rows": len(rows),
        "tpt_abs_error_median": median,
        "tpt_abs_error_p90": p90,
        "abs_error_median_p90": {
            metric: error_stats([r[f"{metric}_err"] for r in rows]) for metric in METRICS
        },
        "ranking_identical": not mismatches,
        "ranking_mismatches": mismatches,
        "goals": {
            "tpt_abs_error_median_max": GOAL_MEDIAN,
            "tpt_abs_error_p90_max": GOAL_P90,
            "ranking_identical": True,
        },
        "goals_met": {
            "median": bool(median <= GOAL_MEDIAN),
            "p90": bool(p90 <= GOAL_P90),
            "ranking": not mismatches,
        },
    }


def write_validation(
    out_dir: Path,
    axes: Sequence[str],
    extra_manifest: dict[str, Any],
    speeds: dict[tuple[int, str], tuple[float, float]] | None = None,
    predicted: dict[tuple[int, str], float] | None = None,
    probes: dict[tuple[int, str, int], tuple[float, float]] | None = None,
    probed: dict[tuple[int, str], float] | None = None,
    replayed: dict[tuple[int, str], float] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compare OUT/real and OUT/sim; write OUT/validation.csv and OUT/manifest.json.
    `replayed`: the TPTs with the recorded compute traces replayed (None: none recorded)."""
    rows = compare(
        read_summary(out_dir / "real" / "summary.csv"),
        read_summary(out_dir / "sim" / "summary.csv"),
        axes,
    )
    add_speeds(rows, AT_RUN_SPEED, speeds or {}, predicted or {})
    add_speeds(rows, PROBED, mean_speeds(probes or {}), probed or {})
    for row in rows:
        tpt = (replayed or {}).get((int(row["point"]), row["policy"]), math.nan)
        row.update(zip(REPLAYED, (tpt, relative_error(tpt, row["tpt_ms_real"])), strict=True))
    write_table(out_dir / "validation.csv", validation_columns(axes), rows)
    headline = summarise_validation(rows)
    pairs = separated_pairs(out_dir / "real" / "results.csv")
    headline["ranking_of_separated_pairs"] = separated_ranking(rows, pairs)
    at_speed = error_stats([r["tpt_ms_err_at_run_speed"] for r in rows])
    at_speed_mismatches = ranking_mismatches(
        [{**r, "tpt_ms_sim": r["tpt_ms_sim_at_run_speed"]} for r in rows]
    )
    headline["at_run_speed_diagnostic"] = {
        "tpt_abs_error_median": at_speed[0],
        "tpt_abs_error_p90": at_speed[1],
        "ranking_identical": not at_speed_mismatches,
        "ranking_mismatches": at_speed_mismatches,
        "meaning": "simulator with the draft and target at the speeds measured during the "
        "real run: separates the model's error from the machine's drift; not a prediction",
    }
    if probed:
        with_probe = [{**r, "tpt_ms_err": r["tpt_ms_err_probed"],
                       "tpt_ms_sim": r["tpt_ms_sim_probed"]} for r in rows]  # fmt: skip
        headline["probed_prediction"] = {
            **summarise_validation(with_probe),
            "meaning": "simulator with each session at the draft and target speeds of the "
            "reference timed just before it (realrun.edge.speed_probe): a prediction that uses no "
            "timing of the validated sessions",
        }
    headline["predictions"] = three_predictions(rows, replayed is not None, pairs)
    write_json(out_dir / "manifest.json", {**extra_manifest, **headline, "status": "complete"})
    return rows, headline


def three_predictions(
    rows: Sequence[dict[str, Any]],
    recorded: bool,
    pairs: dict[int, list[tuple[str, str, float, float]]] | None = None,
) -> dict[str, Any]:
    """The headline figures (`summarise_validation`) of the three predictions side by side:
    calibration alone, the recorded compute traces replayed (None where the run recorded
    none) and each policy at its mean run speed; which one the goals apply to, and why.
    With the real run's separated `pairs`, each prediction's order of those pairs too."""

    def summary(column: str) -> dict[str, Any]:
        moved = [{**r, "tpt_ms_sim": r[f"tpt_ms_sim{column}"],
                  "tpt_ms_err": r[f"tpt_ms_err{column}"]} for r in rows]  # fmt: skip
        figures = summarise_validation(moved)
        if pairs is not None:
            figures["separated_pairs"] = separated_ranking(moved, pairs)
        return figures

    return {
        "calibration": summary(""),
        "replayed_compute_traces": summary("_replayed") if recorded else None,
        "mean_run_speed": summary("_at_run_speed"),
        "goals_apply_to": "replayed_compute_traces",
        "meaning": PREDICTIONS_MEANING,
    }


def run_validation(
    scenario_path: Path,
    profile_path: Path,
    points: Sequence[SweepPoint],
    options: LocalOptions,
    out_dir: Path,
    command: Sequence[str],
    progress: Callable[[str], None] | None = None,
    recalibrated_from: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, str]]:
    """Run the testbed into OUT/real and the simulator into OUT/sim, then compare them.

    `recalibrated_from`: the profile `profile_path` was derived from just before this run
    (validation.recalibrate), recorded in the manifest. Returns the validation rows, the headline
    figures and the skipped policies.
    """
    skipped = check_points(scenario_path, points)
    (out_dir / "validation.csv").unlink(missing_ok=True)
    probing = replace(options, speed_probe=True)  # the second prediction's reference
    run_local(scenario_path, points, probing, out_dir / "real", command, progress)
    lossless = check_lossless(out_dir / "real", points, options, out_dir)
    recalibration = (
        {"path": str(recalibrated_from), "sha256": sha256(recalibrated_from)}
        if recalibrated_from is not None
        else None
    )
    origin = {"recalibrated_from": recalibration, "lossless": lossless}
    draws = acceptance_draws(options.acceptance)
    rows, headline = simulate_and_compare(
        scenario_path, profile_path, points, out_dir, command, skipped, origin, draws
    )
    return rows, {**headline, "lossless": lossless}, skipped


def simulate_and_compare(
    scenario_path: Path,
    profile_path: Path,
    points: Sequence[SweepPoint],
    out_dir: Path,
    command: Sequence[str],
    skipped: dict[str, str],
    origin: dict[str, Any],
    draws: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Simulate `points` into OUT/sim, then compare with OUT/real: the speeds, both
    re-simulated predictions, validation.csv and manifest.json (with `origin`: where the
    profile or the real side came from). `draws`: simulated acceptance streams per real
    session (`acceptance_draws`). Returns the rows and the headline figures."""
    simulated = with_draws(points, draws)
    run_scenario(scenario_path, simulated, out_dir / "sim", command, record_timeline=True)
    extra = {
        "kind": "revalidate" if "revalidated_from" in origin else "validate",  # simulator.outdir
        "command": list(command),
        "scenario": {"path": str(scenario_path), "sha256": sha256(scenario_path)},
        "profile": {"path": str(profile_path), "sha256": sha256(profile_path)},
        **origin,
        "real": str(out_dir / "real"),
        "sim": str(out_dir / "sim"),
        "metrics": list(METRICS),
        "error": "(sim - real) / real",
        "skipped": skipped,
        "acceptance_draws": draws,
    }
    speeds = measured_speeds(out_dir, points)
    predicted = resimulate_at_measured_speeds(out_dir, points, draws)
    probes = probed_speeds(out_dir / "real" / "speeds.csv")
    probed = resimulate(points, probes, draws)
    replayed = resimulate_replayed(points, out_dir / "real", out_dir / "sim", draws)
    jittered = sorted(p.name for p in (out_dir / "sim" / "compute").glob("*_uplink_jitter.csv"))
    extra["replayed_uplink_jitter"] = jittered  # sessions replayed with their upload spread
    axes = list(points[0].axes)
    return write_validation(out_dir, axes, extra, speeds, predicted, probes, probed, replayed)
