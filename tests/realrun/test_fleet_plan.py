"""DiP-SD on the many-edge testbed and the fleet's server settings: the plan travels in `open`
(bad seats are one 422 line), a server verifies the plan's batches in turn (synthetic target,
no model), the fleet checks that a plan can be made, the fleet's server gets the scenario's body
limit and the slowest edge's link, and four SmolLM2 edges run DiP-SD's plan end to end."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")

from fastapi.testclient import TestClient
from model_marks import needs_smollm2, smollm2_path

import realrun.fleet as fleet
from realrun.cloud.batching import parse_plan
from realrun.cloud.server import create_app
from realrun.cloud.settings import ServerSettings
from realrun.cloud.synthetic_target import SyntheticTarget
from realrun.fleet import check_fleet, fleet_skip_reason, session_plan
from realrun.local import LocalOptions
from realrun.protocol import decode, encode
from realrun.testbed_rules import body_limit
from simulator.dipsd_plan import fleet_plan, plan_batches
from simulator.engine import simulate
from simulator.errors import ConfigError
from simulator.fleet import edge_specs
from simulator.scenario import expand_sweep

REPO = Path(__file__).resolve().parents[2]
DIPSD = REPO / "scenarios" / "testbed_fleet_dipsd.toml"
PLAN = [[0, 2], [1, 3]]
PIPESD = [sys.executable, "-c", "import sys; from pipesd.cli import main; sys.exit(main())"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "plan",
    [
        [[0, 1]],
        {"batches": [[0, 1]], "edge": 0},
        {"batches": [[0, 1]], "edge": 5, "last": False},
        {"batches": [[0, 1], [1]], "edge": 0, "last": False},
        {"batches": [[0, "a"]], "edge": 0, "last": False},
        {"batches": [[]], "edge": 0, "last": False},
        {"batches": [[0]], "edge": 0, "last": 1},
    ],
)
def test_a_bad_plan_seat_is_one_422_line(plan):
    with pytest.raises(ValueError) as info:
        parse_plan({"prompt": [1], "plan": plan})
    assert "\n" not in str(info.value)
    app = create_app("synthetic", target=SyntheticTarget(n_vocab=1000), rate_limit_per_s=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        status, answer = post(client, "open", {"prompt": [1], "plan": plan})
    assert status == 422 and "plan" in answer["error"], answer


def test_a_plan_seat_parses():
    seat = parse_plan({"plan": {"batches": PLAN, "edge": 2, "last": True}})
    assert seat is not None and seat.batches == ((0, 2), (1, 3)) and seat.edge == 2 and seat.last
    assert parse_plan({"prompt": [1]}) is None


def post(client: TestClient, name: str, body: dict) -> tuple[int, dict]:
    response = client.post(f"/v1/{name}", content=encode(body),
                           headers={"Content-Type": "application/msgpack"})  # fmt: skip
    return response.status_code, decode(response.content)


class Recording(SyntheticTarget):
    """The synthetic target, noting the sessions of every batch it verifies."""

    def __init__(self) -> None:
        super().__init__(n_vocab=1000)
        self.batches: list[list[str]] = []

    def verify_batch(self, sids):  # type: ignore[no-untyped-def]
        self.batches.append(list(sids))
        return super().verify_batch(sids)


def test_the_server_verifies_the_plans_batches_in_turn():
    target = Recording()
    app = create_app("synthetic", target=target, rate_limit_per_s=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        sessions = {}
        for edge in range(4):
            body = {"prompt": [1, 2, 3], "plan": {"batches": PLAN, "edge": edge, "last": True}}
            status, answer = post(client, "open", body)
            assert status == 200, answer
            sessions[edge] = answer["session"]
        other = {"prompt": [1], "plan": {"batches": [[0, 1]], "edge": 0, "last": False}}
        status, answer = post(client, "open", other)
        assert status == 409 and "another DiP-SD plan" in answer["error"]
        done: dict[int, dict] = {}

        def verify(edge: int, delay_s: float) -> None:
            time.sleep(delay_s)
            _, done[edge] = post(
                client, "verify", {"session": sessions[edge], "n": 1, "tokens": [7]}
            )

        # batch (1, 3) is complete first, but (0, 2) has the first turn
        threads = [threading.Thread(target=verify, args=(edge, 0.0 if edge % 2 else 0.5))
                   for edge in range(4)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert all(done[edge]["batch_size"] == 2 for edge in range(4)), done
        edge_of = {sid: edge for edge, sid in sessions.items()}
        assert [sorted(edge_of[sid] for sid in batch) for batch in target.batches] == PLAN
        for edge in range(4):  # every edge's last session: the plan is over
            assert post(client, "close", {"session": sessions[edge]})[0] == 200
        status, answer = post(client, "open", other)
        assert status == 200, answer  # a new plan may start


def options(**changes) -> LocalOptions:
    return LocalOptions(target=Path("t.gguf"), draft=Path("d.gguf"), **changes)


def test_dipsd_runs_on_the_fleet_with_the_simulators_plan():
    points = expand_sweep(DIPSD)
    assert check_fleet(DIPSD, points, options()) == {} and fleet_skip_reason("dipsd") is None
    scenario = points[0].scenario
    plan = fleet_plan(scenario, edge_specs(scenario, 1))
    ours = session_plan(points[0], 1)
    assert ours["batches"] == [list(b) for b in plan_batches(plan)]
    assert ours["lengths"] == list(plan.lengths)


def test_dipsd_without_iid_acceptance_is_one_line(tmp_path):
    text = DIPSD.read_text().replace('kind = "iid"\nrate = 0.7', 'kind = "calibrated"\n'
                                     'confidence = { kind = "beta", a = 3.5, b = 1.0 }\n'
                                     'p_accept = { kind = "power", exponent = 1.0 }')  # fmt: skip
    path = tmp_path / "fleet.toml"
    path.write_text(text.replace('profile = "profiles/', f'profile = "{REPO}/scenarios/profiles/'))
    with pytest.raises(ConfigError) as info:
        check_fleet(path, expand_sweep(path), options())
    assert "acceptance.kind" in str(info.value) and "\n" not in str(info.value)


class Started(Exception):
    """Raised by the fake server once it has seen its arguments."""


def test_the_fleets_server_gets_the_body_limit_the_slowest_link_and_a_slot_per_edge(
    tmp_path, monkeypatch
):
    text = DIPSD.read_text().replace('kind = "token_prob"', 'kind = "full"')
    text = text.replace('name = "dipsd"', 'name = "pipesd"').replace("count = 2", "count = 5")
    path = tmp_path / "fleet.toml"
    path.write_text(text.replace('profile = "profiles/', f'profile = "{REPO}/scenarios/profiles/'))
    point = expand_sweep(path)[0]
    seen = {}

    def fake_server(link, port, options, log_path, rule=None, body_bytes=None, kv_slots=None):
        seen.update(link=link, body_bytes=body_bytes, rule=rule, kv_slots=kv_slots)
        raise Started

    monkeypatch.setattr(fleet, "cloud_server", fake_server)
    with pytest.raises(Started):
        fleet.run_fleet_point(path, point, options(shaping="software"), tmp_path / "p0", [])
    assert seen["body_bytes"] == body_limit(point.scenario) > ServerSettings.max_body_bytes
    assert seen["link"].spec.uplink.at(0.0) == pytest.approx(0.2)  # the slow group's
    assert (seen["rule"].max_batch, seen["rule"].window_s) == (4, 0.002)
    assert seen["kv_slots"] == 10  # one KV slot per edge: no session evicted


@needs_smollm2
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python (extra 'models') is not installed")  # fmt: skip
def test_four_edges_run_dipsds_plan_through_the_software_shaper(tmp_path):
    text = DIPSD.read_text().split('[[policies]]\nname = "vanilla"')[0]
    text = text.replace('reference_policy = "vanilla"', 'reference_policy = "dipsd"')
    path = tmp_path / "fleet.toml"
    path.write_text(text.replace('profile = "profiles/', f'profile = "{REPO}/scenarios/profiles/'))
    model, out = str(smollm2_path()), tmp_path / "out"
    sets = ["--set", "prompts.count=1", "--set", "prompts.max_new_tokens=6"]
    argv = ["realrun", "local", str(path), "--target", model, "--draft", model, *sets]
    argv += ["--acceptance", "synthetic", "--shaping", "software", "--quiet", "--out", str(out)]
    done = subprocess.run([*PIPESD, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_csv(out / "results.csv")
    assert sorted(row["edge"] for row in rows) == ["0", "1", "2", "3"]
    scenario = expand_sweep(path, [s for s in sets if s != "--set"])[0].scenario
    simulated = simulate(scenario, scenario.policies[0], seed=1)
    navs = {str(r.edge): r.navs for r in simulated.records}  # synthetic acceptance: the same
    assert {row["edge"]: int(row["navs"]) for row in rows} == navs
    sizes = [int(row["batch_size"]) for row in read_csv(out / "points" / "p0" / "batches.csv")]
    assert set(sizes) <= {1, 2} and 2 in sizes  # the plan's batches: two edges each
