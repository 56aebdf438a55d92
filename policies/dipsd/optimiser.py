"""DiP-SD: joint user-to-batch assignment and per-user draft lengths for pipelined multi-user SD.

M users draft on their own devices; one server verifies them in N batches, one batch at a
time, while the other batches draft (papers.md, "DiP-SD"). The objective is the steady-state
throughput R = U / S in tokens per second, U the expected accepted tokens per period summed
over users and S the period of the pipeline. Pure: no clocks, sleeps or I/O.

Cost model (the paper's formulas; choices it leaves open are marked [?])
------------------------------------------------------------------------
* Expected tokens per verification, i.i.d. acceptance a, draft length l, bonus included:
  ``u(l) = (1 - a^(l+1)) / (1 - a)`` (``l + 1`` when a = 1; u(0) = 1 is plain decoding).
* Draft FLOPs per drafted token at prefix i: ``F_d(i) = 4·J_d·h1_d·(2·h1_d + i + 1 + h2_d)``.
* Verify FLOPs of one sequence, L positions at prefix I:
  ``F_v(L, I) = 4·J_v·h1_v·L·(2·h1_v + I + L + h2_v)``.
* Device m drafts l_m tokens in ``d_m = l_m·(c_m·F_d(i_m) + β_m)`` seconds; the prefix is held
  at i_m for all l_m tokens, as in the paper's ``l_m·G_m(1, F_d(i_m))`` [?].
* The server verifies batch n (b_n users) in ``V_n = c_v·b_n·F_v(max(L_n, 1), I_n) + β_v``,
  L_n the batch's longest draft and I_n its longest prefix (sequences are padded) [?]. The
  ``max(·, 1)`` only matters for plain decoding (l = 0): the server still runs one position
  per user [?].
* Communication: one constant ``comm_s`` per user per round, upload of the draft and download
  of the verdict together [?]; it sits between the end of drafting and the batch being ready.
* Memory: while batch n is verified the server holds the target weights plus the KV cache of
  that batch's users, ``(i_m + l_m + 1)·kv_bytes_per_token`` each (prefix, draft and the bonus
  slot; padding is not stored) [?]. Caches of batches not being verified are not counted, as
  in the paper's "weights + KV for the batch must fit" [?].
* The paper's device/server constants (c ≈ 1e-11, β in ms) only make physical sense with G in
  milliseconds, i.e. c in ms per FLOP (the 32B verifier then runs at ~80 TFLOP/s rather than
  ~80 GFLOP/s); `paper_system` converts them to seconds per FLOP [?].

Pipeline schedule and the span
------------------------------
Batches are verified in the fixed cyclic order 1, 2, …, N, 1, 2, … . A user of batch n starts
drafting as soon as batch n's previous verification has ended, drafts d_m, communicates
comm_s, and batch n is ready when its last user is: ``D_n = max over m in n of d_m + comm_s``
after that verification's end (`Timing.ready_s`). The server verifies batch n at
max(ready time of n, end of the verification before it) and takes V_n.

With t_n(k) the start of batch n's k-th verification this is the max-plus recurrence
``t_n(k) = max(t_{n-1}(k) + V_{n-1}, t_n(k-1) + V_n + D_n)``, where the predecessor of batch 1
in round k is batch N of round k-1. Its precedence graph (edges n -> n+1 for the server, n -> n
one round later for the users) has only two kinds of elementary circuits, each one round long:
the server ring through every batch (weight Σ V_n) and batch n's own loop (weight V_n + D_n).
The as-soon-as-possible schedule becomes periodic after a transient, with the maximum circuit
mean as its period:

    S = max( Σ_n V_n ,  max_n (D_n + V_n) ).

This is the paper's "S = sum of stage durations with S >= ready_n + verify_n", with ready_n
counted from the end of batch n's previous verification: the stages sum to at least the
server's busy time, and a batch's drafting, upload and verification must fit inside one
period. (In code batches are labelled 0..N-1 and verified in label order.)

S does not depend on the batch order (only on which users share a batch);
the order changes the transient of the first rounds, not the throughput. The tests check the
formula against a step-by-step simulation of the schedule. Every user is verified once per
period, so R = Σ_m u_m(l_m) / S.

Optimiser
---------
`optimise` scans N = 1..M (the paper scans 2..M; N = 1 is the unpipelined case). For each N
it alternates (a) the assignment minimising S for fixed lengths (a MILP, `_assign`) and (b) the
lengths maximising U/S for the fixed assignment (Dinkelbach, each inner problem solved exactly
as a MILP over one-hot length choices, `_dinkelbach`), until the assignment, and so the
lengths, stop changing (at most `max_rounds` rounds). Both steps never decrease R, so the loop
is monotone; it can still stop in a local optimum of the joint problem. Every N starts from
the paper's initial length 7 (clipped to l_max) for all users; if that assignment problem is
infeasible under the memory cap it restarts from length 1 [?]. The best N wins (ties: the
smallest). Then, unless `polish=False`, a local search over single-user moves and swaps with
re-optimised lengths (`_polish`) escapes the alternation's fixed points [?].
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

INITIAL_LENGTH = 7
"""The paper's starting draft length for the alternation."""
MAX_ROUNDS = 20
"""Cap on assignment/length alternations per N."""
MAX_DINKELBACH = 50
"""Cap on Dinkelbach iterations per length step (it converges in a handful)."""
IMPROVEMENT_TOLERANCE = 1e-12
"""A step must improve R by more than this fraction to replace the incumbent."""
MILP_OPTIONS = {"mip_rel_gap": 1e-9, "presolve": True, "disp": False}


@dataclass(frozen=True)
class ModelShape:
    """A transformer's cost shape: J layers, h1 hidden size, h2 FFN size, parameters, KV bytes.

    `params_b` is in billions of parameters; `kv_bytes_per_token` is the KV cache per token
    over all layers (2 · layers · kv_heads · head_dim · bytes per element).
    """

    layers: int
    hidden: int
    ffn: int
    params_b: float
    kv_bytes_per_token: int

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "ffn"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.params_b < 0 or self.kv_bytes_per_token < 0:
            raise ValueError("params_b and kv_bytes_per_token must be non-negative")


@dataclass(frozen=True)
class DipsdUser:
    """One drafting device: acceptance rate, prefix length and its affine latency G_m.

    Drafting one token at prefix i takes ``c_s_per_flop·F_d(i) + beta_s`` seconds.
    """

    acceptance: float
    prefix_len: int
    c_s_per_flop: float
    beta_s: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.acceptance <= 1.0:
            raise ValueError("acceptance must be in [0, 1]")
        if self.prefix_len < 0:
            raise ValueError("prefix_len must be non-negative")
        if self.c_s_per_flop < 0 or self.beta_s < 0:
            raise ValueError("device latency constants must be non-negative")


@dataclass(frozen=True)
class DipsdSystem:
    """Users, the draft and target shapes, the server's affine latency, link and memory.

    Verifying a batch of b sequences costing F FLOPs each takes ``c_v·b·F + beta_v`` seconds;
    `comm_s` is the per-round communication time of a user; `memory_bytes` the server memory;
    `weight_bytes` the target weights in it; draft lengths are integers in [1, l_max].
    """

    users: tuple[DipsdUser, ...]
    draft_shape: ModelShape
    target_shape: ModelShape
    c_v: float
    beta_v: float
    comm_s: float
    memory_bytes: float
    weight_bytes: float
    l_max: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", tuple(self.users))
        if not self.users:
            raise ValueError("need at least one user")
        if self.c_v < 0 or self.beta_v < 0 or self.comm_s < 0:
            raise ValueError("server and link constants must be non-negative")
        if self.l_max < 1:
            raise ValueError("l_max must be at least 1")
        if self.weight_bytes < 0 or self.memory_bytes < 0:
            raise ValueError("memory sizes must be non-negative")


@dataclass(frozen=True)
class Timing:
    """One steady-state period of the pipeline for an assignment and lengths.

    `draft_s[m]`: user m's drafting time; `ready_s[n]`: D_n, batch n's slowest draft plus the
    communication, counted from the end of its previous verification; `verify_s[n]`: V_n;
    `memory_bytes[n]`: server memory while batch n is verified; `order`: verification order.
    """

    span_s: float
    ready_s: tuple[float, ...]
    verify_s: tuple[float, ...]
    order: tuple[int, ...]
    draft_s: tuple[float, ...]
    memory_bytes: tuple[float, ...]


@dataclass(frozen=True)
class HistoryEntry:
    """One step of the alternation: which N, round and step, and where it left the plan."""

    n_batches: int
    round: int
    step: str
    assignment: tuple[int, ...]
    lengths: tuple[int, ...]
    throughput_tokens_per_s: float


@dataclass(frozen=True)
class Plan:
    """A schedule: batch index per user (0-based), draft length per user, and its throughput."""

    n_batches: int
    assignment: tuple[int, ...]
    lengths: tuple[int, ...]
    throughput_tokens_per_s: float
    span_s: float
    history: tuple[HistoryEntry, ...] = ()


# ---------------------------------------------------------------------------------------------
# Cost model


def expected_tokens(acceptance: float, length: int) -> float:
    """u(l) = (1 - a^(l+1)) / (1 - a): expected tokens per verification, bonus token included."""
    if acceptance >= 1.0:
        return float(length + 1)
    return (1.0 - acceptance ** (length + 1)) / (1.0 - acceptance)


def draft_flops(shape: ModelShape, prefix_len: int) -> float:
    """F_d(i) = 4·J_d·h1_d·(2·h1_d + i + 1 + h2_d): FLOPs to draft one token at prefix i."""
    return 4.0 * shape.layers * shape.hidden * (2 * shape.hidden + prefix_len + 1 + shape.ffn)


def verify_flops(shape: ModelShape, length: int, prefix_len: int) -> float:
    """F_v(L, I) = 4·J_v·h1_v·L·(2·h1_v + I + L + h2_v): one sequence, L positions at prefix I."""
    return (
        4.0
        * shape.layers
        * shape.hidden
        * length
        * (2 * shape.hidden + prefix_len + length + shape.ffn)
    )


def draft_time(system: DipsdSystem, user: int, length: int) -> float:
    """d_m = l_m·(c_m·F_d(i_m) + β_m): seconds for user m to draft `length` tokens."""
    spec = system.users[user]
    per_token = spec.c_s_per_flop * draft_flops(system.draft_shape, spec.prefix_len)
    return length * (per_token + spec.beta_s)


def verify_time(system: DipsdSystem, batch_size: int, max_length: int, max_prefix: int) -> float:
    """V = c_v·b·F_v(max(L, 1), I) + β_v: seconds to verify a batch of b padded sequences."""
    flops = verify_flops(system.target_shape, max(max_length, 1), max_prefix)
    return system.c_v * batch_size * flops + system.beta_v


def kv_bytes(system: DipsdSystem, user: int, length: int) -> float:
    """User m's KV cache during verification: (i_m + l_m + 1) tokens of the target model."""
    tokens = system.users[user].prefix_len + length + 1
    return float(tokens * system.target_shape.kv_bytes_per_token)


def round_timing(system: DipsdSystem, assignment: Sequence[int], lengths: Sequence[int]) -> Timing:
    """The steady-state period S = max(Σ_n V_n, max_n (D_n + V_n)) and its parts.

    `assignment[m]` is user m's batch in 0..N-1 (every batch non-empty), `lengths[m]` its
    draft length in 0..l_max (0 = plain decoding). See the module docstring for the schedule.
    """
    assignment, lengths = _check_plan(system, assignment, lengths, min_length=0)
    n_batches = max(assignment) + 1
    draft = tuple(draft_time(system, m, lengths[m]) for m in range(len(system.users)))
    ready, verify, memory = [], [], []
    for n in range(n_batches):
        members = [m for m, batch in enumerate(assignment) if batch == n]
        ready.append(max(draft[m] for m in members) + system.comm_s)
        verify.append(
            verify_time(
                system,
                len(members),
                max(lengths[m] for m in members),
                max(system.users[m].prefix_len for m in members),
            )
        )
        memory.append(system.weight_bytes + sum(kv_bytes(system, m, lengths[m]) for m in members))
    span = max(math.fsum(verify), max(r + v for r, v in zip(ready, verify, strict=True)))
    return Timing(
        span_s=span,
        ready_s=tuple(ready),
        verify_s=tuple(verify),
        order=tuple(range(n_batches)),
        draft_s=draft,
        memory_bytes=tuple(memory),
    )


def throughput(system: DipsdSystem, assignment: Sequence[int], lengths: Sequence[int]) -> float:
    """R = Σ_m u_m(l_m) / S in tokens per second."""
    timing = round_timing(system, assignment, lengths)
    tokens = math.fsum(
        expected_tokens(user.acceptance, length)
        for user, length in zip(system.users, lengths, strict=True)
    )
    return tokens / timing.span_s


def fits_memory(system: DipsdSystem, assignment: Sequence[int], lengths: Sequence[int]) -> bool:
    """Whether every batch's weights + KV fit in the server memory."""
    timing = round_timing(system, assignment, lengths)
    return all(used <= system.memory_bytes for used in timing.memory_bytes)


# ---------------------------------------------------------------------------------------------
# Optimiser


def optimise(
    system: DipsdSystem,
    initial_length: int = INITIAL_LENGTH,
    max_rounds: int = MAX_ROUNDS,
    polish: bool = True,
) -> Plan:
    """The DiP-SD plan: scan N, alternate the assignment MILP and Dinkelbach lengths per N.

    With `polish` (the default) the best plan of the scan is then improved by `_polish`'s
    local search over single-user moves and swaps [?]; `polish=False` is the paper's algorithm
    alone. Raises ValueError when no N has a memory-feasible schedule.
    """
    n_users = len(system.users)
    start = min(max(initial_length, 1), system.l_max)
    history: list[HistoryEntry] = []
    best: tuple[float, tuple[int, ...], tuple[int, ...]] | None = None
    for n_batches in range(1, n_users + 1):
        lengths = (start,) * n_users
        assignment = _assign(system, n_batches, lengths)
        if assignment is None:
            lengths = (1,) * n_users
            assignment = _assign(system, n_batches, lengths)
        if assignment is None:
            continue
        rate = throughput(system, assignment, lengths)
        history.append(HistoryEntry(n_batches, 0, "assignment", assignment, lengths, rate))
        for round_index in range(1, max_rounds + 1):
            new_lengths = _dinkelbach(system, assignment, lengths)
            new_rate = throughput(system, assignment, new_lengths)
            if new_rate > rate * (1 + IMPROVEMENT_TOLERANCE):
                lengths, rate = new_lengths, new_rate
            history.append(
                HistoryEntry(n_batches, round_index, "lengths", assignment, lengths, rate)
            )
            new_assignment = _assign(system, n_batches, lengths)
            changed = False
            if new_assignment is not None:
                candidate = throughput(system, new_assignment, lengths)
                if candidate > rate * (1 + IMPROVEMENT_TOLERANCE):
                    assignment, rate, changed = new_assignment, candidate, True
            history.append(
                HistoryEntry(n_batches, round_index, "assignment", assignment, lengths, rate)
            )
            if not changed:
                # Same assignment: the next length step would return the same lengths.
                break
        if best is None or rate > best[0] * (1 + IMPROVEMENT_TOLERANCE):
            best = (rate, assignment, lengths)
    if best is None:
        raise ValueError("no number of batches fits the server memory")
    if polish:
        best = _polish(system, best, history)
    _, assignment, lengths = best
    return _plan(system, assignment, lengths, tuple(history))


def _polish(
    system: DipsdSystem,
    incumbent: tuple[float, tuple[int, ...], tuple[int, ...]],
    history: list[HistoryEntry],
) -> tuple[float, tuple[int, ...], tuple[int, ...]]:
    """First-improvement local search around the scan's best plan [?].

    The alternation stops at fixed points where neither the assignment (lengths fixed) nor
    the lengths (assignment fixed) can improve alone, though moving a user and re-tuning the
    lengths together would. Neighbours: one user moved to another batch or to a new one (a
    batch left empty disappears, so N may change), or two users of different batches
    swapped; each neighbour gets Dinkelbach-optimal lengths and replaces the incumbent when
    R improves. Repeats until a full pass improves nothing (at most `MAX_ROUNDS` passes).
    On 400 random 2-4 user systems (`benchmarks/bench_dipsd.py --agreement 400`) the
    alternation alone missed the brute-force optimum in 25 (gap up to 2.8 %), with the polish
    in 1 (gap 0.26 %), at about 1.8x the run time.
    """
    rate, assignment, lengths = incumbent
    n_users = len(system.users)
    for pass_index in range(1, MAX_ROUNDS + 1):
        improved = False
        for candidate in _neighbours(assignment):
            if candidate == assignment or not fits_memory(system, candidate, (1,) * n_users):
                continue
            new_lengths = _dinkelbach(system, candidate, lengths)
            if not fits_memory(system, candidate, new_lengths):
                continue
            new_rate = throughput(system, candidate, new_lengths)
            if new_rate > rate * (1 + IMPROVEMENT_TOLERANCE):
                rate, assignment, lengths, improved = new_rate, candidate, new_lengths, True
                history.append(
                    HistoryEntry(
                        max(assignment) + 1, pass_index, "polish", assignment, lengths, rate
                    )
                )
        if not improved:
            break
    return rate, assignment, lengths


def _neighbours(assignment: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Canonical assignments one move (user to another or a new batch) or one swap away."""
    n_batches = max(assignment) + 1
    found: dict[tuple[int, ...], None] = {}
    for m, batch in enumerate(assignment):
        for target in range(min(n_batches + 1, len(assignment))):
            if target != batch:
                moved = list(assignment)
                moved[m] = target
                found.setdefault(_canonical(moved), None)
    for m, k in itertools.combinations(range(len(assignment)), 2):
        if assignment[m] != assignment[k]:
            swapped = list(assignment)
            swapped[m], swapped[k] = assignment[k], assignment[m]
            found.setdefault(_canonical(swapped), None)
    return list(found)


def _assign(
    system: DipsdSystem, n_batches: int, lengths: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The assignment of users to exactly `n_batches` non-empty batches minimising S.

    MILP over binaries x[m,n] (user m in batch n) and z[n,p] (batch n padded to the p-th
    candidate (L, I) pair of a member's length and a member's prefix), continuous w[m,n]
    (user m's share of batch n's verify time), V_n and the span T:

        min T  s.t.  Σ_n x[m,n] = 1,  Σ_m x[m,n] >= 1,  Σ_p z[n,p] = 1,
                     x[m,n] <= Σ_{p covers (l_m, i_m)} z[n,p],
                     w[m,n] >= Σ_p f_p z[n,p] - f_max (1 - x[m,n]),   f_p = c_v·F_v(L_p, I_p),
                     V_n = β_v + Σ_m w[m,n],
                     T >= Σ_n V_n,   T >= V_n + (d_m + comm)·x[m,n],
                     Σ_m kv_m·x[m,n] <= memory - weights.

    S is invariant under relabelling batches, so x[m,n] = 0 for n > m breaks the symmetry
    (label batches by their first user). Returns None when infeasible.
    """
    n_users = len(system.users)
    if n_batches > n_users:
        return None
    prefixes = [user.prefix_len for user in system.users]
    pairs = sorted({(lengths[m], prefixes[k]) for m in range(n_users) for k in range(n_users)})
    pair_cost = np.array(
        [system.c_v * verify_flops(system.target_shape, max(L, 1), i) for L, i in pairs]
    )
    f_max = float(pair_cost.max()) if len(pairs) else 0.0
    n_pairs = len(pairs)
    # Variable layout: x (M·N), z (N·P), w (M·N), V (N), T (1).
    x0 = 0
    z0 = x0 + n_users * n_batches
    w0 = z0 + n_batches * n_pairs
    v0 = w0 + n_users * n_batches
    t0 = v0 + n_batches
    n_vars = t0 + 1

    def x(m: int, n: int) -> int:
        return x0 + m * n_batches + n

    def z(n: int, p: int) -> int:
        return z0 + n * n_pairs + p

    def w(m: int, n: int) -> int:
        return w0 + m * n_batches + n

    rows: list[np.ndarray] = []
    lower: list[float] = []
    upper: list[float] = []

    def add(coeffs: dict[int, float], lo: float, hi: float) -> None:
        row = np.zeros(n_vars)
        for index, value in coeffs.items():
            row[index] += value
        rows.append(row)
        lower.append(lo)
        upper.append(hi)

    draft_plus_comm = [draft_time(system, m, lengths[m]) + system.comm_s for m in range(n_users)]
    kv = [kv_bytes(system, m, lengths[m]) for m in range(n_users)]
    capacity = system.memory_bytes - system.weight_bytes
    for m in range(n_users):
        add({x(m, n): 1.0 for n in range(n_batches)}, 1.0, 1.0)
    for n in range(n_batches):
        add({x(m, n): 1.0 for m in range(n_users)}, 1.0, np.inf)
        add({z(n, p): 1.0 for p in range(n_pairs)}, 1.0, 1.0)
        add({x(m, n): kv[m] for m in range(n_users)}, -np.inf, capacity)
        add({v0 + n: 1.0, **{w(m, n): -1.0 for m in range(n_users)}}, system.beta_v, system.beta_v)
        for m in range(n_users):
            covers = [p for p, (L, i) in enumerate(pairs) if lengths[m] <= L and i >= prefixes[m]]
            add({x(m, n): 1.0, **{z(n, p): -1.0 for p in covers}}, -np.inf, 0.0)
            coeffs = {w(m, n): 1.0, x(m, n): -f_max}
            for p in range(n_pairs):
                coeffs[z(n, p)] = -float(pair_cost[p])
            add(coeffs, -f_max, np.inf)
            add({t0: 1.0, v0 + n: -1.0, x(m, n): -draft_plus_comm[m]}, 0.0, np.inf)
    add({t0: 1.0, **{v0 + n: -1.0 for n in range(n_batches)}}, 0.0, np.inf)

    lb = np.zeros(n_vars)
    ub = np.full(n_vars, np.inf)
    integrality = np.zeros(n_vars)
    integrality[x0:w0] = 1
    ub[x0:w0] = 1.0
    for m in range(n_users):
        for n in range(m + 1, n_batches):
            ub[x(m, n)] = 0.0
    cost = np.zeros(n_vars)
    cost[t0] = 1.0
    result = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), np.array(lower), np.array(upper)),
        integrality=integrality,
        bounds=Bounds(lb, ub),
        options=MILP_OPTIONS,
    )
    if result.x is None:
        return None
    chosen = np.asarray(result.x[x0:z0]).reshape(n_users, n_batches)
    assignment = tuple(int(np.argmax(chosen[m])) for m in range(n_users))
    if len(set(assignment)) != n_batches or not fits_memory(system, assignment, lengths):
        return None
    return _canonical(assignment)


def _dinkelbach(
    system: DipsdSystem, assignment: tuple[int, ...], lengths: tuple[int, ...]
) -> tuple[int, ...]:
    """Integer lengths in [1, l_max] maximising U/S for a fixed assignment (Dinkelbach).

    With λ = U(l)/S(l) of the incumbent, the inner problem max_l U(l) - λ·S(l) is solved
    exactly as a MILP: one-hot y[m,k] (user m drafts k tokens), continuous V_n and T,

        max Σ y[m,k] u_m(k) - λ T  s.t.  Σ_k y[m,k] = 1,
            V_n >= β_v + Σ_k y[m,k]·c_v·b_n·F_v(k, I_n)      (m in n; V_n is the member max),
            T >= Σ_n V_n,   T >= V_n + Σ_k y[m,k]·d_m(k) + comm   (m in n),
            Σ_{m in n} Σ_k y[m,k]·kv_m(k) <= memory - weights.

    The incumbent is replaced while the inner optimum is positive; λ then rises strictly, and
    at a zero optimum the incumbent is optimal over all integer length vectors.
    """
    n_users = len(system.users)
    n_batches = max(assignment) + 1
    ks = range(1, system.l_max + 1)
    n_k = len(ks)
    members = [[m for m in range(n_users) if assignment[m] == n] for n in range(n_batches)]
    # Variable layout: y (M·K), V (N), T (1).
    v0 = n_users * n_k
    t0 = v0 + n_batches
    n_vars = t0 + 1
    rows: list[np.ndarray] = []
    lower: list[float] = []
    upper: list[float] = []
    tokens = np.zeros(n_vars)
    for m in range(n_users):
        row = np.zeros(n_vars)
        row[m * n_k : (m + 1) * n_k] = 1.0
        rows.append(row)
        lower.append(1.0)
        upper.append(1.0)
        for j, k in enumerate(ks):
            tokens[m * n_k + j] = expected_tokens(system.users[m].acceptance, k)
    capacity = system.memory_bytes - system.weight_bytes
    server_row = np.zeros(n_vars)
    server_row[t0] = 1.0
    for n, batch in enumerate(members):
        server_row[v0 + n] = -1.0
        max_prefix = max(system.users[m].prefix_len for m in batch)
        memory_row = np.zeros(n_vars)
        for m in batch:
            verify_row = np.zeros(n_vars)
            verify_row[v0 + n] = 1.0
            span_row = np.zeros(n_vars)
            span_row[t0] = 1.0
            span_row[v0 + n] = -1.0
            for j, k in enumerate(ks):
                verify_row[m * n_k + j] = -(
                    verify_time(system, len(batch), k, max_prefix) - system.beta_v
                )
                span_row[m * n_k + j] = -draft_time(system, m, k)
                memory_row[m * n_k + j] = kv_bytes(system, m, k)
            rows += [verify_row, span_row]
            lower += [system.beta_v, system.comm_s]
            upper += [np.inf, np.inf]
        rows.append(memory_row)
        lower.append(-np.inf)
        upper.append(capacity)
    rows.append(server_row)
    lower.append(0.0)
    upper.append(np.inf)
    constraints = LinearConstraint(np.array(rows), np.array(lower), np.array(upper))
    integrality = np.zeros(n_vars)
    integrality[:v0] = 1
    ub = np.full(n_vars, np.inf)
    ub[:v0] = 1.0
    bounds = Bounds(np.zeros(n_vars), ub)

    def rate(candidate: tuple[int, ...]) -> tuple[float, float]:
        timing = round_timing(system, assignment, candidate)
        total = math.fsum(
            expected_tokens(system.users[m].acceptance, candidate[m]) for m in range(n_users)
        )
        return total, timing.span_s

    current = tuple(min(max(length, 1), system.l_max) for length in lengths)
    if not fits_memory(system, assignment, current):
        current = (1,) * n_users
    total, span = rate(current)
    for _ in range(MAX_DINKELBACH):
        lam = total / span
        cost = -tokens
        cost[t0] = lam
        result = milp(
            cost,
            constraints=constraints,
            integrality=integrality,
            bounds=bounds,
            options=MILP_OPTIONS,
        )
        if result.x is None:
            break
        y = np.asarray(result.x[:v0]).reshape(n_users, n_k)
        candidate = tuple(int(ks[int(np.argmax(y[m]))]) for m in range(n_users))
        if not fits_memory(system, assignment, candidate):
            break
        new_total, new_span = rate(candidate)
        if new_total - lam * new_span <= IMPROVEMENT_TOLERANCE * max(total, 1.0):
            break
        current, total, span = candidate, new_total, new_span
    return current


# ---------------------------------------------------------------------------------------------
# Brute force and baselines


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
    return _plan(system, best[0], best[1], ())


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
    return _plan(system, assignment, lengths, ())


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
    return _plan(system, _canonical(best[1]), lengths, ())


# ---------------------------------------------------------------------------------------------
# The paper's system

QWEN3_1_7B = ModelShape(
    layers=28, hidden=2048, ffn=6144, params_b=1.7, kv_bytes_per_token=2 * 28 * 8 * 128 * 2
)
"""Draft model: 28 layers, 2048 hidden, 6144 FFN; KV: 2 (K,V) · 28 · 8 KV heads · 128 · bf16."""
QWEN3_32B = ModelShape(
    layers=64, hidden=5120, ffn=25600, params_b=32.0, kv_bytes_per_token=2 * 64 * 8 * 128 * 2
)
"""Target model: 64 layers, 5120 hidden, 25600 FFN; KV 2 · 64 · 8 KV heads · 128 · 2 bytes
= 256 KiB per token (bf16)."""


def paper_system() -> DipsdSystem:
    """The constants of the public reproduction (unverified), in seconds and bytes.

    M = 6 identical users, prefix 512, a = 0.78, comm 3 ms, c_m = 4.0305e-11 and
    c_v = 1.2077e-11 read as ms per FLOP (so 4.0305e-14 and 1.2077e-14 s per FLOP) [?],
    β_m = 33.8151 ms, β_v = 95.1074 ms, memory 80 GB (8e10 bytes) [?], weights 32e9 params ·
    2 bytes (bf16), L_ub = 20 (l_max). The paper's initial l = 7 is `INITIAL_LENGTH`.
    """
    user = DipsdUser(acceptance=0.78, prefix_len=512, c_s_per_flop=4.0305e-14, beta_s=33.8151e-3)
    return DipsdSystem(
        users=(user,) * 6,
        draft_shape=QWEN3_1_7B,
        target_shape=QWEN3_32B,
        c_v=1.2077e-14,
        beta_v=95.1074e-3,
        comm_s=3e-3,
        memory_bytes=80e9,
        weight_bytes=QWEN3_32B.params_b * 1e9 * 2,
        l_max=20,
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _plan(
    system: DipsdSystem,
    assignment: Sequence[int],
    lengths: Sequence[int],
    history: tuple[HistoryEntry, ...],
) -> Plan:
    assignment, lengths = tuple(assignment), tuple(lengths)
    timing = round_timing(system, assignment, lengths)
    return Plan(
        n_batches=max(assignment) + 1,
        assignment=assignment,
        lengths=lengths,
        throughput_tokens_per_s=throughput(system, assignment, lengths),
        span_s=timing.span_s,
        history=history,
    )


def _canonical(assignment: Sequence[int]) -> tuple[int, ...]:
    """Relabel batches in order of their first user (S does not depend on the labels)."""
    labels: dict[int, int] = {}
    for batch in assignment:
        labels.setdefault(batch, len(labels))
    return tuple(labels[batch] for batch in assignment)


def _check_plan(
    system: DipsdSystem, assignment: Sequence[int], lengths: Sequence[int], min_length: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    assignment = tuple(int(batch) for batch in assignment)
    lengths = tuple(int(length) for length in lengths)
    n_users = len(system.users)
    if len(assignment) != n_users or len(lengths) != n_users:
        raise ValueError("need one batch index and one length per user")
    if min(assignment) < 0 or set(assignment) != set(range(max(assignment) + 1)):
        raise ValueError("batches must be numbered 0..N-1, every one non-empty")
    if any(not min_length <= length <= system.l_max for length in lengths):
        raise ValueError(f"lengths must be in [{min_length}, {system.l_max}]")
    return assignment, lengths


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
