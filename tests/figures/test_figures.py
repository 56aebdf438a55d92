"""`pipesd figures`: every figure renders from a tiny simulated run, the command writes the
files a run supports, and bad input (missing folders, files, columns, labels) is a ConfigError."""

from __future__ import annotations

import argparse
import csv
import functools
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import figures.readme as readme
from figures.cli import add_parser, run
from figures.dipsd_users import dipsd_figure, sweep_users
from figures.energy import energy_figure
from figures.load import load_run, main_policies
from figures.picospec_topk import picospec_figure
from figures.style import policy_colour, save
from figures.sweeps import bandwidth_figure, compute_figure
from figures.timeline import discarded_drafts, timeline_figure
from figures.trace import trace_figure
from figures.validation import validation_figure
from simulator.errors import ConfigError
from simulator.records import Span
from simulator.runner import run_scenario
from simulator.scenario import expand_sweep

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "scenarios" / "profiles" / "default.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SCENARIO = f"""
name = "tiny"
profile = "{PROFILE}"
seeds = [1]
reference_policy = "vanilla"

[prompts]
count = 2
prompt_len = 32
max_new_tokens = 24

[[policies]]
name = "vanilla"

[[policies]]
name = "pipesd"
autotune = false

[[policies]]
name = "pipesd"
label = "pipesd-no-pipeline"
autotune = false
pipeline = false
"""
TRACE_LINK = """
[link]
uplink_trace = "traces/up.csv"
downlink_trace = "traces/down.csv"
"""


def simulate(folder: Path, text: str, sweeps: list[str], timeline: bool) -> Path:
    """Write a scenario next to `folder`, run it into `folder`, return the run folder."""
    path = folder.with_suffix(".toml")
    path.write_text(text)
    out = folder
    run_scenario(path, expand_sweep(path, [], sweeps), out, ("test",), record_timeline=timeline)
    return out


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two axes (uplink, edge compute), three policies, timelines."""
    axes = ["link.uplink_mbps=10,40", "edge.compute_factor=0.5,1"]
    return simulate(tmp_path_factory.mktemp("runs") / "sweep", SCENARIO, axes, True)


@pytest.fixture(scope="module")
def trace_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on uplink and downlink traces (S4-like, 2 s steps)."""
    folder = tmp_path_factory.mktemp("runs") / "trace"
    traces = folder.parent / "traces"  # inputs beside the run folder: runs write only into new
    traces.mkdir()  # or earlier run folders
    (traces / "up.csv").write_text("t_s,mbps\n0,40\n2,10\n4,80\n")
    (traces / "down.csv").write_text("t_s,mbps\n0,200\n3,150\n")
    return simulate(folder, SCENARIO + TRACE_LINK, [], False)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


def figures_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pipesd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["figures", *argv]))


@pytest.mark.parametrize(
    "make",
    [
        bandwidth_figure,
        compute_figure,
        energy_figure,
        timeline_figure,
        functools.partial(timeline_figure, policies=["pipesd", "vanilla"], rounds=2),
    ],
)
def test_run_figures_render(sweep_run: Path, tmp_path: Path, make) -> None:
    figure = make(load_run(sweep_run))
    assert isinstance(figure, Figure)
    (path,) = save(figure, tmp_path, "figure", ["png"])
    assert_png(path)


def test_trace_figure_renders(trace_run: Path, tmp_path: Path) -> None:
    figure = trace_figure(load_run(trace_run))
    assert len(figure.axes) == 3  # trace, its downlink twin, token rates
    (path,) = save(figure, tmp_path, "trace", ["png"])
    assert_png(path)


def test_model_figures_render(tmp_path: Path) -> None:
    sweep = sweep_users(3)
    assert list(sweep.users) == [1, 2, 3]
    assert all(sweep.dipsd >= sweep.ad)
    for stem, figure in (("dipsd", dipsd_figure(3)), ("picospec", picospec_figure(pairs=1))):
        (path,) = save(figure, tmp_path, stem, ["png"])
        assert_png(path)


def write_validation(path: Path, columns: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def test_validation_scatter(tmp_path: Path) -> None:
    rows = [["vanilla", 0, 210.6, 205.0], ["pipesd", 0, 142.8, 150.1], ["vanilla", 1, 99, 101]]
    path = write_validation(
        tmp_path / "v.csv", ["policy", "point", "tpt_ms_sim", "tpt_ms_real"], rows
    )
    figure = validation_figure(path)
    assert "within ±5%" in figure.axes[0].get_title()
    (png,) = save(figure, tmp_path, "validation", ["png"])
    assert_png(png)
    bad = write_validation(tmp_path / "bad.csv", ["policy", "tpt_ms_sim"], [["vanilla", 1.0]])
    with pytest.raises(ConfigError) as error:
        validation_figure(bad)
    assert error.value.field == "tpt_ms_real"


def write_real_timeline(run_dir: Path, path: Path) -> Path:
    """A testbed-like timeline: a simulated one without the optional columns."""
    columns = ["lane", "start_s", "end_s", "label", "request", "first", "last"]
    timeline = next((run_dir / "timelines").glob("*pipesd_s1.csv"))
    with timeline.open() as source, path.open("w", newline="") as target:
        writer = csv.DictWriter(target, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv.DictReader(source))
    return path


def test_cli_writes_the_figures_each_run_supports(
    sweep_run: Path, trace_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "figs"
    real = write_real_timeline(sweep_run, tmp_path / "real.csv")
    argv = [str(sweep_run), str(trace_run), "--out", str(out), "--format", "png,pdf"]
    assert figures_cli([*argv, "--real-timeline", str(real)]) == 0
    stems = {"tpt_vs_uplink", "tpt_vs_compute", "energy_per_token", "timeline"}
    assert {p.name for p in (out / "sweep").iterdir()} - {"manifest.json"} == {
        f"{stem}.{fmt}" for stem in stems for fmt in ("png", "pdf")
    }
    assert {p.name for p in (out / "trace").iterdir()} - {"manifest.json"} == {
        f"{stem}.{fmt}"
        for stem in ("energy_per_token", "bandwidth_trace")
        for fmt in ("png", "pdf")
    }
    for path in out.glob("*/*.png"):
        assert_png(path)


def test_cli_default_out_and_extra_figures(sweep_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sweep_run, copy)
    validation = write_validation(
        tmp_path / "v.csv", ["policy", "tpt_ms_sim", "tpt_ms_real"], [["pipesd", 100, 102]]
    )
    argv = [str(copy), "--validation", str(validation), "--timeline-policies", "vanilla"]
    assert figures_cli([*argv, "--rounds", "2", "--policies", "pipesd,vanilla"]) == 0
    written = {p.name for p in (copy / "figures").iterdir()} - {"manifest.json"}
    assert written == {
        "tpt_vs_uplink.png",
        "tpt_vs_compute.png",
        "energy_per_token.png",
        "timeline.png",
        "sim_vs_real.png",
    }


def test_cli_readme_figures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    small = ("prompts.count=1", "prompts.max_new_tokens=12", "seeds=[1]")
    runs = {
        name: replace(spec, overrides=spec.overrides + small) for name, spec in readme.RUNS.items()
    }
    monkeypatch.setattr(readme, "RUNS", runs)
    monkeypatch.setattr(readme, "dipsd_figure", functools.partial(dipsd_figure, 2))
    monkeypatch.setattr(readme, "picospec_figure", functools.partial(picospec_figure, 1))
    assert figures_cli(["--readme", "--out", str(tmp_path / "docs")]) == 0
    stems = ("tpt_vs_uplink", "tpt_vs_compute", "energy_per_token", "timeline")
    stems += ("bandwidth_trace", "dipsd_users", "picospec_topk")
    written = {p.name for p in (tmp_path / "docs").iterdir()}
    assert written == {"manifest.json", *(f"{s}.png" for s in stems)}


def test_missing_inputs_are_config_errors(sweep_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run folder not found"):
        figures_cli([str(tmp_path / "nowhere")])
    broken = tmp_path / "broken"
    shutil.copytree(sweep_run, broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(ConfigError, match=r"manifest\.json: file not found"):
        load_run(broken)
    shutil.copy(sweep_run / "manifest.json", broken / "manifest.json")
    summary = broken / "summary.csv"
    with summary.open() as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in rows[0] if c != "tpt_ms"]
    with summary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ConfigError) as error:
        bandwidth_figure(load_run(broken))
    assert error.value.field == "tpt_ms"
    assert "missing column" in str(error.value)
    (broken / "results.csv").unlink()
    shutil.rmtree(broken / "timelines")
    with pytest.raises(ConfigError, match="no timeline files"):
        timeline_figure(load_run(broken))
    with pytest.raises(ConfigError, match=r"results\.csv: file not found"):
        _ = load_run(broken).results


def test_bad_arguments_are_config_errors(sweep_run: Path, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path), "--force"]  # a failed call may leave figures drawn before it
    with pytest.raises(ConfigError, match="unknown format 'jpg'"):
        figures_cli([str(sweep_run), "--format", "png,jpg", *out])
    with pytest.raises(ConfigError, match="no timeline for 'oracle'"):
        figures_cli([str(sweep_run), "--timeline-policies", "oracle", *out])
    with pytest.raises(ConfigError, match="unknown label 'edgellm'"):
        figures_cli([str(sweep_run), "--policies", "edgellm", *out])
    with pytest.raises(ConfigError, match="required when no RUN_DIR"):
        figures_cli(["--picospec"])
    with pytest.raises(ConfigError, match="nothing to draw"):
        figures_cli([])
    twin = tmp_path / "other" / sweep_run.name
    shutil.copytree(sweep_run, twin)
    with pytest.raises(ConfigError, match="two run folders are named"):
        figures_cli([str(sweep_run), str(twin), *out])


def test_variants_are_left_out_of_line_plots(sweep_run: Path) -> None:
    run_data = load_run(sweep_run)
    assert run_data.policies() == ["vanilla", "pipesd", "pipesd-no-pipeline"]
    assert main_policies(run_data) == ["vanilla", "pipesd"]
    assert main_policies(run_data, ["pipesd-no-pipeline"]) == ["pipesd-no-pipeline"]
    assert policy_colour("pipesd") != policy_colour("vanilla")
    assert policy_colour("my-policy") == policy_colour("my-policy")


def test_drafts_not_kept() -> None:
    spans = [
        Span("draft", 0.0, 0.1, "draft", 0, 0, 1),
        Span("draft", 0.1, 0.2, "draft", 0, 1, 2),
        Span("draft", 0.2, 0.3, "draft", 0, 2, 3),
        # proactive token drafted while the NAV for [0, 2) is pending
        Span("draft", 0.3, 0.4, "draft", 0, 3, 4),
        # position 1 rejected; 2 and 3 lie past the rejection and are drafted again
        Span("result", 0.5, 0.5, "1/2 accepted", 0, 0, 2),
        Span("draft", 0.5, 0.6, "draft", 0, 2, 3),
        Span("draft", 0.6, 0.7, "draft", 0, 3, 4),
    ]
    assert discarded_drafts(spans) == {1, 2, 3}
