"""Per-policy payloads (issue 15.1): the scenario's [payload] is the default, a policy's own
`payload` table overrides it field by field; bad settings are one line naming policy and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.engine import simulate
from simulator.errors import ConfigError
from simulator.payload import MSGPACK_ARRAY_HEADER_BYTES, payload_for
from simulator.scenario import expand_sweep

FULL = {"kind": "full"}


def add_policy(path: Path, lines: str) -> Path:
    """Append a [[policies]] table written in TOML (arrays of tables come last in the file)."""
    path.write_text(path.read_text() + "\n[[policies]]\n" + lines + "\n")
    return path


def test_policy_payload_overrides_the_scenario_default(write_scenario) -> None:
    path = write_scenario(policies=[{"name": "vanilla", "draft_len": 4}], payload=FULL)
    add_policy(path, 'name = "vanilla"\nlabel = "ids"\ndraft_len = 4\npayload.kind = "token_id"')
    add_policy(path, 'name = "picospec"\npayload = { kind = "token_prob", downlink_top_k = 8 }')
    scenario = expand_sweep(path)[0].scenario
    by_label = {entry.label: entry for entry in scenario.policies}
    assert by_label["vanilla"].payload.kind == "full"
    assert by_label["ids"].payload.kind == "token_id"
    assert by_label["picospec"].payload.downlink_top_k == 8
    assert by_label["picospec"].payload.top_k == scenario.model.payload.top_k  # inherited

    up = {
        label: sum(r.uplink_bytes for r in simulate(scenario, entry, 1).records)
        for label, entry in by_label.items()
    }
    # same draft lengths and acceptance: only the bytes per token differ
    assert up["ids"] < up["vanilla"] / 100
    down = {
        label: sum(r.downlink_bytes for r in simulate(scenario, entry, 1).records)
        for label, entry in by_label.items()
    }
    assert down["picospec"] > down["ids"]


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ('{ kind = "everything" }', "policies.vanilla.payload.kind", "full"),
        ("{ top_k = 0 }", "policies.vanilla.payload.top_k", ""),
        ("{ colour = 1 }", "policies.vanilla.payload.colour", ""),
        ("3", "policies.vanilla.payload", "table"),
    ],
)
def test_bad_policy_payload_is_one_line(write_scenario, payload, field, words) -> None:
    path = write_scenario(policies=[{"name": "cloud_ar"}])
    add_policy(path, f'name = "vanilla"\npayload = {payload}')
    with pytest.raises(ConfigError) as error:
        expand_sweep(path)
    message = str(error.value)
    assert "\n" not in message and field in message and words in message


def test_set_blames_the_flag(write_scenario) -> None:
    path = write_scenario(policies=[{"name": "vanilla"}])
    with pytest.raises(ConfigError, match=r"--set.*policies\.vanilla\.payload\.kind"):
        expand_sweep(path, ["policies.vanilla.payload.kind=bad"])


def test_downlink_schemes_for_picospec(write_scenario) -> None:
    """Top-K at every verified position and the bonus one, or exact p(x) and one top-K."""
    path = write_scenario(policies=[{"name": "picospec"}])
    add_policy(
        path,
        'name = "picospec"\nlabel = "exact"\n'
        'payload = { kind = "token_prob", downlink_top_k = 16,'
        ' downlink_scheme = "exact_p_then_topk" }',
    )
    scenario = expand_sweep(path, ["payload.kind=token_prob", "payload.downlink_top_k=16"])[
        0
    ].scenario
    profile = scenario.profile.profile.payload
    every, exact = (payload_for(profile, entry.payload) for entry in scenario.policies)
    top_k = MSGPACK_ARRAY_HEADER_BYTES + 16 * (profile.index_bytes + profile.probability_bytes)
    base = profile.message_header_bytes + 2 * profile.token_id_bytes
    assert every.result_bytes(4) == base + 5 * top_k
    assert exact.result_bytes(4) == base + 4 * profile.probability_bytes + top_k
    assert exact.result_bytes(0) == every.result_bytes(0)
    runs = {e.label: simulate(scenario, e, 1).records for e in scenario.policies}
    down = {label: sum(r.downlink_bytes for r in records) for label, records in runs.items()}
    assert down["exact"] < down["picospec"]
