"""Recorded compute traces (issue 19): what the testbed records per request
(realrun.edge.speed_probe.request_speed), how a session's rows become a trace
(validation.replay), and `pipesd revalidate` replaying them beside the other two predictions."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from pipesd.cli import main
from realrun.edge.speed_probe import request_speed
from realrun.request_costs import compute_rows
from simulator.profile import DraftLatency, TargetLatency
from simulator.records import RequestRecord, Span
from simulator.scenario import expand_sweep
from validation.replay import recorded_traces, trace_rows, with_traces
from validation.replay_jitter import recorded_jitter, write_jitter

REPO = Path(__file__).resolve().parents[2]
RUN11 = REPO / "docs" / "validation" / "cpu-run11"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_request_speed_sets_each_step_against_the_profile() -> None:
    draft = DraftLatency(
        prefill_base_s=0.01,
        prefill_per_token_s=0.001,
        decode_base_s=0.004,
        decode_per_context_token_s=1e-5,
    )
    target = TargetLatency(prefill_base_s=0.02, prefill_per_token_s=0.001, forward_base_s=0.05,
                           forward_per_token_s=0.002, forward_per_context_token_s=1e-4)  # fmt: skip
    record = RequestRecord(request=0, prompt_len=10, start_s=1.5)
    record.cloud_busy_s = 0.2
    spans = [
        Span("draft", 1.5, 1.53, "prefill", 0),  # predicted 0.02: 1.5x slower
        Span("draft", 1.53, 1.536, "draft", 0, 0, 1),  # predicted 0.0041
        Span("draft", 1.536, 1.542, "draft", 0, 1, 2),  # predicted 0.00411
        Span("uplink", 1.542, 1.6, "NAV", 0, 0, 2),  # not compute
        Span("cloud", 1.542, 1.7, "NAV", 0, 0, 2),  # forward over 3 positions, context 10
    ]
    speed = request_speed(record, spans, draft, target)
    assert speed.start_s == 1.5
    assert speed.edge_s == pytest.approx(0.042)
    assert speed.edge_predicted_s == pytest.approx(0.02 + 0.0041 + 0.00411)
    assert speed.cloud_s == 0.2
    assert speed.cloud_predicted_s == pytest.approx(target.forward_s(3, 10))
    assert speed.edge_factor == pytest.approx(speed.edge_predicted_s / 0.042)
    record.cloud_busy_s = 0.0
    assert request_speed(record, spans, draft, target).cloud_factor != 1.0  # NaN: none timed


def test_request_speed_sets_the_prefill_and_the_steps_apart(write_scenario) -> None:
    """The prefill and the draft steps (offline ones too) each against the profile; a tuner
    span counts in the whole draft lane only (as the first compute traces recorded it)."""
    draft = DraftLatency(prefill_base_s=0.01, prefill_per_token_s=0.001, decode_base_s=0.004,
                         decode_per_context_token_s=1e-5)  # fmt: skip
    target = TargetLatency(prefill_base_s=0.02, prefill_per_token_s=0.001, forward_base_s=0.05,
                           forward_per_token_s=0.002, forward_per_context_token_s=1e-4)  # fmt: skip
    record = RequestRecord(request=0, prompt_len=10, start_s=0.0)
    spans = [
        Span("draft", 0.0, 0.01, "prefill", 0),  # predicted 0.02: twice as fast
        Span("draft", 0.01, 0.02, "draft", 0, 0, 1),  # predicted 0.0041
        Span("draft", 0.02, 0.021, "tuner", 0, 0, 1),  # predicted as a step in the whole
        Span("draft", 0.021, 0.031, "local", 0, 1, 2),  # predicted 0.00411
    ]
    speed = request_speed(record, spans, draft, target)
    assert (speed.prefill_s, speed.prefill_predicted_s) == pytest.approx((0.01, 0.02))
    assert speed.prefill_factor == pytest.approx(2.0)
    assert (speed.decode_s, speed.decode_predicted_s) == pytest.approx((0.02, 0.00821))
    assert speed.decode_factor == pytest.approx(0.00821 / 0.02)
    assert speed.edge_s == pytest.approx(0.031)
    assert speed.edge_predicted_s == pytest.approx(0.02 + 0.00821 + 0.0041)
    only_prefill = request_speed(record, spans[:1], draft, target)
    assert math.isnan(only_prefill.decode_factor)
    profile = expand_sweep(write_scenario())[0].scenario.profile.profile
    row = compute_rows({"point": 0}, record, spans[:1], profile)["edge"]
    assert row["prefill_factor"] > 0 and math.isnan(row["decode_factor"])  # written empty


def test_a_split_edge_trace_replays_its_prefill_and_its_steps_apart(
    write_scenario, tmp_path: Path
) -> None:
    """Where compute_edge.csv holds the split columns the edge gets two traces (an empty cell
    skipped); without them, one from `factor`. The change sets both scenario fields."""
    head = "point,policy,seed,request,t_s,measured_s,predicted_s,factor"
    (tmp_path / "compute_cloud.csv").write_text(f"{head}\n0,a,1,0,0.0,1,1,1.0\n")
    edge = tmp_path / "compute_edge.csv"
    edge.write_text(f"{head}\n0,a,1,0,0.0,1,1,0.9\n0,a,1,1,2.0,1,1,0.8\n")
    assert recorded_traces(tmp_path)[(0, "a", 1)]["edge"] == [(0.0, 0.9), (2.0, 0.8)]
    assert "edge_prefill" not in recorded_traces(tmp_path)[(0, "a", 1)]
    split = f"{head},prefill_factor,decode_factor\n0,a,1,0,0.0,1,1,0.9,1.2,0.7\n"
    edge.write_text(split + "0,a,1,1,2.0,1,1,0.8,1.1,\n")
    traces = recorded_traces(tmp_path)[(0, "a", 1)]
    assert traces["edge"] == [(0.0, 0.7)]
    assert traces["edge_prefill"] == [(0.0, 1.2), (2.0, 1.1)]
    assert traces["cloud"] == [(0.0, 1.0)]
    paths = {side: tmp_path / f"{side}.csv" for side in ("edge", "edge_prefill", "cloud")}
    model = with_traces(paths)(expand_sweep(write_scenario())[0].scenario.model)
    assert model.edge.compute_trace == str(paths["edge"])
    assert model.edge.prefill_compute_trace == str(paths["edge_prefill"])
    assert model.cloud.compute_trace == str(paths["cloud"])
    assert not model.edge.compute_trace_repeat and not model.cloud.compute_trace_repeat


def test_trace_rows_start_at_zero_increase_and_stay_in_bounds() -> None:
    rows = trace_rows([(0.4, 0.9), (2.0, 0.8), (2.0, 0.7), (3.5, 1e9)])
    assert rows == [
        {"t_s": 0.0, "factor": 0.9},
        {"t_s": 2.0, "factor": 0.7},
        {"t_s": 3.5, "factor": 1e6},
    ]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded manifests hold paths relative to the repository root."""
    monkeypatch.chdir(REPO)


def test_revalidate_replays_recorded_traces_beside_the_other_predictions(
    in_repo, tmp_path, capsys
) -> None:
    """Run 11 recorded no traces: one line says so. Given traces holding each session's
    mean run speed, the replayed prediction is the mean-run-speed one exactly."""
    old = tmp_path / "old"
    assert main(["revalidate", str(RUN11), "--quiet", "--out", str(old)]) == 0
    printed = capsys.readouterr().out
    assert "no compute traces recorded in this run" in printed
    assert "calibration alone" in printed and "at mean run speed" in printed
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["predictions"]["replayed_compute_traces"] is None
    rows = read_rows(old / "validation.csv")
    assert all(row["tpt_ms_sim_replayed"] == "" for row in rows)

    source = tmp_path / "run11"
    shutil.copytree(RUN11, source)
    seeds = sorted({r["seed"] for r in read_rows(source / "real" / "results.csv")})
    for side in ("edge", "cloud"):
        traced = [
            {"point": r["point"], "policy": r["policy"], "seed": seed, "request": 0,
             "t_s": t, "factor": r[f"{side}_speed"]}
            for r in rows for seed in seeds for t in (0.0, 5.0)
        ]  # fmt: skip
        with (source / "real" / f"compute_{side}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(traced[0]))
            writer.writeheader()
            writer.writerows(traced)
    assert recorded_traces(source / "real") is not None
    new = tmp_path / "new"
    assert main(["revalidate", str(source), "--quiet", "--out", str(new)]) == 0
    printed = capsys.readouterr().out
    assert "recorded compute traces replayed (goals)" in printed
    assert "no compute traces recorded" not in printed
    for row in read_rows(new / "validation.csv"):
        replayed = float(row["tpt_ms_sim_replayed"])
        assert replayed == pytest.approx(float(row["tpt_ms_sim_at_run_speed"]), rel=1e-4)
    predictions = json.loads((new / "manifest.json").read_text())["predictions"]
    assert predictions["goals_apply_to"] == "replayed_compute_traces"
    replayed, mean = predictions["replayed_compute_traces"], predictions["mean_run_speed"]
    assert replayed["tpt_abs_error_median"] == pytest.approx(mean["tpt_abs_error_median"], abs=1e-3)
    assert sorted(p.name for p in (new / "sim" / "compute").iterdir())[0].endswith("_cloud.csv")


def test_acceptance_draws_average_the_sessions_simulated_with_their_draw_seeds(
    write_scenario, tmp_path
) -> None:
    from simulator.runner import run_scenario
    from validation.draws import acceptance_draws, draw_seeds, with_draws
    from validation.replay import resimulate_sessions
    from validation.validate import validation_points

    assert draw_seeds(3, 3) == [3, 1_000_003, 2_000_003] and draw_seeds(5, 1) == [5]
    with pytest.raises(ValueError):
        draw_seeds(1, 0)
    assert acceptance_draws("real") > 1 and acceptance_draws("synthetic") == 1
    scenario = write_scenario(prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 24})
    points = validation_points(scenario, tmp_path / "profile.json", [], [])
    same = {(0, "vanilla", 1): lambda model: model}
    one, three = (resimulate_sessions(points, same, n)[(0, "vanilla")] for n in (1, 3))
    drawn = with_draws(points, 3)
    assert list(drawn[0].scenario.model.seeds) == draw_seeds(1, 3)
    assert list(points[0].scenario.model.seeds) == [1]  # the real side's points unchanged
    run_scenario(scenario, drawn, tmp_path / "sim", ["test"])
    summary = read_rows(tmp_path / "sim" / "summary.csv")
    assert three == pytest.approx(float(summary[0]["tpt_ms"]), rel=1e-5)
    assert one != pytest.approx(three, rel=1e-6)  # the assumed Beta model is random per seed


RUN26 = REPO / "docs" / "validation" / "cpu-run26-notune005"


def test_recorded_jitter_is_each_sessions_reports_less_their_median(tmp_path) -> None:
    folder = tmp_path / "real" / "timelines"
    folder.mkdir(parents=True)
    spans = [
        Span("report", 1.0, 1.020, "upload", 0, 0, 1),
        Span("draft", 1.0, 1.5, "draft", 0),
        Span("report", 2.0, 2.025, "upload", 0, 0, 2),
        Span("report", 3.0, 3.060, "upload", 1),
    ]
    sessions = {"timeline_p0_1_pipesd_s3.csv": spans, "timeline_p0_0_vanilla_s3.csv": []}
    for name, rows in sessions.items():
        with (folder / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(Span._fields)
            writer.writerows(rows)
    samples = recorded_jitter(tmp_path / "real")
    assert list(samples) == [(0, "pipesd", 3)]  # vanilla heard no report: no jitter
    assert samples[(0, "pipesd", 3)] == pytest.approx([-0.005, 0.0, 0.035])
    paths = write_jitter(samples, tmp_path / "compute")
    assert paths[(0, "pipesd", 3)].read_text().splitlines()[0] == "jitter_s"
    model = expand_sweep(REPO / "scenarios" / "pipesd_s1.toml")[0]
    changed = with_traces({}, paths[(0, "pipesd", 3)])(model.scenario.model)
    assert changed.link.uplink_jitter == str(paths[(0, "pipesd", 3)])
    assert changed.edge == model.scenario.model.edge


def test_revalidate_replays_the_upload_spread_a_timeline_recorded(in_repo, tmp_path) -> None:
    """Run 26 kept its upload reports: the replayed prediction draws the uplink's jitter from
    them (sim/compute/, the manifest lists it); without the timelines it replays none."""
    out = tmp_path / "with"
    assert main(["revalidate", str(RUN26), "--quiet", "--out", str(out)]) == 0
    name = "p0_pipesd-no-autotune_s1_uplink_jitter.csv"
    assert json.loads((out / "manifest.json").read_text())["replayed_uplink_jitter"] == [name]
    written = [float(r["jitter_s"]) for r in read_rows(out / "sim" / "compute" / name)]
    recorded = recorded_jitter(RUN26 / "real")[(0, "pipesd-no-autotune", 1)]
    assert written == recorded and len(written) == 1021
    source = tmp_path / "run26"
    shutil.copytree(RUN26, source, ignore=shutil.ignore_patterns("timelines"))
    plain = tmp_path / "without"
    assert main(["revalidate", str(source), "--quiet", "--out", str(plain)]) == 0
    assert json.loads((plain / "manifest.json").read_text())["replayed_uplink_jitter"] == []
    with_jitter, without = (
        float(read_rows(folder / "validation.csv")[0]["tpt_ms_sim_replayed"])
        for folder in (out, plain)
    )
    assert with_jitter != without
