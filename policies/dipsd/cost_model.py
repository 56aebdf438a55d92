"""DiP-SD's cost model: draft/verify FLOPs and times, KV memory, and the pipeline's period.

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
  ~80 GFLOP/s); `constants.paper_system` converts them to seconds per FLOP [?].

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


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
