"""DiP-SD's reference optimum: brute force over every assignment and length vector (for
checking the optimiser on small systems)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from policies.dipsd.cost_model import (
    DipsdSystem,
    draft_time,
    expected_tokens,
    kv_bytes,
    verify_time,
)
from policies.dipsd.plan import Plan, make_plan


def brute_force(system: DipsdSystem, l_bound: int) -> Plan:
    """The best plan over all ordered assignments and length vectors in [1, min(l_bound, l_max)]^M.

    Enumerates, for N = 1..M, every map of users onto batches 0..N-1 that uses all of them
    (ordered: relabellings are enumerated separately even though S ignores the order), and,
    vectorised, every length vector; memory-infeasible plans are skipped. The first best in
    enumeration order wins (N ascending, assignments and lengths lexicographic).
    """
    if l_bound < 1:
        raise ValueError("l_bound must be at least 1")
    l_bound = min(l_bound, system.l_max)
    n_users = len(system.users)
    ks = np.arange(1, l_bound + 1)
    grid = np.array(list(itertools.product(range(l_bound), repeat=n_users)), dtype=np.int64)
    tokens_table = np.array(
        [[expected_tokens(user.acceptance, int(k)) for k in ks] for user in system.users]
    )
    draft_table = np.array(
        [[draft_time(system, m, int(k)) + system.comm_s for k in ks] for m in range(n_users)]
    )
    kv_table = np.array([[kv_bytes(system, m, int(k)) for k in ks] for m in range(n_users)])
    users = np.arange(n_users)
    tokens = tokens_table[users, grid].sum(axis=1)
    draft = draft_table[users, grid]
    kv = kv_table[users, grid]
    capacity = system.memory_bytes - system.weight_bytes
    best_rate = -math.inf
    best: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    for n_batches in range(1, n_users + 1):
        for assignment in itertools.product(range(n_batches), repeat=n_users):
            if len(set(assignment)) != n_batches:
                continue
            server = np.zeros(len(grid))
            worst = np.zeros(len(grid))
            feasible = np.ones(len(grid), dtype=bool)
            for n in range(n_batches):
                batch = [m for m in range(n_users) if assignment[m] == n]
                max_prefix = max(system.users[m].prefix_len for m in batch)
                verify_table = np.array(
                    [verify_time(system, len(batch), int(k), max_prefix) for k in ks]
                )
                verify = verify_table[grid[:, batch].max(axis=1)]
                server += verify
                worst = np.maximum(worst, verify + draft[:, batch].max(axis=1))
                feasible &= kv[:, batch].sum(axis=1) <= capacity
            rates = np.where(feasible, tokens / np.maximum(server, worst), -np.inf)
            index = int(np.argmax(rates))
            if rates[index] > best_rate:
                best_rate = float(rates[index])
                best = (assignment, tuple(int(k) for k in grid[index] + 1))
    if best is None:
        raise ValueError("no plan fits the server memory")
    return make_plan(system, best[0], best[1], ())
