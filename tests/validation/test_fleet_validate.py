"""`pipesd validate` of a many-edge scenario (validation/fleet*.py): one edge per group
simulates as the scenario does, bad fleet settings are one line (exit 2), the batch term is
measured into the profile, and a two-edge run through the software shaper writes the three
predictions' tables and manifest (and `pipesd revalidate` refuses it in one line)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.profile import load_profile
from simulator.scenario import expand_sweep
from validation.fleet import per_edge, split_point
from validation.replay import simulate_sessions

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "scenarios" / "profiles" / "cpu-testbed.json"
PIPESD = [sys.executable, "-c", "import sys; from pipesd.cli import main; sys.exit(main())"]


def fleet_toml(extra_group: str = "", policies: str = 'name = "vanilla"\ndraft_len = 2') -> str:
    return f"""
name = "fleet_validate_test"
profile = "{PROFILE}"
seeds = [1]
reference_policy = "vanilla"
[link]
uplink_mbps = 5.0
downlink_mbps = 20.0
one_way_latency_s = 0.002
[prompts]
count = 1
prompt_len = 40
max_new_tokens = 8
[payload]
kind = "token_prob"
[cloud]
max_batch = 2
batch_window_s = 0.002
[[edge_groups]]
label = "a"
count = 2
{extra_group}
[[edge_groups]]
label = "b"
count = 1
uplink_mbps = 1.0
[[policies]]
{policies}
"""


def test_one_group_per_edge_simulates_as_the_scenario(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(policies='name = "pipesd"\n[[policies]]\nname = "vanilla"'))
    point = expand_sweep(path)[0]
    split = split_point(point)
    assert [g.count for g in split.scenario.model.edge_groups] == [1, 1, 1]
    key = {(0, "pipesd", 1): per_edge({}, {})}
    records = []
    for moved in (point, split):
        _, done = simulate_sessions([moved], key)[(0, "pipesd")]
        records.append([record for _, _, outcome in done for record in outcome.records])
    assert len(records[0]) == 3 and records[0] == records[1]


def test_an_edge_change_reaches_only_that_edge(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml())
    split = split_point(expand_sweep(path)[0])
    model = per_edge({1: {"compute_factor": 0.5}}, {"compute_factor": 2.0})(split.scenario.model)
    assert [g.compute_factor for g in model.edge_groups] == [None, 0.5, None]
    assert model.cloud.compute_factor == 2.0 and not model.cloud.compute_trace_repeat


def validate(path: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = ["validate", str(path), "--profile", str(PROFILE), "--target", "smollm2-135m"]
    argv += ["--draft", "smollm2-135m", "--acceptance", "synthetic", "--shaping", "software"]
    argv += ["--quiet", "--out", str(out), *flags]
    return subprocess.run([*PIPESD, *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "extra, flags, field",
    [
        ("", ["--rank"], "--rank"),
        ("compute_factor = 2.0", [], "edge_groups[0].compute_factor"),
        ("compute_spread = 0.1", [], "edge_groups[0].compute_spread"),
        ('arrival = "poisson"\nrate_per_s = 1.0', [], "edge_groups[0].arrival"),
    ],
)
def test_bad_fleet_validation_settings_are_one_line_exit_2(tmp_path, extra, flags, field):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(extra))
    done = validate(path, tmp_path / "out", *flags)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and field in done.stderr


def test_the_batch_term_is_measured_into_the_profile(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    from model_marks import smollm2_path

    from calibrate.target_batch import BatchGrid
    from validation.fleet_batch import add_batch_term

    profile = tmp_path / "profile.json"
    profile.write_bytes(PROFILE.read_bytes())
    grid = BatchGrid((1, 2), (1, 3), (32, 48), repetitions=2, warmup=0)
    record = add_batch_term(profile, smollm2_path(), 1, grid, lambda _: None, "test")
    latency = load_profile(profile).profile.target_latency
    assert latency.forward_per_extra_sequence_s == record["forward"]["forward_per_extra_sequence_s"]
    assert latency.prefill_base_s == load_profile(PROFILE).profile.target_latency.prefill_base_s
    notes = load_profile(profile).profile.provenance.notes
    assert "batch sizes [1, 2]" in notes["target_latency.batch"]
    samples = json.loads((tmp_path / "batch.json").read_text())["samples"]
    assert len(samples) == 2 * 2 * 2 * 2 and {s["batch"] for s in samples} == {1, 2}


def validate_with_smollm2(scenario: Path, out: Path) -> None:
    """`pipesd validate` on the fleet scenario: SmolLM2 as target and draft, synthetic
    acceptance, the software shaper; it must exit 0."""
    from model_marks import smollm2_path

    model = str(smollm2_path())
    argv = ["validate", str(scenario), "--profile", str(PROFILE), "--target", model]
    argv += ["--draft", model, "--acceptance", "synthetic", "--shaping", "software", "--quiet"]
    done = subprocess.run([*PIPESD, *argv, "--out", str(out)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_two_edges_validate_through_the_software_shaper(tmp_path):
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")

    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml().replace("count = 2", "count = 1"))
    out = tmp_path / "out"
    validate_with_smollm2(path, out)
    with (out / "fleet_edges.csv").open(newline="") as handle:
        edges = list(csv.DictReader(handle))
    assert sorted(row["edge"] for row in edges) == ["0", "1"]
    for name in ("calibration", "replayed", "run_speed"):
        assert all(float(row[f"sim_tpt_ms_{name}"]) > 0 for row in edges)
    with (out / "fleet_policies.csv").open(newline="") as handle:
        (policy,) = list(csv.DictReader(handle))
    assert float(policy["testbed_mean_batch_size"]) >= 1
    traces = sorted(p.name for p in (out / "sim_replayed" / "compute").iterdir())
    assert traces == [f"p0_vanilla_s1_{side}.csv" for side in ("cloud", "edge0", "edge1")]
    trace = (out / "sim_replayed" / "compute" / "p0_vanilla_s1_edge0.csv").read_text().split()
    assert len(trace) == 3 and trace[1].startswith("0.0,")  # the draft's prefill, then its steps
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fleet"] and manifest["status"] == "complete"
    assert manifest["seeds"] == {"0": [1]} and manifest["command"][1] == "validate"
    assert manifest["scenario"]["sha256"] and manifest["profile"]["sha256"]
    assert set(manifest["headline"]) >= {"calibration", "replayed", "run_speed"}
    assert "| recorded compute traces replayed |" in (out / "fleet_validation.md").read_text()
    again = [*PIPESD, "revalidate", str(out), "--out", str(tmp_path / "again")]
    refused = subprocess.run(again, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "many-edge" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_dipsd_validates_with_the_plan_the_testbed_ran(tmp_path):
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")

    path = tmp_path / "fleet.toml"
    text = fleet_toml(policies='name = "dipsd"').replace('"vanilla"', '"dipsd"')
    path.write_text(text + '[acceptance]\nkind = "iid"\nrate = 0.7\n')
    out = tmp_path / "out"
    validate_with_smollm2(path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dipsd_plan_as_run"]["calibration"] == {"p0_dipsd_s1": True}
    for name in ("calibration", "replayed", "run_speed"):  # all three check the run's plan
        assert manifest["dipsd_plans"][name]["p0_dipsd_s1"]["source"] == "testbed"
        assert manifest["dipsd_plan_as_run"][name] == {"p0_dipsd_s1": True}
    assert "DiP-SD verified the plan the testbed ran" in (out / "fleet_validation.md").read_text()
    with (out / "fleet_edges.csv").open(newline="") as handle:
        assert sorted(row["edge"] for row in csv.DictReader(handle)) == ["0", "1", "2"]
