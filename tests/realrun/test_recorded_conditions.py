"""The testbed refuses what it records rather than emulates (realrun.testbed_rules.
check_recorded_conditions): compute speeds (its models run at the machine's own speed) and the
uplink's jitter (its link has its own), which the run would ignore yet a simulation of the same
scenario apply."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from realrun.local import check_points
from realrun.testbed_rules import check_recorded_conditions
from simulator.errors import ConfigError
from simulator.scenario import expand_sweep

PIPESD = [sys.executable, "-c", "import sys; from pipesd.cli import main; sys.exit(main())"]


def trace(tmp_path: Path, kind: str = "TRACE") -> str:
    path = tmp_path / f"{kind.lower()}.csv"
    text = "jitter_s\n0.001\n" if kind == "JITTER" else "t_s,factor\n0,1.0\n1,0.5\n"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "section, values, field",
    [
        ("edge", {"compute_factor": 0.5}, "edge.compute_factor"),
        ("edge", {"compute_trace": "TRACE"}, "edge.compute_trace"),
        ("edge", {"prefill_compute_trace": "TRACE"}, "edge.prefill_compute_trace"),
        ("cloud", {"compute_factor": 2.0}, "cloud.compute_factor"),
        ("cloud", {"compute_trace": "TRACE"}, "cloud.compute_trace"),
        ("link", {"uplink_jitter": "JITTER"}, "link.uplink_jitter"),
    ],
)
def test_a_compute_speed_is_one_line_naming_its_field(
    write_scenario, tmp_path, section, values, field
):
    values = {k: trace(tmp_path, v) if v in ("TRACE", "JITTER") else v for k, v in values.items()}
    path = write_scenario(**{section: values})
    with pytest.raises(ConfigError) as info:
        check_points(path, expand_sweep(path))
    message = str(info.value)
    assert f"{path}: {field}: must be left unset" in message and "\n" not in message


@pytest.mark.parametrize(
    "group, field",
    [
        ({"compute_factor": 0.5}, "edge_groups[1].compute_factor"),
        ({"compute_spread": 0.2}, "edge_groups[1].compute_spread"),
        ({"compute_trace": "TRACE"}, "edge_groups[1].compute_trace"),
    ],
)
def test_a_group_speed_is_named_with_its_index(write_scenario, tmp_path, group, field):
    group = {k: trace(tmp_path) if v == "TRACE" else v for k, v in group.items()}
    path = write_scenario(edge_groups=[{"count": 2}, {"count": 2, **group}])
    with pytest.raises(ConfigError, match=re.escape(f"{field}: must be left unset")):
        check_recorded_conditions(path, expand_sweep(path))


def test_a_swept_speed_is_refused_and_the_machine_speed_passes(write_scenario):
    path = write_scenario(edge={"compute_factor": 1.0}, cloud={"compute_factor": 1.0})
    check_recorded_conditions(path, expand_sweep(path))  # factor 1 is the machine's speed: accepted
    with pytest.raises(ConfigError, match=r"edge\.compute_factor: must be left unset"):
        check_recorded_conditions(path, expand_sweep(path, [], ["edge.compute_factor=1,0.5"]))
    check_recorded_conditions(path, expand_sweep(path, [], ["cloud.max_batch=1,2"]))


@pytest.mark.parametrize("role", ["local", "edge"])
def test_the_command_line_refuses_before_any_model_loads(write_scenario, tmp_path, role):
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    path = write_scenario(edge={"compute_factor": 0.5})
    model = tmp_path / "model.gguf"  # never read: the scenario is refused first
    model.write_bytes(b"GGUF")
    argv = ["realrun", role, str(path), "--draft", str(model)]
    local = ["--target", str(model), "--quiet"]
    argv += local if role == "local" else ["--server", "http://127.0.0.1:9"]
    argv += ["--out", str(tmp_path / "out")]
    done = subprocess.run([*PIPESD, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "edge.compute_factor" in done.stderr
    assert not (tmp_path / "out").exists()
