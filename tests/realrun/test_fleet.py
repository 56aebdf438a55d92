"""The many-edge testbed (realrun/fleet.py): bad fleet settings are one line, a two-edge run
through the software shaper writes every edge's requests, and a run killed with SIGKILL leaves
no process and no namespace behind (root)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")

from model_marks import needs_smollm2, smollm2_path

from realrun.fleet import MAX_EDGES, check_fleet
from realrun.link import netns
from realrun.local import LocalOptions
from realrun.testbed_rules import SamplingSpec
from simulator.errors import ConfigError
from simulator.scenario import expand_sweep

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "scenarios" / "profiles" / "cpu-testbed.json"


VANILLA = '[[policies]]\nname = "vanilla"\ndraft_len = 2\n'


def fleet_toml(
    groups: str, policies: str = VANILLA, tokens: int = 4, window_s: float = 0.002
) -> str:
    reference = policies.split('name = "')[1].split('"')[0]
    return f"""
reference_policy = "{reference}"
name = "fleet_test"
profile = "{PROFILE}"
seeds = [1]
[link]
uplink_mbps = 5.0
downlink_mbps = 20.0
one_way_latency_s = 0.002
[prompts]
count = 1
prompt_len = 16
max_new_tokens = {tokens}
[cloud]
max_batch = 2
batch_window_s = {window_s}
{groups}
{policies}
"""


def group(count: int, extra: str = "") -> str:
    return f'[[edge_groups]]\nlabel = "g"\ncount = {count}\n{extra}\n'


def options(**changes) -> LocalOptions:
    return LocalOptions(target=Path("t.gguf"), draft=Path("d.gguf"), **changes)


@pytest.mark.parametrize(
    "groups, change, field",
    [
        (group(MAX_EDGES + 1), {}, "edge_groups"),
        (group(2, 'arrival = "poisson"\nrate_per_s = 1.0'), {}, "edge_groups[0].arrival"),
        (group(2, "start_spread_s = 1.0"), {}, "edge_groups[0].arrival"),
        (group(2), {"sampling": SamplingSpec(0.8)}, "--temperature"),
        (group(2), {"shaping": "carrier-pigeon"}, "--shaping"),
        (group(2), {}, "cloud.batch_window_s"),
    ],
)
def test_bad_fleet_settings_are_one_line(tmp_path, groups, change, field):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(groups, window_s=2.0 if field == "cloud.batch_window_s" else 0.002))
    with pytest.raises(ConfigError) as info:
        check_fleet(path, expand_sweep(path), options(**change))
    assert field in str(info.value) and "\n" not in str(info.value)


def test_a_fleet_of_oracles_only_is_refused(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(group(2), '[[policies]]\nname = "oracle"\n'))
    with pytest.raises(ConfigError, match="no policy the many-edge testbed can run"):
        check_fleet(path, expand_sweep(path), options())


def test_bad_fleet_on_the_command_line_is_one_line_exit_2(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(group(MAX_EDGES + 1)))
    argv = ["realrun", "local", str(path), "--target", "smollm2-135m", "--draft", "smollm2-135m"]
    argv += ["--quiet", "--out", str(tmp_path / "out")]
    done = subprocess.run([*PIPESD, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "edge_groups" in done.stderr
    assert not (tmp_path / "out").exists()


PIPESD = [sys.executable, "-c", "import sys; from pipesd.cli import main; sys.exit(main())"]


def run_command(scenario: Path, out: Path, shaping: str) -> list[str]:
    model = str(smollm2_path())
    argv = ["realrun", "local", str(scenario), "--target", model, "--draft", model]
    argv += ["--acceptance", "synthetic", "--shaping", shaping, "--quiet", "--out", str(out)]
    return [*PIPESD, *argv]


@needs_smollm2
def test_two_edges_share_one_cloud_through_the_software_shaper(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(group(2)))
    out = tmp_path / "out"
    done = subprocess.run(run_command(path, out, "software"), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["edge"] for row in rows) == ["0", "1"]
    assert all(int(row["new_tokens"]) == 4 for row in rows)
    with (out / "points" / "p0" / "batches.csv").open(newline="") as handle:
        sizes = [int(row["batch_size"]) for row in csv.DictReader(handle)]
    assert sizes and all(1 <= size <= 2 for size in sizes)  # [cloud] max_batch = 2


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_smollm2
@pytest.mark.skipif(netns.unavailable_reason() is not None,
                    reason=f"kernel shaping unavailable: {netns.unavailable_reason()}")  # fmt: skip
def test_a_killed_fleet_run_leaves_nothing_behind(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_toml(group(2), tokens=64))
    run = subprocess.Popen(run_command(path, tmp_path / "out", "tbf"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    prefix = f"{netns.PREFIX}{run.pid}-"
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out").glob("points/p0/edges/*/e*/ready")):
            assert run.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
        started = descendants(run.pid)
        assert sum(1 for n in netns.namespaces() if n.startswith(prefix)) == 2
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in started) or any(n.startswith(prefix) for n in netns.namespaces()):
        assert time.monotonic() < deadline, "processes or namespaces outlived the killed run"
        time.sleep(0.1)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_fleet_comparison_matches_edges_and_reports_errors(tmp_path, capsys):
    from realrun.fleet_compare import compare, main

    def row(edge: int, tpt: float, end: float, busy: float) -> dict[str, object]:
        return {"point": 0, "policy": "vanilla", "seed": 1, "edge": edge, "request": 0,
                "start_s": 0.0, "end_s": end, "new_tokens": 10, "tpt_ms": tpt,
                "cloud_busy_s": busy}  # fmt: skip

    def nav(edge: int, size: int) -> dict[str, object]:
        return {"policy": "vanilla", "seed": 1, "edge": edge, "batch_size": size}

    sim, bed = tmp_path / "sim", tmp_path / "bed"
    write_csv(sim / "results.csv", [row(0, 11.0, 1.0, 0.5), row(1, 18.0, 2.0, 0.5)])
    write_csv(sim / "summary.csv", [{"point": 0, "policy": "vanilla", "mean_batch_size": 1.5}])
    write_csv(bed / "results.csv", [row(0, 10.0, 1.0, 1.0), row(1, 20.0, 4.0, 1.0),
                                    row(2, 5.0, 1.0, 0.0)])  # fmt: skip
    write_csv(bed / "points" / "p0" / "batches.csv", [nav(0, 2), nav(1, 2), nav(2, 1)])
    edges, fleets = compare(sim, bed)
    assert [e["edge"] for e in edges] == ["0", "1"]  # edge 2 only on one side
    assert [round(e["tpt_error"], 6) for e in edges] == [0.1, -0.1]
    (fleet,) = fleets
    assert fleet["tpt_abs_error_median"] == pytest.approx(0.1)
    assert fleet["tpt_abs_error_p90"] == pytest.approx(0.1)
    assert fleet["sim_tokens_per_s"] == 10.0 and fleet["testbed_tokens_per_s"] == 5.0
    assert fleet["sim_cloud_utilisation"] == 0.5 and fleet["testbed_cloud_utilisation"] == 0.5
    # 3 prefills alone and 3 NAVs in 2 batches (one of 2, counted through its two NAVs)
    assert fleet["sim_mean_batch_size"] == 1.5 and fleet["testbed_mean_batch_size"] == 1.2
    out = tmp_path / "table.csv"
    assert main([str(sim), str(bed), "--out", str(out)]) == 0
    assert "median 10.0%" in capsys.readouterr().out
    assert out.is_file() and (tmp_path / "table_fleet.csv").is_file()
