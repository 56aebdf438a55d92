"""`pipesd realrun local` (realrun/local.py) on SmolLM2-135M, CPU: the cloud server subprocess
starts healthy behind a link and is always stopped (normal exit, exception, Ctrl-C), a dying
server's error quotes its stderr, and a two-point sweep through the software shaper writes the
simulator's schema with the sweep axis as a column and leaves no server process behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")

import httpx
from model_marks import needs_smollm2, smollm2_path

from models.truncate import truncate_gguf
from realrun import local
from realrun.link import netns, shaping
from realrun.local import (
    ACCEPTANCE_MODES,
    SHAPING_MODES,
    LocalOptions,
    ServerError,
    cloud_server,
    free_port,
    run_local,
)
from simulator.runner import summary_columns
from simulator.scenario import expand_sweep

pytestmark = needs_smollm2

KEEP_LAYERS = 28
POLICIES = [{"name": "vanilla"}, {"name": "pipesd", "autotune": False}, {"name": "oracle"}]
PROMPTS = {"count": 1, "prompt_len": 16, "max_new_tokens": 8}
LINK = {"uplink_mbps": 50.0, "downlink_mbps": 100.0, "one_way_latency_s": 0.002}


@pytest.fixture(scope="module")
def target_path() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module")
def draft_path(target_path, tmp_path_factory) -> Path:
    return truncate_gguf(target_path, tmp_path_factory.mktemp("draft") / "d.gguf", KEEP_LAYERS)


@pytest.fixture
def options(target_path, draft_path) -> LocalOptions:
    return LocalOptions(target=target_path, draft=draft_path, shaping="software")


def server_processes(port: int) -> list[int]:
    """Pids of live `realrun.cloud.server` processes started for `port` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if b"realrun.cloud.server" in argv and str(port).encode() in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def link_for(write_scenario, port: int) -> shaping.ShapedLink:
    point = expand_sweep(write_scenario(link=LINK, prompts=PROMPTS))[0]
    return shaping.open_link(shaping.LinkSpec.from_point(point), "software", server_port=port)


def test_modes_are_the_shapers_and_the_testbeds():
    assert SHAPING_MODES == shaping.MODES
    assert ACCEPTANCE_MODES == ("real", "synthetic")


def test_server_is_healthy_inside_and_stopped_after(write_scenario, options, tmp_path):
    port = free_port()
    with link_for(write_scenario, port) as link:
        with cloud_server(link, port, options, tmp_path / "server.log") as server:
            assert server.process.poll() is None
            assert server.health["ok"] is True and server.health["n_vocab"] == 49152
            assert server_processes(port) == [server.process.pid]
        assert server.process.returncode is not None
        assert server_processes(port) == []
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{link.client_url(port)}/v1/health", timeout=1.0)


def test_server_is_stopped_when_the_block_raises(write_scenario, options, tmp_path):
    port = free_port()
    with (
        link_for(write_scenario, port) as link,
        pytest.raises(RuntimeError, match="boom"),
        cloud_server(link, port, options, tmp_path / "server.log") as server,
    ):
        raise RuntimeError("boom")
    assert server.process.returncode is not None and server_processes(port) == []


def test_a_dying_server_is_reported_with_its_stderr(write_scenario, options, tmp_path):
    not_a_model = tmp_path / "model.gguf"
    not_a_model.write_text("not a gguf file")
    bad = LocalOptions(target=not_a_model, draft=options.draft)
    port = free_port()
    with link_for(write_scenario, port) as link, pytest.raises(ServerError) as info:  # noqa: SIM117
        with cloud_server(link, port, bad, tmp_path / "server.log"):
            pass
    message = str(info.value)
    assert "exited with code 2" in message and "model.gguf" in message.splitlines()[-1]
    assert server_processes(port) == []


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_realrun_local_sweep_writes_the_simulators_schema(
    write_scenario, target_path, draft_path, tmp_path
):
    from pipesd.cli import main

    scenario = write_scenario(policies=POLICIES[::2], link=LINK, prompts=PROMPTS)
    out = tmp_path / "local"
    argv = ["realrun", "local", str(scenario), "--target", str(target_path), "--draft",
            str(draft_path), "--shaping", "software", "--sweep", "link.uplink_mbps=20,80",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    points = expand_sweep(scenario, [], ["link.uplink_mbps=20,80"])
    columns, summary = read_rows(out / "summary.csv")
    assert columns == summary_columns(points)
    assert [(r["link.uplink_mbps"], r["policy"]) for r in summary] == [
        ("20", "vanilla"),
        ("80", "vanilla"),
    ]
    assert all(float(r["tpt_ms"]) > 0 and r["seeds"] == "1" for r in summary)
    _, results = read_rows(out / "results.csv")
    assert len(results) == 2 and all(r["new_tokens"] == "8" for r in results)
    timelines = sorted(p.name for p in (out / "timelines").glob("*.csv"))
    assert timelines == ["timeline_p0_0_vanilla_s1.csv", "timeline_p1_0_vanilla_s1.csv"]
    _, spans = read_rows(out / "timelines" / "timeline_p0_0_vanilla_s1.csv")
    reports = [s for s in spans if s["lane"] == "report"]  # the upload reports the policy heard
    assert reports and all(int(s["last"]) >= 1 for s in reports)
    assert all(0 <= float(s["start_s"]) <= float(s["end_s"]) for s in reports)
    columns, compute = read_rows(out / "compute_edge.csv")
    assert columns[-2:] == ["prefill_factor", "decode_factor"] and len(compute) == 2
    for row in compute:  # the request's factor is the mediant of its prefill's and steps'
        low, high = sorted((float(row["prefill_factor"]), float(row["decode_factor"])))
        factor = float(row["factor"])  # 6 significant digits, as the others
        assert 0 < low * (1 - 1e-5) <= factor <= high * (1 + 1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    testbed = manifest["testbed"]
    assert testbed["skipped"] == {"oracle": "needs future acceptance outcomes"}
    assert testbed["shaping"] == "software" and testbed["acceptance"] == "real"
    used = testbed["points"]
    assert [used[p]["link"]["uplink"]["mbps"] for p in ("0", "1")] == [20.0, 80.0]
    assert all(used[p]["link"]["kind"] == "software" for p in ("0", "1"))
    ports = [used[p]["link"]["server_port"] for p in ("0", "1")]
    assert all(server_processes(port) == [] for port in ports)


def test_interrupted_run_keeps_finished_points_and_stops_the_server(
    write_scenario, options, tmp_path, monkeypatch
):
    scenario = write_scenario(policies=POLICIES[:1], link=LINK, prompts=PROMPTS)
    points = expand_sweep(scenario, [], ["link.uplink_mbps=20,80"])
    ports: list[int] = []
    real_testbed = local.run_testbed

    def recorded_free_port() -> int:
        ports.append(free_port())
        return ports[-1]

    def testbed(scenario_path, point, *args, **kwargs):
        if point.index == 1:
            assert len(server_processes(ports[-1])) == 1
            raise KeyboardInterrupt  # as Ctrl-C would, while point 1's server is up
        return real_testbed(scenario_path, point, *args, **kwargs)

    monkeypatch.setattr(local, "free_port", recorded_free_port)
    monkeypatch.setattr(local, "run_testbed", testbed)
    out = tmp_path / "local"
    with pytest.raises(KeyboardInterrupt):
        run_local(scenario, points, options, out, ["test"])
    _, summary = read_rows(out / "summary.csv")
    assert [(r["link.uplink_mbps"], r["policy"]) for r in summary] == [("20", "vanilla")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["testbed"]["finished_points"] == [0]
    assert len(ports) == 2 and all(server_processes(port) == [] for port in ports)


@pytest.mark.root
@pytest.mark.skipif(
    netns.unavailable_reason() is not None,
    reason=f"tbf in network namespaces unavailable: {netns.unavailable_reason()}",
)
def test_realrun_local_through_tbf_runs_the_server_in_its_namespace(
    write_scenario, options, tmp_path
):
    scenario = write_scenario(policies=POLICIES[:1], link=LINK, prompts=PROMPTS)
    points = expand_sweep(scenario)
    tbf = LocalOptions(target=options.target, draft=options.draft, shaping="tbf")
    rows = run_local(scenario, points, tbf, tmp_path / "tbf", ["test"])
    assert [r["policy"] for r in rows] == ["vanilla"] and rows[0]["tpt_ms"] > 0
    used = json.loads((tmp_path / "tbf" / "manifest.json").read_text())["testbed"]["points"]["0"]
    namespace = used["link"]["tbf"]["namespace"]
    assert used["link"]["kind"] == "tbf-netns"
    assert used["server"][:4] == ["ip", "netns", "exec", namespace]
    # uplink bytes are tbf's count over each request: HTTP and TCP/IP headers included
    point = json.loads((tmp_path / "tbf" / "points" / "p0" / "manifest.json").read_text())
    assert point["testbed"]["uplink_bytes"].startswith("the link's counter")
    with (tmp_path / "tbf" / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    for r in results:
        assert int(r["uplink_bytes"]) > 200 * int(r["uplink_messages"])
    assert namespace not in netns.namespaces()  # the link was closed
    assert server_processes(used["link"]["server_port"]) == []
