"""Random small DiP-SD systems around the paper's constants, for tests and benchmarks."""

from __future__ import annotations

import dataclasses
import random

from policies.dipsd.constants import paper_system
from policies.dipsd.cost_model import DipsdSystem, DipsdUser, kv_bytes


def sample_system(seed: int, tight_memory: bool | None = None, l_max: int = 6) -> DipsdSystem:
    """A random small system (2-4 users) around the paper's constants, for brute-force checks;
    every third seed (or `tight_memory`) caps the memory.

    With a capped memory the server holds the weights plus between 1.05x the largest user's
    KV (at l_max) and all users' KV together, so some plans are infeasible.
    """
    paper = paper_system()
    rng = random.Random(seed)
    n_users = rng.choice([2, 3, 4])
    users = tuple(
        DipsdUser(
            acceptance=rng.uniform(0.5, 0.9),
            prefix_len=rng.choice([128, 512, 1024, 2048]),
            c_s_per_flop=paper.users[0].c_s_per_flop * rng.uniform(0.5, 2.0),
            beta_s=paper.users[0].beta_s * rng.uniform(0.5, 2.0),
        )
        for _ in range(n_users)
    )
    system = dataclasses.replace(
        paper,
        users=users,
        c_v=paper.c_v * rng.uniform(0.5, 2.0),
        beta_v=paper.beta_v * rng.uniform(0.5, 2.0),
        comm_s=rng.uniform(0.001, 0.02),
        l_max=l_max,
    )
    if tight_memory if tight_memory is not None else seed % 3 == 0:
        kv = [kv_bytes(system, m, l_max) for m in range(n_users)]
        cap = system.weight_bytes + rng.uniform(1.05 * max(kv), sum(kv))
        system = dataclasses.replace(system, memory_bytes=cap)
    return system
