"""`pipesd run` end to end: result files, their columns, the manifest, sweeps and overrides."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipesd.cli import main
from simulator.metrics import SUMMARY_METRICS
from simulator.runner import plan_tasks
from simulator.scenario import expand_sweep

REQUIRED = [
    "policy",
    "tpt_ms",
    "ttft_ms",
    "tokens_per_s",
    "speedup",
    "acceptance_rate",
    "mean_accepted_len",
    "mean_draft_len",
    "nav_count",
    "uplink_bytes",
    "downlink_bytes",
    "cloud_energy_j",
    "edge_energy_j",
    "radio_energy_j",
]
REPO = Path(__file__).resolve().parents[2]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_sweep_run_writes_every_file(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(
        policies=[{"name": "vanilla"}, {"name": "pipesd", "autotune": False}, {"name": "oracle"}],
        seeds=[1, 2],
        sweep={"link.uplink_mbps": [10.0, 40.0]},
    )
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--timeline"]) == 0
    summary = read_csv(out / "summary.csv")
    assert set(REQUIRED) | {"link.uplink_mbps"} <= set(summary[0])
    assert len(summary) == 2 * 3
    for row in summary:
        if row["policy"] == "vanilla":
            assert float(row["speedup"]) == pytest.approx(1.0)
        assert float(row["tpt_ms"]) > 0
    results = read_csv(out / "results.csv")
    assert len(results) == 2 * 3 * 2 * 3  # points x policies x seeds x requests
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["seeds"] == [1, 2]
    assert len(next(iter(manifest["profiles"].values()))) == 64
    assert {"python", "simpy", "numpy", "pipesd-kit"} <= set(manifest["versions"])
    assert manifest["sweep_axes"] == {"link.uplink_mbps": ["10.0", "40.0"]}
    assert len(list((out / "timelines").glob("*.csv"))) == 2 * 3 * 2


def test_summary_is_computed_from_the_request_rows(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(policies=[{"name": "hsl"}], seeds=[4])
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    rows = read_csv(out / "results.csv")
    summary = read_csv(out / "summary.csv")[0]
    decode = sum(float(r["end_s"]) - float(r["first_token_s"]) for r in rows)
    tokens = sum(int(r["new_tokens"]) - 1 for r in rows)
    assert float(summary["tpt_ms"]) == pytest.approx(1e3 * decode / tokens, rel=1e-5)
    navs = sum(int(r["navs"]) for r in rows)
    assert float(summary["nav_count"]) == navs
    assert float(summary["mean_draft_len"]) == pytest.approx(
        sum(int(r["verified"]) for r in rows) / navs, rel=1e-5
    )


def test_local_tokens_are_summed_per_seed() -> None:
    """The testbed's offline fallback (tokens the edge generated alone) reaches the summary;
    the simulator's edges never lose the cloud, so it is 0 there."""
    from simulator.metrics import summarise
    from simulator.records import RequestRecord

    records = [RequestRecord(request=i, prompt_len=8, new_tokens=10) for i in range(3)]
    records[1].local_tokens = 7
    assert summarise(records, runs=1)["local_tokens"] == 7
    assert summarise(records, runs=2)["local_tokens"] == 3.5


def test_set_override_and_policy_parameter(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(policies=[{"name": "vanilla", "draft_len": 2}])
    fast = expand_sweep(path, ["link.uplink_mbps=100", "policies.vanilla.draft_len=5"])[0]
    assert fast.scenario.model.link.uplink_mbps == 100
    assert fast.scenario.policies[0].params.draft_len == 5


def test_cli_sweep_flag_adds_an_axis(write_scenario) -> None:
    path = write_scenario()
    points = expand_sweep(path, sweeps=["edge.compute_factor=0.5,1,2"])
    assert [p.axes["edge.compute_factor"] for p in points] == [0.5, 1, 2]
    assert len(plan_tasks(points)) == 3


def test_policies_filter_keeps_the_reference(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(policies=[{"name": "vanilla"}, {"name": "hsl"}, {"name": "edgellm"}])
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--policies", "edgellm"]) == 0
    assert [r["policy"] for r in read_csv(out / "summary.csv")] == ["vanilla", "edgellm"]


@pytest.mark.parametrize(
    "name",
    [
        "pipesd_s1",
        "pipesd_s2",
        "pipesd_s3",
        "pipesd_s4",
        "bandwidth_sweep",
        "edge_compute_sweep",
        "many_edges",
        "picospec_qwen",
        "picospec_llama",
        "dipsd_users_sweep",
    ],
)
def test_shipped_scenarios_validate(name: str) -> None:
    points = expand_sweep(REPO / "scenarios" / f"{name}.toml")
    assert points and all(p.scenario.policies for p in points)


def test_shipped_s4_runs_with_traces(tmp_path: Path) -> None:
    path = REPO / "scenarios" / "pipesd_s4.toml"
    out = tmp_path / "s4"
    argv = [
        "run",
        str(path),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "prompts.count=2",
        "--set",
        "seeds=[1]",
        "--policies",
        "pipesd",
    ]
    assert main(argv) == 0
    rows = read_csv(out / "summary.csv")
    assert [r["policy"] for r in rows] == ["vanilla", "pipesd"]
    assert all(set(SUMMARY_METRICS) <= set(r) for r in rows)


def test_policies_command_lists_every_policy(capsys) -> None:
    assert main(["policies"]) == 0
    text = capsys.readouterr().out
    for name in (
        "vanilla",
        "hsl",
        "edgellm",
        "pipesd",
        "pmin",
        "hf_heuristic",
        "oracle",
        "cloud_ar",
    ):
        assert name in text


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"name": "pipesd", "r1": "0.3"}, "r1"),
        ({"name": "pipesd", "pipeline": "yes"}, "pipeline"),
        ({"name": "vanilla", "draft_len": 4.5}, "draft_len"),
    ],
)
def test_policy_parameters_are_not_coerced(write_scenario, entry, field) -> None:
    from simulator.errors import ConfigError

    path = write_scenario(policies=[entry])
    with pytest.raises(ConfigError, match=field):
        expand_sweep(path)


@pytest.mark.parametrize(
    ("argv", "patched", "resume"),
    [
        (["run", "x.toml", "--out", "o"], "command_run", True),
        (["calibrate", "shape-gguf", "--shape", "tiny"], "run_calibrate", False),
    ],
)
def test_ctrl_c_says_interrupted_and_only_a_run_mentions_resume(
    argv, patched, resume, monkeypatch, capsys
):
    import pipesd.cli

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipesd.cli, patched, interrupted)
    assert pipesd.cli.main(argv) == pipesd.cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipesd: interrupted") and ("--resume" in err) == resume


@pytest.mark.parametrize(("module", "extra"), [("torch", "models"), ("fastapi", "realrun")])
def test_a_missing_optional_package_is_one_line_naming_its_extra(
    module, extra, monkeypatch, capsys
):
    import pipesd.cli

    def missing(*_args):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(pipesd.cli, "run_calibrate", missing)
    code = pipesd.cli.main(["calibrate", "shape-gguf", "--shape", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{module} is not installed" in err and f".[{extra}]" in err


def test_a_missing_module_of_the_kit_itself_is_not_hidden(monkeypatch):
    import pipesd.cli

    def missing(*_args):
        raise ModuleNotFoundError("No module named 'simulator.nope'", name="simulator.nope")

    monkeypatch.setattr(pipesd.cli, "run_calibrate", missing)
    with pytest.raises(ModuleNotFoundError):
        pipesd.cli.main(["calibrate", "shape-gguf", "--shape", "tiny"])
