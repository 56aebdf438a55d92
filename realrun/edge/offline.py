"""The edge's offline fallback: which cloud failures mean the cloud is gone, and the draft alone.

When the cloud is lost mid-request (realrun/edge/executor.py, "Cloud lost"), the request loop
keeps what it has and `finish_locally` decodes the rest with the draft model, so a request
always ends with its tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from realrun.edge.client import CloudError
from realrun.edge.drafts import Draft
from simulator.records import RequestRecord, Span


def cloud_lost(exc: BaseException) -> bool:
    """Whether a failed cloud request means the cloud is gone (finish the request locally)
    rather than a bug: transport errors and timeouts, HTTP 5xx, 404 (session lost)."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, CloudError) and (exc.status >= 500 or exc.status == 404)


class CloudLost(Exception):
    """Raised in the main thread when the worker reports the cloud lost."""


def finish_locally(
    draft: Draft,
    prompt: list[int],
    toks: list[int],
    n_new: int,
    record: RequestRecord,
    timeline: list[Span],
    clock: Callable[[], float],
) -> float:
    """The draft's own decoding (greedy, or sampling as `draft` drafts) until `toks` holds
    `n_new` tokens; returns when the first new token was ready (-1 if none was needed)."""
    first = -1.0
    while len(toks) < n_new:
        position = len(toks)
        t = clock()
        token, _, _ = draft.step(prompt + toks)
        dt = clock() - t
        timeline.append(Span("draft", t, t + dt, "local", record.request, position, position + 1))
        record.edge_busy_s += dt
        record.drafted += 1
        toks.append(token)
        if first < 0:
            first = t + dt
    return first
