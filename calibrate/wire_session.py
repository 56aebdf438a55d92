"""Bytes on the wire per testbed message, measured in real edge sessions.

`calibrate.wire` times NAVs one at a time on one connection; in a session the edge sends on
four connections, some of the answers' TCP ACKs ride on later requests, and each request
ends with a `close`. Validation runs on this machine showed sessions sending 2-9% fewer
bytes per message than single NAVs, which is what PipeSD's saturated 0.05 Mbit/s row turns
on. `measure_session_wire` runs a scenario's one-message-per-NAV policies (their tokens all
travel in the NAV, so every uploaded token is a verified one) for a few requests with
synthetic acceptance behind tbf at a fast rate, counts the uplink with tbf's counter per
request and captures its frames (`PacketTap`), and gives per message

    header + ack = (uplink bytes - verified tokens x per-token bytes - prompt ids) / messages,
    ack = the pure-ACK share of the uplink's frame bytes x uplink bytes / messages,

counting the prompt's upload as a message (the close rides in the total). The seed is
`SESSION_SEED`, not one of a scenario's, so the validated requests are not the calibrated ones.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from calibrate.wire import PacketTap, ack_share
from realrun.link import netns
from realrun.local import LocalOptions, cloud_server, free_port
from realrun.testbed import run_testbed
from realrun.testbed_rules import body_limit, policy_payload
from simulator.errors import ConfigError
from simulator.scenario import SweepPoint, expand_sweep

ONE_MESSAGE_PER_NAV = ("vanilla", "hsl", "edgellm", "pmin", "hf_heuristic")
"""Policies that upload nothing between NAVs: a NAV carries exactly the tokens it verifies."""

SESSION_SEED = 9_001
"""The acceptance stream's seed for calibration sessions (not a validated run's)."""

SESSION_MBPS = 100.0
"""Link rate both ways while measuring: nothing queues, the bytes are the stack's."""


@dataclass(frozen=True)
class SessionWire:
    """Per-message uplink bytes (the simulator's payload units) measured in sessions."""

    messages: int
    requests: int
    policies: tuple[str, ...]
    uplink_bytes: float
    token_bytes: float
    prompt_bytes: float
    ack_share: float

    @property
    def per_message_bytes(self) -> float:
        """Uplink bytes per message beyond its tokens (header, TCP/IP, ACKs, the close)."""
        return (self.uplink_bytes - self.token_bytes - self.prompt_bytes) / self.messages

    @property
    def ack_bytes(self) -> float:
        """Of those, the pure ACKs: sent after the message's answer."""
        return self.ack_share * self.uplink_bytes / self.messages

    @property
    def header_bytes(self) -> float:
        return self.per_message_bytes - self.ack_bytes


def session_point(scenario_path: Path, requests: int) -> SweepPoint:
    """The scenario's first point with only its one-message-per-NAV policies, `requests`
    requests of seed `SESSION_SEED`, and a constant `SESSION_MBPS` link both ways."""
    overrides = [f"prompts.count={requests}", f"seeds=[{SESSION_SEED}]"]
    point = expand_sweep(scenario_path, overrides)[0]
    scenario = point.scenario
    policies = tuple(p for p in scenario.policies if p.name in ONE_MESSAGE_PER_NAV)
    if not policies:
        allowed = ", ".join(ONE_MESSAGE_PER_NAV)
        raise ConfigError(
            str(scenario_path), "policies", f"none sends one message per NAV (needs one of: "
            f"{allowed})"
        )  # fmt: skip
    link = scenario.model.link.model_copy(
        update={
            "uplink_mbps": SESSION_MBPS,
            "downlink_mbps": SESSION_MBPS,
            "uplink_trace": None,
            "downlink_trace": None,
        }
    )
    model = scenario.model.model_copy(update={"link": link})
    return replace(point, scenario=replace(scenario, model=model, policies=policies))


def session_wire(
    results: Path,
    per_token_bytes: int | dict[str, int],
    token_id_bytes: int,
    ack_share: float,
    policies: tuple[str, ...],
) -> SessionWire:
    """The measurement from a testbed results.csv of such a session (see the module);
    `per_token_bytes`: one size for all, or each policy label's own (its payload)."""
    messages = requests = 0
    uplink = tokens = prompt = 0.0
    with results.open(newline="") as handle:
        for row in csv.DictReader(handle):
            requests += 1
            messages += int(row["navs"]) + 1
            uplink += float(row["uplink_bytes"])
            size = (
                per_token_bytes[row["policy"]]
                if isinstance(per_token_bytes, dict)
                else per_token_bytes
            )
            tokens += int(row["verified"]) * size
            prompt += int(row["prompt_len"]) * token_id_bytes
    if messages == 0:
        raise ConfigError(str(results), "", "no request was run")
    return SessionWire(messages, requests, tuple(policies), uplink, tokens, prompt, ack_share)


def measure_session_wire(
    scenario_path: Path,
    options: LocalOptions,
    out_dir: Path,
    requests: int = 2,
    say: Callable[[str], None] = print,
) -> SessionWire:
    """Run the session (tbf, synthetic acceptance) into `out_dir` and measure it."""
    from realrun.link.shaping import LinkSpec, open_link  # loads httpx (extra 'realrun')

    reason = netns.unavailable_reason()
    if reason is not None:
        raise ConfigError("calibrate wire --session", "", f"needs kernel shaping: {reason}")
    point = session_point(scenario_path, requests)
    scenario = point.scenario
    payloads = {entry.label: policy_payload(scenario, entry) for entry in scenario.policies}
    options = replace(options, shaping="tbf", acceptance="synthetic", speed_probe=False)
    port = free_port()
    with (
        open_link(LinkSpec.from_point(point), mode="tbf", server_port=port) as link,
        cloud_server(link, port, options, out_dir / "server.log", None, body_limit(scenario)),
    ):
        tap = PacketTap(link.namespace.edge_dev)
        try:
            run_testbed(
                scenario_path,
                point,
                link.client_url(port),
                options.draft,
                options.draft_threads,
                out_dir,
                ["pipesd", "calibrate", "wire", "--session", str(scenario_path)],
                transport=link.transport(),
                link_info=link.describe(),
                acceptance="synthetic",
                on_start=link.start_clock,
                uplink_meter=link.uplink_payload_bytes,
            )
        finally:
            frames = tap.close()
        share = ack_share(frames, link.namespace.edge_address)
    names = tuple(p.label for p in scenario.policies)
    say(f"wire: {requests} requests of {', '.join(names)} through tbf at {SESSION_MBPS:g} Mbit/s")
    per_token = {label: payload.per_draft_token for label, payload in payloads.items()}
    token_id = next(iter(payloads.values())).token_id
    return session_wire(out_dir / "results.csv", per_token, token_id, share, names)


def session_payload_values(m: SessionWire) -> dict[str, Any]:
    """The profile's message fields this measurement gives (dotted names, as parts hold them)."""
    return {
        "payload.message_header_bytes": max(0, round(m.header_bytes)),
        "payload.message_ack_bytes": max(0, round(m.ack_bytes)),
    }


__all__ = [
    "ONE_MESSAGE_PER_NAV",
    "SESSION_SEED",
    "SessionWire",
    "measure_session_wire",
    "session_payload_values",
    "session_point",
    "session_wire",
]
