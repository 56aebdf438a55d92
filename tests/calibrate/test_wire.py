"""calibrate.wire: bytes per testbed message from tbf's counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibrate.wire import (
    PROBABILITY_BYTES,
    WireMeasurement,
    ack_share,
    measure_wire,
    msgpack_int_bytes,
    payload_values,
)
from realrun.link import netns

msgpack = pytest.importorskip("msgpack")


@pytest.mark.parametrize("vocab", [2, 100, 128, 129, 256, 257, 49152, 65536, 65537, 262144])
def test_msgpack_int_bytes_is_msgpacks_own_size(vocab: int) -> None:
    assert msgpack_int_bytes(vocab) == len(msgpack.packb(vocab - 1))


def test_payload_values_subtract_the_tokens() -> None:
    m = WireMeasurement(40, 4, 1045.0, 3.0, 109.0, 523.0, 3.0, 60.0, framing=1.045)
    values = payload_values(m, 49152)
    assert values["payload.token_id_bytes"] == 3
    assert values["payload.probability_bytes"] == PROBABILITY_BYTES
    assert values["payload.message_header_bytes"] == round(1000.0 - 4 * 12)


@pytest.mark.skipif(netns.unavailable_reason() is not None, reason="needs root, ip and tc")
def test_measure_wire_through_tbf(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from models.registry import resolve_model
    from models.truncate import truncate_gguf

    model = truncate_gguf(resolve_model("smollm2-135m"), tmp_path / "tiny.gguf", 2)
    m = measure_wire(str(model), messages=10, say=lambda _: None)
    # a request and its answer, with headers: more than the msgpack bodies, a few packets
    assert m.uplink_wire_bytes > m.uplink_body_bytes + 200
    assert m.downlink_wire_bytes > m.downlink_body_bytes + 150
    assert 1.0 <= m.uplink_packets <= 6.0
    values = payload_values(m, 49152)
    assert values["payload.message_header_bytes"] > 200
    # the edge's ACKs of each 2-frame answer, captured on the veth: a few tens of percent
    assert 0.1 < m.uplink_ack_share < 0.5 and values["payload.message_ack_bytes"] > 50


def test_ack_share_counts_the_sources_frames_without_payload() -> None:
    frames = [("10.0.0.1", 294, 228), ("10.0.0.1", 175, 109), ("10.0.0.2", 66, 0),
              ("10.0.0.1", 66, 0), ("10.0.0.1", 65, 0)]  # fmt: skip
    assert ack_share(frames, "10.0.0.1") == pytest.approx(131 / 600)
    assert ack_share([], "10.0.0.1") == 0.0


def test_payload_values_split_the_acks_off_the_header() -> None:
    m = WireMeasurement(40, 4, 1045.0, 4.0, 109.0, 523.0, 3.0, 60.0, 1.045, uplink_ack_share=0.2)
    values = payload_values(m, 49152)
    assert values["payload.message_ack_bytes"] == 200
    assert values["payload.message_header_bytes"] == round(1000.0 - 200 - 4 * 12)
