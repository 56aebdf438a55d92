"""Online estimates of PipeSD's cost constants: α, β (upload) and γ (drafting), and N̂."""

from __future__ import annotations

import math
from collections import deque


class UploadCostEstimator:
    """Least-squares fit of upload time = α + β·tokens over the most recent batches.

    Running sums keep each update O(1). Until two different batch sizes have been seen, α keeps
    its prior and β is solved from the latest measurement; both are clamped to be non-negative.
    """

    __slots__ = ("_samples", "_sd", "_sn", "_snd", "_snn", "_window", "alpha_s", "beta_s")

    def __init__(self, alpha_s: float, beta_s: float, window: int = 64) -> None:
        self.alpha_s = alpha_s
        self.beta_s = beta_s
        self._samples: deque[tuple[int, float]] = deque()
        self._window = window
        self._sn = self._sd = self._snn = self._snd = 0.0

    def observe(self, n_tokens: int, duration_s: float) -> None:
        """Add one measured upload and refit."""
        if n_tokens <= 0:
            return
        samples = self._samples  # sums in locals: once per upload, the same arithmetic
        samples.append((n_tokens, duration_s))
        sn = self._sn + n_tokens
        sd = self._sd + duration_s
        snn = self._snn + n_tokens * n_tokens
        snd = self._snd + n_tokens * duration_s
        count = len(samples)
        if count > self._window:
            old_n, old_d = samples.popleft()
            count -= 1
            sn -= old_n
            sd -= old_d
            snn -= old_n * old_n
            snd -= old_n * old_d
        self._sn, self._sd, self._snn, self._snd = sn, sd, snn, snd
        var_n = snn - sn * sn / count
        if var_n > 1e-9 * (snn if snn > 1.0 else 1.0):
            beta = (snd - sn * sd / count) / var_n
            beta = 0.0 if beta < 0.0 else beta  # max(beta, 0.0), exactly
            self.beta_s = beta
            alpha = (sd - beta * sn) / count
            self.alpha_s = 0.0 if alpha < 0.0 else alpha
        else:
            beta = (duration_s - self.alpha_s) / n_tokens
            self.beta_s = 0.0 if beta < 0.0 else beta


class MovingAverage:
    """Mean of the last `window` observations, starting from a prior value."""

    __slots__ = ("_initial", "_sum", "_values")

    def __init__(self, initial: float, window: int) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._initial = initial

    def observe(self, value: float) -> None:
        """Add one observation."""
        if len(self._values) == self._values.maxlen:
            self._sum -= self._values[0]
        self._values.append(value)
        self._sum += value

    @property
    def value(self) -> float:
        """The current mean, or the prior before any observation."""
        return self._sum / len(self._values) if self._values else self._initial


class ExponentialAverage:
    """An exponentially weighted mean (O(1) per observation, for per-token estimates)."""

    __slots__ = ("value", "weight")

    def __init__(self, initial: float, weight: float) -> None:
        self.value = initial
        self.weight = weight

    def observe(self, value: float) -> None:
        """Move the mean towards `value` by `weight`."""
        self.value += self.weight * (value - self.value)


def tolerance_band(value: float, tolerance: float) -> tuple[float, float]:
    """The interval within which an estimate counts as unchanged (relative tolerance)."""
    spread = tolerance * abs(value)
    return value - spread, value + spread


def planning_window(mean_draft_len: float, cap: int) -> int:
    """N̂: the mean recent draft length rounded up, between 1 and `cap`."""
    return max(1, min(cap, math.ceil(mean_draft_len - 1e-9)))
