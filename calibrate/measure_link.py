"""Measure the path between edge and cloud: `measure_link` (rate, latency, per-message
overhead) and `measure_wire` (bytes per testbed message on the wire), each from typed options.

Both need the testbed's optional packages (httpx; llama.cpp for the server), imported when a
measurement runs, so the command line builds without them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibrate import wire, wire_session
from calibrate.assemble import Part, new_part
from calibrate.link import LinkMeasurements, NavOverhead, nav_overhead, probe_link
from calibrate.options import LinkOptions, WireOptions
from models.registry import resolve_model
from realrun.local import LocalOptions, cloud_server, free_port
from simulator.errors import ConfigError
from simulator.link import ConstantBandwidth
from simulator.provenance import package_versions
from simulator.scenario import expand_sweep

Say = Callable[[str], None]


def _probe_testbed(options: LinkOptions, say: Say) -> tuple[LinkMeasurements, NavOverhead]:
    """Probe a server started behind the scenario's link (first sweep point), shaped as
    `options.testbed_shaping` says."""
    from realrun.link.shaping import LinkSpec, open_link  # needs httpx (extra 'realrun')

    assert options.testbed is not None  # LinkOptions: exactly one of server and testbed
    rate = ConstantBandwidth(options.testbed_mbps)
    spec = LinkSpec.from_point(expand_sweep(options.testbed, [])[0])
    spec = dataclasses.replace(spec, uplink=rate, downlink=rate)
    model = resolve_model(str(options.model))
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_link(spec, options.testbed_shaping, server_port=port) as link,
    ):
        server_options = LocalOptions(target=model, draft=model)
        with cloud_server(link, port, server_options, Path(tmp) / "server.log"):
            url = link.client_url(port)
            say(f"testbed link: {link.describe()['kind']}, server at {url}")
            probed = probe_link(
                url, list(options.sizes), options.repetitions, None, say,
                emulated_latency_s=spec.one_way_latency_s, transport=link.transport(),
            )  # fmt: skip
            navs = nav_overhead(
                url, spec.one_way_latency_s, repetitions=options.repetitions,
                transport=link.transport(),
            )  # fmt: skip
            say(f"NAV overhead {1e3 * navs.overhead_s:.2f} ms ({len(navs.samples)} verifies)")
            return probed, navs


def _probe(options: LinkOptions, say: Say) -> tuple[LinkMeasurements, NavOverhead | None]:
    """The probes (and, on the testbed's path, the NAVs); network failures as ConfigError."""
    import httpx  # optional (extra 'realrun'): its errors are what a failed probe raises

    try:
        if options.testbed is not None:
            return _probe_testbed(options, say)
        assert options.server is not None
        measured = probe_link(
            options.server,
            list(options.sizes),
            options.repetitions,
            options.token,
            say,
            emulated_latency_s=options.emulated_latency_s,
        )
        return measured, None
    except httpx.HTTPStatusError as exc:
        problem = f"HTTP {exc.response.status_code} from {exc.request.url.path} (wrong --token?)"
        raise ConfigError("--server", str(options.server), problem) from None
    except httpx.HTTPError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("--server", str(options.server), f"cannot probe ({reason})") from None
    except RuntimeError as exc:  # the testbed's link or server could not be set up
        raise ConfigError("--testbed", str(options.testbed), str(exc).splitlines()[0]) from None
    except ValueError as exc:
        raise ConfigError("calibrate link", "", str(exc)) from None


def measure_link(options: LinkOptions, say: Say, command: str) -> Part:
    """Probe the link to a running cloud server, or the testbed's own path; both directions
    get the fitted values (the probe times an HTTP request both ways)."""
    measured, navs = _probe(options, say)
    target = options.server or (
        f"the testbed link of {options.testbed} at {options.testbed_mbps} Mbit/s "
        f"({options.testbed_shaping} shaping)"
    )
    how = (
        f"probed {target} with {list(options.sizes)} byte messages x {options.repetitions}; "
        "the probe times an HTTP request both ways, so both directions get the same values"
    )
    values = {
        "link.uplink_mbps": measured.mbps,
        "link.downlink_mbps": measured.mbps,
        "link.one_way_latency_s": measured.one_way_latency_s,
        "link.uplink_overhead_s": measured.overhead_s,
        "link.downlink_overhead_s": 0.0,
    }
    measured_latency = (
        measured.round_trips_s and options.testbed is None and options.emulated_latency_s is None
    )
    notes = {
        "link": how,
        "link.one_way_latency_s": (
            "half the fastest empty round trip (/v1/health)"
            if measured_latency
            else "the emulated one-way delay (the relay's or the software shaper's); the rest "
            "of the round trip is overhead"
        ),
        "link.uplink_overhead_s": "fit intercept minus the round trip",
    }
    rows: dict[str, list[dict[str, Any]]] = {"transfer": [s.to_row() for s in measured.samples]}
    if navs is not None:  # the testbed's NAVs cost more than probes: they set the overhead
        values["link.uplink_overhead_s"] = navs.overhead_s
        notes["link.uplink_overhead_s"] = (
            f"median over {len(navs.samples)} NAVs (verify carrying 1-8 tokens) of round trip "
            f"- target time - queueing - 2 x latency (calibrate.link.nav_overhead); the padded "
            f"probes' fit gave {1e3 * measured.overhead_s:.2f} ms"
        )
        rows["nav"] = [{"tokens": n, "overhead_s": v} for n, v in navs.samples]
    versions = package_versions(["httpx"])
    return new_part("link", values, notes, {"link": measured.report}, rows, versions, command)


def _vocab_size(model: Path) -> int:
    """The model's vocabulary size (llama.cpp reads only the vocabulary)."""
    import llama_cpp  # optional (extra 'models'): the GGUF reader

    return int(llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False).n_vocab())


def measure_wire(options: WireOptions, say: Say, command: str) -> Part:
    """The payload section's message header and token sizes, as the testbed sends them:
    single NAVs through tbf (`calibrate.wire`), or real edge sessions with `options.session`
    (`calibrate.wire_session`)."""
    model = resolve_model(str(options.model))
    vocab = _vocab_size(model)
    if options.session is not None:
        return _measure_session_wire(options, model, vocab, say, command)
    m = wire.measure_wire(str(model), options.threads, options.tokens, options.messages, say=say)
    values = wire.payload_values(m, vocab)
    notes = {
        "payload.message_header_bytes": (
            f"tbf counters over {m.messages} NAVs of {m.n_tokens} tokens: "
            f"{m.uplink_wire_bytes:.1f} wire bytes ({m.uplink_packets:.2f} packets) per uplink "
            f"message = {m.uplink_payload_bytes:.1f} payload bytes, minus the tokens; downlink "
            f"answers {m.downlink_payload_bytes:.1f} payload bytes "
            f"({m.downlink_body_bytes:.1f} of msgpack body); the uplink's pure ACKs (packet "
            f"capture: {100 * m.uplink_ack_share:.1f}% of its frame bytes) are "
            "payload.message_ack_bytes, sent after the answer"
        ),
        "payload.token_id_bytes": "msgpack size of the vocabulary's largest id",
    }
    return new_part("payload", values, notes, {}, {}, {}, command)


def _measure_session_wire(
    options: WireOptions, model: Path, vocab: int, say: Say, command: str
) -> Part:
    """`measure_wire` in real edge sessions of `options.session`'s one-message policies."""
    assert options.session is not None and options.draft is not None  # WireOptions checks
    local = LocalOptions(
        target=model,
        draft=resolve_model(str(options.draft)),
        target_threads=options.threads,
        draft_threads=options.draft_threads,
    )
    with tempfile.TemporaryDirectory(prefix="pipesd-wire-") as tmp:
        m = wire_session.measure_session_wire(
            options.session, local, Path(tmp), options.requests, say
        )
    values = {
        "payload.vocab_size": vocab,
        "payload.token_id_bytes": wire.msgpack_int_bytes(vocab),
        "payload.probability_bytes": wire.PROBABILITY_BYTES,
        **wire_session.session_payload_values(m),
    }
    notes = {
        "payload.message_header_bytes": (
            f"real edge sessions ({', '.join(m.policies)}; {m.requests} requests, synthetic "
            f"acceptance, tbf at 100 Mbit/s): {m.uplink_bytes:.0f} uplink bytes (tbf counter, "
            f"payload units) over {m.messages} messages, minus {m.token_bytes:.0f} of verified "
            f"tokens and {m.prompt_bytes:.0f} of prompt ids = {m.per_message_bytes:.1f} per "
            f"message; the pure ACKs (packet capture: {100 * m.ack_share:.1f}% of the uplink's "
            "frame bytes) are payload.message_ack_bytes, the rest goes before the message"
        ),
        "payload.token_id_bytes": "msgpack size of the vocabulary's largest id",
    }
    return new_part("payload", values, notes, {}, {}, {}, command)


__all__ = ["measure_link", "measure_wire"]
