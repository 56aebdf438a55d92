"""DiP-SD's autoregressive baselines (AD): no drafting, all users in one batch or greedily
split into pipelined batches under the memory cap."""

from __future__ import annotations

from policies.dipsd.cost_model import DipsdSystem, fits_memory, kv_bytes, throughput
from policies.dipsd.plan import IMPROVEMENT_TOLERANCE, Plan, canonical, make_plan


def autoregressive(system: DipsdSystem) -> Plan:
    """AD: no drafting (l = 0); every round the server decodes one token for all M users at once.

    One batch of size M; each user gets exactly one token per round, so R = M / S with
    S = V + comm, V = c_v·M·F_v(1, I) + β_v. Raises ValueError when the batch does not fit
    the memory (see `autoregressive_greedy_batching`).
    """
    n_users = len(system.users)
    assignment, lengths = (0,) * n_users, (0,) * n_users
    if not fits_memory(system, assignment, lengths):
        raise ValueError("all users in one batch do not fit the server memory")
    return make_plan(system, assignment, lengths, ())


def autoregressive_greedy_batching(system: DipsdSystem) -> Plan:
    """AD (l = 0) with users split greedily into pipelined batches under the memory cap.

    For each N = 1..M, users in order of decreasing KV footprint (ties: index) go one by one
    to the batch with the fewest users that still has room (ties: the lowest index), so the
    first N users open the N batches and the sizes stay balanced [?]. The N with the highest
    throughput wins (ties: smallest N). Pipelining only hides the communication here, since
    plain decoding has no drafting, and each extra batch costs another β_v, so N = 1 wins
    whenever it fits; the baseline matters when memory forces several batches.
    """
    n_users = len(system.users)
    lengths = (0,) * n_users
    order = sorted(range(n_users), key=lambda m: (-kv_bytes(system, m, 0), m))
    capacity = system.memory_bytes - system.weight_bytes
    best: tuple[float, tuple[int, ...]] | None = None
    for n_batches in range(1, n_users + 1):
        sizes = [0] * n_batches
        used = [0.0] * n_batches
        assignment = [0] * n_users
        for m in order:
            need = kv_bytes(system, m, 0)
            room = [n for n in range(n_batches) if used[n] + need <= capacity]
            if not room:
                break
            n = min(room, key=lambda batch: (sizes[batch], batch))
            assignment[m] = n
            sizes[n] += 1
            used[n] += need
        else:
            rate = throughput(system, assignment, lengths)
            if best is None or rate > best[0] * (1 + IMPROVEMENT_TOLERANCE):
                best = (rate, tuple(assignment))
    if best is None:
        raise ValueError("some user does not fit the server memory on its own")
    return make_plan(system, canonical(best[1]), lengths, ())
