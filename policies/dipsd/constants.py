"""The DiP-SD paper's system constants, and where each comes from.

Provenance (design/papers.md, "DiP-SD", arXiv 2604.20919):
* Model shapes: Qwen3-1.7B drafts for Qwen3-32B, as in the paper; layers, hidden and FFN sizes
  are the models' published configs, KV heads and head size give the KV bytes per token.
* Device, server and link constants (M = 6, prefix 512, a = 0.78, comm 3 ms, c_m, β_m, c_v,
  β_v, memory cap 80 GB, initial l = 7, L_ub = 20) are those seen in a public reproduction of
  the paper, unverified against the paper itself. Their units are one of the readings the
  paper leaves open (c in ms per FLOP), marked [?] here and in `cost_model`.
"""

from __future__ import annotations

from policies.dipsd.cost_model import DipsdSystem, DipsdUser, ModelShape

INITIAL_LENGTH = 7
"""The paper's starting draft length for the alternation."""

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
