"""A chi-square goodness-of-fit p-value for sampled token ids, shared by the sampling tests."""

from __future__ import annotations

import numpy as np
import pytest


def chi2_pvalue(samples: np.ndarray, p: np.ndarray) -> float:
    """Chi-square test of `samples` (token ids) against the distribution `p`: one bin per
    token expected >= 5 times, plus one for the rest (folded into the largest bin if the rest
    is expected < 5 times). Skips the test where scipy is absent."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")
    samples = np.asarray(samples)
    n = samples.size
    keep = np.flatnonzero(p * n >= 5)
    observed = [int(np.sum(samples == t)) for t in keep]
    expected = list(p[keep] * n)
    rest_obs, rest_exp = n - sum(observed), n * (1.0 - p[keep].sum())
    if rest_exp >= 5:
        observed.append(rest_obs)
        expected.append(rest_exp)
    else:
        largest = int(np.argmax(expected))
        observed[largest] += rest_obs
        expected[largest] += rest_exp
    return float(stats.chisquare(observed, np.array(expected) * n / sum(expected)).pvalue)
