"""`calibrate wire --session` (calibrate/wire_session.py): the message sizes of real edge
sessions; the arithmetic on a written results.csv, the session's scenario point, and one
session through tbf where this machine can shape."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from calibrate.wire_session import (
    ONE_MESSAGE_PER_NAV,
    SESSION_MBPS,
    SESSION_SEED,
    session_payload_values,
    session_point,
    session_wire,
)
from pipesd.cli import main
from realrun.link import netns
from simulator.errors import ConfigError


def write_results(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["navs", "verified", "prompt_len", "uplink_bytes"])
        writer.writeheader()
        writer.writerows(rows)


def test_session_wire_takes_the_tokens_and_prompt_ids_off_every_message(tmp_path) -> None:
    """Two requests built from known sizes: header 380 before each message, ACKs 60 after,
    12 bytes per verified token, 3 per prompt id; the prompt's upload counts as a message."""
    rows = []
    for navs, verified, prompt_len in ((10, 30, 40), (7, 21, 33)):
        uplink = (navs + 1) * (380 + 60) + verified * 12 + prompt_len * 3
        rows.append({"navs": navs, "verified": verified, "prompt_len": prompt_len,
                     "uplink_bytes": uplink})  # fmt: skip
    write_results(tmp_path / "results.csv", rows)
    total = sum(float(r["uplink_bytes"]) for r in rows)  # type: ignore[arg-type]
    share = 60 * 19 / total  # the ACK bytes' share of everything sent
    m = session_wire(tmp_path / "results.csv", 12, 3, share, ("vanilla",))
    assert m.messages == 19 and m.requests == 2
    assert m.per_message_bytes == pytest.approx(440.0)
    assert m.ack_bytes == pytest.approx(60.0) and m.header_bytes == pytest.approx(380.0)
    assert session_payload_values(m) == {
        "payload.message_header_bytes": 380,
        "payload.message_ack_bytes": 60,
    }
    write_results(tmp_path / "empty.csv", [])
    with pytest.raises(ConfigError, match="no request was run"):
        session_wire(tmp_path / "empty.csv", 12, 3, 0.1, ())


def test_session_point_keeps_one_message_policies_at_a_fast_constant_link(write_scenario):
    path = write_scenario(
        policies=[{"name": "vanilla"}, {"name": "pipesd"}, {"name": "edgellm"}],
        link={"uplink_mbps": 0.05, "downlink_mbps": 2.0},
        sweep={"link.uplink_mbps": [0.05, 0.2]},
    )
    point = session_point(path, 3)
    model = point.scenario.model
    assert [p.name for p in point.scenario.policies] == ["vanilla", "edgellm"]
    assert all(p.name in ONE_MESSAGE_PER_NAV for p in point.scenario.policies)
    assert model.link.uplink_mbps == model.link.downlink_mbps == SESSION_MBPS
    assert model.seeds == [SESSION_SEED] and model.prompts.count == 3
    only_pipesd = write_scenario(policies=[{"name": "pipesd"}], name="p.toml")
    with pytest.raises(ConfigError, match="one message per NAV"):
        session_point(only_pipesd, 1)


def test_session_needs_a_draft_and_a_scenario(tmp_path, capsys) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    out = str(tmp_path / "part.json")
    assert main(["calibrate", "wire", "--session", "x.toml", "--out", out]) == 2
    assert "--draft" in capsys.readouterr().err
    argv = ["calibrate", "wire", "--session", str(tmp_path / "no.toml"), "--draft",
            "smollm2-135m", "--out", out]  # fmt: skip
    assert main(argv) == 2
    assert "scenario file not found" in capsys.readouterr().err


@pytest.mark.skipif(netns.unavailable_reason() is not None, reason="needs root, ip and tc")
def test_session_through_tbf(write_scenario, tmp_path) -> None:
    """A short real session (a 2-block draft and target cut from SmolLM2): bytes per message
    beyond the tokens like an HTTP request's, a share of them in ACKs."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    from calibrate.wire_session import measure_session_wire
    from models.registry import resolve_model
    from models.truncate import truncate_gguf
    from realrun.local import LocalOptions

    model = truncate_gguf(resolve_model("smollm2-135m"), tmp_path / "tiny.gguf", 2)
    path = write_scenario(
        policies=[{"name": "vanilla"}],
        prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 8},
        payload={"kind": "token_prob"},
    )
    m = measure_session_wire(
        path, LocalOptions(target=model, draft=model), tmp_path / "run", 1, lambda _: None
    )
    assert m.requests == 1 and m.messages >= 2
    assert 250 < m.per_message_bytes < 900
    assert 0.05 < m.ack_share < 0.5 and 0 < m.ack_bytes < m.header_bytes
