"""DiP-SD's autoregressive baselines: plain decoding (AD) with no cross-user batching, and AD
with greedy batching (as many users per forward pass as the server memory holds)."""

from __future__ import annotations

from policies.dipsd.cost_model import DipsdSystem, kv_bytes, throughput
from policies.dipsd.plan import IMPROVEMENT_TOLERANCE, Plan, canonical, make_plan


def autoregressive(system: DipsdSystem) -> Plan:
    """AD: no drafting (l = 0) and no cross-user batching; each user decodes on its own.

    The server runs one forward pass per user per token, so every user is its own batch (N = M)
    and the passes of different users never share the fixed cost β_v:
    S = max(M·V_1, V_1 + comm) with V_1 = c_v·F_v(1, I) + β_v, R = M / S, about 1 / V_1 tokens
    per second whatever M is. This is the abstract's "autoregressive decoding" reference: the
    target model serving users one at a time. Raises ValueError when one user's KV does not
    fit the server memory next to the weights.
    """
    n_users = len(system.users)
    capacity = system.memory_bytes - system.weight_bytes
    if any(kv_bytes(system, m, 0) > capacity for m in range(n_users)):
        raise ValueError("some user does not fit the server memory on its own")
    return make_plan(system, tuple(range(n_users)), (0,) * n_users, ())


def autoregressive_greedy_batching(system: DipsdSystem) -> Plan:
    """AD (l = 0) with greedy batching: users packed into the fewest batches the memory allows.

    This is the steady state of the usual serving heuristic [?]: when the server is free it
    decodes one step for every user whose step is waiting, up to the memory cap (dynamic or
    continuous batching without a batching window). With users that start together and answer
    in the same time, every step finds all users waiting, so the batches are the fewest that
    fit in memory; the simulator runs the heuristic itself (`cloud_ar` with `cloud.max_batch`
    >= M, see `scenarios/dipsd_users_sweep.toml`). Here, for each N = 1..M, users in order of
    decreasing KV footprint (ties: index) go one by one to the batch with the fewest users
    that still has room (ties: the lowest index); the N with the highest throughput wins
    (ties: smallest N). Each extra batch costs another β_v, so N = 1 wins whenever all users
    fit; memory forces several batches only for long prefixes or many users.
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
