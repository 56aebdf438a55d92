"""Seeds of policy instances: stable across runs, distinct per policy label and per edge."""

from __future__ import annotations

import zlib


def policy_seed(seed: int, label: str, edge: int = 0) -> int:
    """A policy's own seed: stable across runs, different per label and per edge."""
    key = label if edge == 0 else f"{label}/{edge}"
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**31)
