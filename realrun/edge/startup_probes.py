"""PipeSD's start-up probes: padded messages timed once per edge session, fed to `on_upload`.

Apart from the request loop (realrun/edge/request_loop.py) because they run before any request,
once per session, against `/v1/probe`.
"""

from __future__ import annotations

import time

from policies.base import Policy
from realrun.edge.client import CloudClient
from realrun.edge.offline import cloud_lost


def startup_probes(policy: Policy, cloud: CloudClient, bytes_per_token: int = 5) -> int:
    """PipeSD-style start-up probes, once per edge session: padded `/v1/probe` messages of
    `policy.startup_probe_sizes()` token sizes, timed and reported to `on_upload`. Returns the
    number of probes answered: probing stops when the cloud is lost (`cloud_lost`)."""
    sent = 0
    for size in policy.startup_probe_sizes():
        start = time.perf_counter()
        try:
            cloud._post("probe", {"pad": b"\0" * (bytes_per_token * int(size))})
        except Exception as exc:
            if cloud_lost(exc):
                break
            raise
        policy.on_upload(int(size), time.perf_counter() - start)
        sent += 1
    return sent
