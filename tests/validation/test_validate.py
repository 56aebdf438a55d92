"""`pipesd validate` (validation/validate.py): the error statistics and the TPT ranking on
synthetic rows, bad input, and an end-to-end run on SmolLM2 whose validation.csv must equal
(sim - real) / real recomputed from OUT/real/summary.csv and OUT/sim/summary.csv."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path

from pipesd.cli import main
from validation.draws import ACCEPTANCE_DRAWS
from validation.replay_jitter import recorded_jitter
from validation.speeds import resimulate
from validation.validate import (
    METRICS,
    compare,
    error_stats,
    ranking_mismatches,
    rankings,
    relative_error,
    separated_pairs,
    separated_ranking,
    summarise_validation,
    validation_points,
)


def plausible(speed: float) -> bool:
    """A measured speed relative to calibration: finite and within 50x either way.

    Wide on purpose: on a busy machine (CI, issue 21) the run may be several times slower than
    its calibration; a unit slip (ms for s) would be 1000x off.
    """
    return 0.02 < speed < 50


def summary_row(point: int, policy: str, tpt: float, **metrics: float) -> dict[str, str]:
    """A summary.csv row as text, as csv.DictReader gives it."""
    row = {"point": str(point), "uplink_mbps": "10", "policy": policy, "policy_name": policy}
    row.update({m: "1" for m in METRICS})
    row["tpt_ms"] = f"{tpt}"
    row.update({k: ("" if math.isnan(v) else f"{v}") for k, v in metrics.items()})
    return row


def test_relative_error_is_sim_minus_real_over_real():
    assert relative_error(110.0, 100.0) == pytest.approx(0.1)
    assert relative_error(90.0, 100.0) == pytest.approx(-0.1)
    assert math.isnan(relative_error(1.0, 0.0))
    assert math.isnan(relative_error(math.nan, 1.0))
    assert math.isnan(relative_error(1.0, math.inf))


def test_error_stats_are_median_and_p90_of_absolute_finite_errors():
    errors = [0.01, -0.02, 0.03, -0.04, 0.05, 0.06, -0.07, 0.08, 0.09, -0.10, math.nan]
    median, p90 = error_stats(errors)
    assert median == pytest.approx(0.055)
    assert p90 == pytest.approx(0.091)  # linear interpolation between 0.09 and 0.10
    assert all(math.isnan(v) for v in error_stats([math.nan]))


def test_compare_recomputes_every_error_and_keeps_only_real_rows():
    real = [summary_row(0, "vanilla", 40.0, nav_count=10), summary_row(0, "pipesd", 30.0)]
    sim = [
        summary_row(0, "vanilla", 44.0, nav_count=9),
        summary_row(0, "pipesd", 27.0),
        summary_row(0, "oracle", 10.0),
    ]
    rows = compare(real, sim, ["uplink_mbps"])
    assert [r["policy"] for r in rows] == ["vanilla", "pipesd"]
    assert rows[0]["uplink_mbps"] == "10"
    assert rows[0]["tpt_ms_err"] == pytest.approx(0.1)
    assert rows[0]["nav_count_err"] == pytest.approx(-0.1)
    assert rows[1]["tpt_ms_err"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="no simulated row"):
        compare(real, sim[:1], ["uplink_mbps"])


def test_rankings_and_mismatches_per_point():
    real = [
        summary_row(0, "a", 10.0),
        summary_row(0, "b", 20.0),
        summary_row(1, "a", 30.0),
        summary_row(1, "b", 20.0),
    ]
    same = compare(real, real, [])
    assert rankings(same, "real") == {0: ["a", "b"], 1: ["b", "a"]}
    assert ranking_mismatches(same) == []
    swapped = [summary_row(0, "a", 10.0), summary_row(0, "b", 20.0)]
    swapped += [summary_row(1, "a", 10.0), summary_row(1, "b", 20.0)]
    rows = compare(real, swapped, [])
    assert ranking_mismatches(rows) == [{"point": 1, "real": ["b", "a"], "sim": ["a", "b"]}]
    headline = summarise_validation(rows)
    assert headline["ranking_identical"] is False
    assert headline["tpt_abs_error_median"] == pytest.approx(0.0)  # 0, 0, 2/3, 0
    assert headline["goals_met"] == {"median": True, "p90": False, "ranking": False}


def test_missing_profile_is_one_line_exit_2(write_scenario, tmp_path, capsys):
    scenario = write_scenario()
    argv = ["validate", str(scenario), "--profile", str(tmp_path / "nope.json"), "--target",
            "smollm2-135m", "--draft", "smollm2-135m", "--out", str(tmp_path / "v")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--profile" in err and "not found" in err


def test_bad_shaping_is_one_line_exit_2(write_scenario, tmp_path, capsys):
    scenario = write_scenario()
    argv = ["validate", str(scenario), "--profile", str(scenario), "--shaping", "netem",
            "--target", "a", "--draft", "b", "--out", str(tmp_path / "v")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shaping" in err and "'software'" in err


def test_bad_profile_content_is_one_line_exit_2(write_scenario, tmp_path, capsys):
    scenario = write_scenario()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1}))
    argv = ["validate", str(scenario), "--profile", str(bad), "--target", "smollm2-135m",
            "--draft", "smollm2-135m", "--out", str(tmp_path / "v")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@needs_smollm2
def test_validate_end_to_end_errors_recompute_from_both_sides(write_scenario, tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    from models.truncate import truncate_gguf

    target = smollm2_path()
    draft = truncate_gguf(target, tmp_path / "draft.gguf", 28)
    scenario = write_scenario(
        policies=[{"name": "vanilla"}, {"name": "pipesd", "autotune": False}, {"name": "cloud_ar"}],
        prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 8},
        link={"uplink_mbps": 50.0, "downlink_mbps": 100.0, "one_way_latency_s": 0.002},
    )
    profile = tmp_path / "profile.json"  # the scenario's own profile, named explicitly
    out = tmp_path / "validation"
    argv = ["validate", str(scenario), "--profile", str(profile), "--target", str(target),
            "--draft", str(draft), "--shaping", "software", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "median" in printed and "goal <= 3%" in printed and "cloud_ar" in printed
    real = {r["policy"]: r for r in read_rows(out / "real" / "summary.csv")}
    sim = {r["policy"]: r for r in read_rows(out / "sim" / "summary.csv")}
    assert set(real) == {"vanilla", "pipesd"} and "cloud_ar" in sim
    rows = read_rows(out / "validation.csv")
    assert [r["policy"] for r in rows] == ["vanilla", "pipesd"]
    for row in rows:
        for metric in METRICS:
            r, s = float(real[row["policy"]][metric]), float(sim[row["policy"]][metric])
            assert float(row[f"{metric}_real"]) == r and float(row[f"{metric}_sim"]) == s
            if r != 0:
                assert float(row[f"{metric}_err"]) == pytest.approx((s - r) / r, rel=1e-5)
            else:
                assert row[f"{metric}_err"] == ""
        # the diagnostic: speeds from both sides' results, the re-simulation's error
        speed = float(row["edge_speed"])
        assert plausible(speed) and plausible(float(row["cloud_speed"]))
        at_speed, r = float(row["tpt_ms_sim_at_run_speed"]), float(row["tpt_ms_real"])
        assert float(row["tpt_ms_err_at_run_speed"]) == pytest.approx((at_speed - r) / r, abs=1e-5)
        # the second prediction: each session at the speeds its reference showed before it
        assert plausible(float(row["edge_speed_probe"]))
        assert plausible(float(row["cloud_speed_probe"]))
        probed, r = float(row["tpt_ms_sim_probed"]), float(row["tpt_ms_real"])
        assert float(row["tpt_ms_err_probed"]) == pytest.approx((probed - r) / r, abs=1e-5)
        # the goals' prediction: every session at the compute traces recorded during it
        replayed = float(row["tpt_ms_sim_replayed"])
        assert float(row["tpt_ms_err_replayed"]) == pytest.approx((replayed - r) / r, abs=1e-5)
    for side in ("edge", "cloud"):
        recorded = read_rows(out / "real" / f"compute_{side}.csv")
        assert {(t["policy"], t["request"]) for t in recorded} == {
            ("vanilla", "0"),
            ("pipesd", "0"),
        }
        for trace in recorded:
            factor = float(trace["predicted_s"]) / float(trace["measured_s"])
            assert float(trace["factor"]) == pytest.approx(factor, rel=1e-5) and factor > 0
    written = [p.name for p in (out / "sim" / "compute").iterdir()]
    traces = sorted(n.rsplit("_", 1)[1] for n in written if not n.endswith("_jitter.csv"))
    assert traces == ["cloud.csv"] * 2 + ["edge.csv"] * 2 + ["prefill.csv"] * 2  # 2 sessions
    heard = recorded_jitter(out / "real")  # sessions whose edge timed a message alone
    assert "pipesd" in {policy for _, policy, _ in heard}
    assert sorted(n for n in written if n.endswith("_jitter.csv")) == [
        f"p{point}_{policy}_s{seed}_uplink_jitter.csv" for point, policy, seed in sorted(heard)
    ]
    probes = read_rows(out / "real" / "speeds.csv")
    assert sorted((p["policy"], p["seed"]) for p in probes) == sorted(
        (policy, str(seed)) for policy in ("vanilla", "pipesd") for seed in (1,)
    )
    for probe in probes:
        assert float(probe["draft_s"]) > 0 and float(probe["verify_s"]) > 0
        predicted = float(probe["draft_predicted_s"]) / float(probe["draft_s"])
        assert float(probe["edge_speed"]) == pytest.approx(predicted, rel=1e-5)
    # at the profile's own speeds, the re-simulation is the simulation
    points = validation_points(scenario, profile, [], [])
    draws = json.loads((out / "manifest.json").read_text())["acceptance_draws"]
    assert draws == ACCEPTANCE_DRAWS  # real acceptance: the simulator averages its draws
    same = resimulate(points, {(0, "vanilla", 1): (1.0, 1.0)}, draws)
    assert same[(0, "vanilla")] == pytest.approx(float(sim["vanilla"]["tpt_ms"]), rel=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "at_run_speed_diagnostic" in manifest and "draft/target speeds" in printed
    assert "probed_prediction" in manifest and "second prediction" in printed
    assert manifest["predictions"]["replayed_compute_traces"] is not None
    at_speed = [{**r, "tpt_ms_sim": float(r["tpt_ms_sim_at_run_speed"]), "point": int(r["point"]),
                 "tpt_ms_real": float(r["tpt_ms_real"])} for r in rows]  # fmt: skip
    diagnostic = manifest["at_run_speed_diagnostic"]
    assert diagnostic["ranking_identical"] == (not ranking_mismatches(at_speed))
    errors = [float(r["tpt_ms_err"]) for r in rows]
    assert manifest["tpt_abs_error_median"] == pytest.approx(error_stats(errors)[0], rel=1e-5)
    assert manifest["skipped"] == {"cloud_ar": "not an edge-drafting policy"}
    # real acceptance: every output is the target's own greedy output (validation.lossless)
    lossless = manifest["lossless"]
    assert lossless["checked"] and lossless["passed"] and lossless["requests"] == 2
    assert "lossless check: 2 of 2 requests" in printed and "NAV count |error|" in printed
    assert set(manifest["abs_error_median_p90"]) == set(METRICS)
    assert manifest["profile"]["path"] == str(profile)
    assert json.loads((out / "sim" / "manifest.json").read_text())["profiles"] == {
        str(profile.resolve()): manifest["profile"]["sha256"]
    }


def write_results(path: Path, tpts: dict[str, list[float]]) -> None:
    """A results.csv of one sweep point: per policy, one TPT per (seed 1, request i)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["point", "policy", "seed", "request", "tpt_ms"])
        for policy, values in tpts.items():
            for i, value in enumerate(values):
                writer.writerow([0, policy, 1, i, value])


def test_separated_pairs_are_the_paired_t_test_at_95_percent(tmp_path):
    from scipy.stats import ttest_rel

    noise = [0.3, -0.2, 0.5, -0.4, 0.1, -0.3, 0.2, 0.0]
    base = [30.0 + 3 * i for i in range(8)]  # requests differ a lot; pairs move together
    tpts = {
        "a": base,
        "b": [t + 1.0 + n for t, n in zip(base, noise, strict=True)],  # 1 ms slower, clearly
        "c": [t + n for t, n in zip(base, noise[::-1], strict=True)],  # a tie with a
    }
    write_results(tmp_path / "results.csv", tpts)
    pairs = separated_pairs(tmp_path / "results.csv")
    found = {(faster, slower) for faster, slower, _, _ in pairs[0]}
    for x, y in itertools.combinations("abc", 2):
        p = ttest_rel(tpts[x], tpts[y]).pvalue
        separated = (x, y) in found or (y, x) in found
        assert separated == (p < 0.05), (x, y, p)
    assert ("a", "b") in found and ("c", "b") in found and len(found) == 2
    gap = next(g for f, s, g, _ in pairs[0] if (f, s) == ("a", "b"))
    assert gap == pytest.approx(1.0 + sum(noise) / 8)
    sim_same = [{"point": 0, "policy": p, "tpt_ms_sim": v} for p, v in
                (("a", 10.0), ("b", 12.0), ("c", 9.0))]  # fmt: skip
    verdict = separated_ranking(sim_same, pairs)  # a/c swapped: a tie, not counted
    assert verdict["identical"] and verdict["separated_pairs"] == 2 and verdict["pairs"] == 3
    sim_swapped = [{**row, "tpt_ms_sim": 13.0} if row["policy"] == "a" else row for row in sim_same]
    verdict = separated_ranking(sim_swapped, pairs)
    assert not verdict["identical"]
    assert [(m["faster"], m["slower"]) for m in verdict["mismatches"]] == [("a", "b")]
