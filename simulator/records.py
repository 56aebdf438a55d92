"""Per-request measurements collected by the executors (simulator and, later, realrun)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import NamedTuple


@dataclass(slots=True)
class RequestRecord:
    """What happened during one request on one edge. Times in seconds of the run's clock.

    Token accounting: every drafted token is verified in a NAV, discarded (rollback, dropped,
    or stale), or is a proactive guess that matched the cloud's bonus token (bonus_matches);
    `promoted` counts proactive tokens after such a guess that stayed speculative. On the
    testbed, tokens kept or drafted after the cloud was lost are `local_tokens` instead.
    """

    request: int
    prompt_len: int
    edge: int = 0
    new_tokens: int = 0
    start_s: float = 0.0
    first_token_s: float = 0.0
    end_s: float = 0.0
    navs: int = 0
    drafted: int = 0
    verified: int = 0
    accepted: int = 0
    discarded: int = 0
    promoted: int = 0
    bonus_matches: int = 0
    rollbacks: int = 0
    uplink_messages: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    edge_busy_s: float = 0.0
    cloud_busy_s: float = 0.0
    edge_energy_j: float = 0.0
    cloud_energy_j: float = 0.0
    radio_energy_j: float = 0.0
    local_tokens: int = 0
    """Output tokens the cloud never verified: the edge finished alone after losing the cloud
    (realrun's offline fallback; these also count as drafted). Always 0 in the simulator."""

    @property
    def ttft_s(self) -> float:
        """Time to first token: request start to the first output token at the edge."""
        return self.first_token_s - self.start_s

    @property
    def decode_s(self) -> float:
        """Time from the first output token to the last."""
        return self.end_s - self.first_token_s

    @property
    def tpt_s(self) -> float:
        """Time per token after the first (decode time / (tokens - 1))."""
        return self.decode_s / (self.new_tokens - 1) if self.new_tokens > 1 else float("nan")


RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))


class Span(NamedTuple):
    """One interval of activity for timelines (Gantt charts) and invariant checks.

    lanes: draft (one token: first = position), uplink (a message: tokens [first, last), ready_s
    = when the edge sent it), cloud (a job: for a NAV, positions [first, last)), downlink (an
    answer), result (the edge processes an answer: start = arrival, end = processing time);
    the testbed's also report (an upload duration the policy heard, `last` tokens: end = when,
    start = end less the duration).
    """

    lane: str
    start_s: float
    end_s: float
    label: str
    request: int
    first: int = 0
    last: int = 0
    ready_s: float = 0.0
    edge: int = 0


TIMELINE_NAME = re.compile(
    r"timeline_p(?P<point>\d+)_(?:(?P<index>\d+)_)?(?P<label>.+)_s(?P<seed>\d+)\.csv"
)
"""A timeline file's name: timeline_p{point}_{policy index}_{label}_s{seed}.csv (the simulator's
and the testbed's; older runs: no policy index)."""
