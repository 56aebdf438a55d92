"""PipeSD's regime on the testbed: every drafted token carries its whole draft distribution.

The `rows` field of realrun.protocol (float16/32/64 bytes, checked by the server), the server's
body limit derived from the scenario's per-policy payloads and bounded by a ceiling
(realrun.cloud.settings.body_limit_bytes, realrun.testbed_rules.body_limit), and one PipeSD session
with full rows end to end on SmolLM2 through the software shaper: lossless, and the bytes of
the rows really travel.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")

from realrun.cloud.settings import (
    MAX_BODY_CEILING_BYTES,
    ServerSettings,
    body_limit_bytes,
    settings_for_body,
)
from realrun.protocol import Limits, ProtocolError, encode_rows, parse_drafts, parse_verify
from realrun.testbed_rules import body_limit, check_body_limit, full_row_bytes, policy_payload
from simulator.errors import ConfigError
from simulator.scenario import expand_sweep

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "scenarios" / "profiles" / "cpu-testbed.json"
LIMITS = Limits(n_vocab=8, max_body_bytes=1 << 20)


def _rows(tokens: list[int], n_vocab: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.random((len(tokens), n_vocab)) + 0.01
    return rows / rows.sum(axis=1, keepdims=True)


def test_rows_travel_as_packed_floats_and_are_checked():
    tokens = [1, 5, 7]
    rows = _rows(tokens)
    for row_bytes, tolerance in ((2, 1e-3), (4, 1e-7), (8, 1e-7)):
        fields = encode_rows(rows, row_bytes)
        assert len(fields["rows"]) == len(tokens) * 8 * row_bytes
        drafts = parse_drafts({"tokens": tokens, **fields}, LIMITS)
        assert drafts.rows is not None and drafts.rows.shape == (3, 8)
        np.testing.assert_allclose(drafts.rows, rows, atol=tolerance)
    assert parse_drafts({"tokens": tokens}, LIMITS).rows is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f | {"row_bytes": 3}, "row_bytes"),
        (lambda f: f | {"rows": f["rows"][:-2]}, "x 8 x 2 bytes"),
        (lambda f: {"rows": f["rows"]}, "row_bytes"),
        (lambda f: f | {"rows": [0.5]}, "msgpack binary"),
    ],
)
def test_malformed_rows_are_refused(change, message):
    fields = encode_rows(_rows([1, 2]), 2)
    with pytest.raises(ProtocolError) as info:
        parse_drafts({"tokens": [1, 2], **change(fields)}, LIMITS)
    assert info.value.status == 422 and message in info.value.message


def test_rows_must_be_distributions_giving_their_token_mass():
    tokens = [1, 2]
    rows = _rows(tokens)
    no_mass = rows.copy()
    no_mass[0, 1] = 0.0  # token 1 has p = 0 in its own row
    no_mass /= no_mass.sum(axis=1, keepdims=True)
    for bad, message in (
        (rows * 1.2, "sum to 1"),
        (no_mass, "p > 0"),
        (np.full((2, 8), np.nan), "probabilities in [0, 1]"),
    ):
        with pytest.raises(ProtocolError) as info:
            parse_drafts({"tokens": tokens, **encode_rows(bad, 4)}, LIMITS)
        assert info.value.status == 422 and message in info.value.message
    with pytest.raises(ProtocolError, match="need 'tokens'"):
        parse_verify({"session": "s", "n": 0, **encode_rows(rows, 2)}, LIMITS)


def test_body_limit_is_derived_with_a_margin_and_bounded():
    default = ServerSettings.max_body_bytes
    assert body_limit_bytes(1000, "s.toml", "f") == default
    assert body_limit_bytes(1 << 20, "s.toml", "f") == int(1.5 * (1 << 20)) + 4096
    with pytest.raises(ConfigError) as info:
        body_limit_bytes(MAX_BODY_CEILING_BYTES, "s.toml", "policies.pipesd.payload")
    text = str(info.value)
    assert "\n" not in text and text.startswith("s.toml: policies.pipesd.payload: ")
    assert "ceiling of 64 MiB" in text
    settings = settings_for_body(ServerSettings(), 40 << 20)
    assert settings.max_body_bytes == 40 << 20
    # the global budget admits such a body, even in the half left to large bodies
    assert settings.max_buffered_bytes // 2 >= settings.max_body_bytes
    assert settings.body_timeout_s == ServerSettings.body_timeout_s
    # at 10 Mbit/s a 40 MiB body takes 33.6 s: the body timeout grows to 4x that
    slow = settings_for_body(ServerSettings(), 40 << 20, uplink_mbps=10.0)
    assert slow.body_timeout_s == pytest.approx(135.0)


def _scenario(tmp_path: Path, profile: Path = PROFILE, max_draft: int = 16) -> Path:
    path = tmp_path / "full.toml"
    path.write_text(
        f'name = "full"\nprofile = "{profile}"\nseeds = [1]\n'
        f"[edge]\nmax_draft_tokens = {max_draft}\n"
        "[prompts]\ncount = 1\nprompt_len = 41\nmax_new_tokens = 16\n"
        '[[policies]]\nname = "vanilla"\n'
        '[[policies]]\nname = "pipesd"\npayload = { kind = "full" }\n'
    )
    return path


def test_scenario_body_limit_comes_from_the_policy_payloads(tmp_path):
    scenario = expand_sweep(_scenario(tmp_path))[0].scenario
    vanilla, pipesd = scenario.policies
    assert full_row_bytes(scenario, vanilla) is None
    assert full_row_bytes(scenario, pipesd) == 8  # msgpack's 9-byte float64 travels as 8
    largest = policy_payload(scenario, pipesd).batch_bytes(16)
    assert largest > 16 * 49152 * 8
    assert body_limit(scenario) == body_limit_bytes(largest, "", "")
    check_body_limit(scenario, body_limit(scenario), "http://x")
    with pytest.raises(ConfigError) as info:
        check_body_limit(scenario, ServerSettings.max_body_bytes, "http://x")
    assert "\n" not in str(info.value) and f"--max-body-bytes {body_limit(scenario)}" in str(
        info.value
    )


def test_a_scenario_level_full_payload_sends_rows_for_every_policy(tmp_path):
    path = _scenario(tmp_path)
    path.write_text(path.read_text() + '[payload]\nkind = "full"\n')
    scenario = expand_sweep(path)[0].scenario
    assert [full_row_bytes(scenario, e) for e in scenario.policies] == [8, 8]
    path.write_text(path.read_text().replace('kind = "full"\n', 'kind = "token_prob"\n'))
    scenario = expand_sweep(path)[0].scenario  # pipesd's own table still says full
    assert [full_row_bytes(scenario, e) for e in scenario.policies] == [None, 8]


def test_a_scenario_past_the_ceiling_gets_one_line(tmp_path):
    profile = json.loads(PROFILE.read_text())
    profile["payload"]["vocab_size"] = 262_144
    big = tmp_path / "big.json"
    big.write_text(json.dumps(profile))
    scenario = expand_sweep(_scenario(tmp_path, big, max_draft=64))[0].scenario
    with pytest.raises(ConfigError) as info:
        body_limit(scenario)
    text = str(info.value)
    assert "\n" not in text and "policies.pipesd.payload (full, 64 tokens)" in text


# ------------------------------------------------------------------------- end to end


N_NEW = 16
MAX_DRAFT = 8
ROW_BYTES = 2  # float16: 96 KiB per token for SmolLM2's 49,152-token vocabulary


def test_pipesd_full_rows_end_to_end_through_the_software_shaper():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
    from edge_support import THREADS, model_or_skip, open_draft, thread_server

    from calibrate.acceptance import target_greedy
    from models.prompts import default_prompts, format_prompt
    from policies.registry import make_policy, params_model
    from realrun.edge.client import CloudClient, CloudError
    from realrun.edge.executor import run_edge
    from realrun.link.shaping import LinkSpec, SoftwareLink
    from simulator.link import ConstantBandwidth

    model_path = model_or_skip()
    text = default_prompts(1)[0]
    reference = target_greedy(model_path, text, N_NEW, THREADS, stop_at_eos=False)
    per_token = 49152 * ROW_BYTES
    limit = body_limit_bytes(MAX_DRAFT * per_token + 512, "test", "payload")
    settings = settings_for_body(ServerSettings(), limit)
    draft = open_draft(model_path)  # the target itself drafts: long accepted runs
    spec = LinkSpec(ConstantBandwidth(400.0), ConstantBandwidth(400.0), 0.001)
    try:
        with thread_server(
            model_path,
            max_body_bytes=settings.max_body_bytes,
            max_buffered_bytes=settings.max_buffered_bytes,
        ) as url:
            link = SoftwareLink(spec, int(url.rsplit(":", 1)[1]), None)
            prompt = format_prompt(draft, text)
            policy = make_policy("pipesd", params_model("pipesd")(autotune=False), 0)
            with CloudClient(url, transport=link.transport()) as cloud:
                link.start_clock()
                record, output, _ = run_edge(
                    policy, draft, cloud, prompt, N_NEW, max_draft_tokens=MAX_DRAFT,
                    clock_origin=time.perf_counter(), full_rows=ROW_BYTES,
                )  # fmt: skip
                assert output == reference
                assert record.local_tokens == 0 and record.verified >= 1
                # every uploaded token carried its row: at least 96 KiB each
                assert record.uplink_bytes >= record.verified * per_token
                # the bound holds: a message past the derived limit is refused (413)
                session = cloud.open(prompt)["session"]
                too_many = [int(t) for t in reference[:1]] * (MAX_DRAFT * 2)
                rows = np.full((len(too_many), 49152), 1 / 49152)
                with pytest.raises(CloudError) as info:
                    cloud.upload(session, too_many, rows=(rows, ROW_BYTES))
                assert info.value.status == 413
    finally:
        draft.close()


def test_simulator_and_testbed_agree_on_a_stated_row_width(tmp_path):
    """A profile's `row_probability_bytes` is what the testbed packs and what the simulator
    charges per probability of a full row; without it the simulator charges probability_bytes."""
    from simulator.payload import MSGPACK_ARRAY_HEADER_BYTES, payload_for

    scenario = expand_sweep(_scenario(tmp_path))[0].scenario
    _, pipesd = scenario.policies
    payload_profile = scenario.profile.profile.payload
    assert payload_profile.row_probability_bytes == 8  # the CPU testbed's profile states it
    assert full_row_bytes(scenario, pipesd) == 8
    per_token = payload_for(payload_profile, pipesd.payload).per_draft_token
    base = payload_profile.token_id_bytes + MSGPACK_ARRAY_HEADER_BYTES
    assert per_token == base + payload_profile.vocab_size * 8
    unstated = payload_profile.model_copy(update={"row_probability_bytes": None})
    unstated_per_token = payload_for(unstated, pipesd.payload).per_draft_token
    assert unstated_per_token == base + payload_profile.vocab_size * 9
