"""A small Gaussian process for PipeSD's threshold tuner: Matern 5/2, grid-fitted, incremental.

The model is the one scikit-optimize fits for its "GP" estimator (inputs scaled to the unit
square, the objective normalised to zero mean and unit variance, kernel
``amplitude · Matern_5/2(length_scales) + noise · I``), with two changes that make a step cost
well under a millisecond instead of tens:

* Hyper-parameters are chosen by `fit_hyperparameters`, a vectorised grid search of the log
  marginal likelihood (amplitude profiled out in closed form), rather than by L-BFGS at every
  observation; the tuner re-fits them only every few observations.
* Between re-fits a new observation extends the Cholesky factor by one row (the bordered
  rank-one update) and the cached solves against a fixed candidate set by one row each, so
  the posterior at the candidates costs O(n·m) instead of O(n³ + n²·m).

Pure: numpy and scipy only, no clocks or I/O; deterministic given its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import ndtr

LENGTH_SCALES = np.geomspace(0.05, 20.0, 8)
"""Length scales tried per input (unit-square coordinates; skopt bounds them to [0.01, 100]):
below 0.05 sixteen points look uncorrelated, above 20 the surface is a plane, either way."""
NOISE_RATIOS = np.geomspace(1e-5, 1.0, 5)
"""Noise variance / amplitude tried; skopt's WhiteKernel noise is bounded below by 1e-5.
8 x 8 x 5 = 320 models: a re-fit at 13 observations costs about 0.8 ms on one core."""
AMPLITUDE_BOUNDS = (0.01, 1000.0)
"""Signal variance of the normalised objective, as skopt's ConstantKernel bounds it."""
JITTER = 1e-10
"""Added to the diagonal as in scikit-learn's GaussianProcessRegressor (alpha)."""
SQRT5 = math.sqrt(5.0)
_SUM = np.add.reduce
_INV_SQ = 1.0 / LENGTH_SCALES**2
"""1 / length scale², as `fit_hyperparameters` divides by them (computed once)."""


@dataclass(frozen=True)
class Hyperparameters:
    """Kernel settings, for the normalised objective on the unit square."""

    length_scales: tuple[float, float]
    amplitude: float
    noise: float


def matern52(a: np.ndarray, b: np.ndarray, length_scales: tuple[float, float]) -> np.ndarray:
    """The Matern 5/2 correlation between the rows of `a` (n, 2) and `b` (m, 2): (n, m)."""
    return _matern52_scaled(a, _ScaledPoints(b, length_scales), length_scales)


class _ScaledPoints:
    """Points divided by the length scales and their squared norms: what `matern52` computes
    for its `b`, kept for the candidates, which every observation is compared with."""

    __slots__ = ("scaled_t", "squared")

    def __init__(self, points: np.ndarray, length_scales: tuple[float, float]) -> None:
        scaled = points / np.asarray(length_scales)
        self.scaled_t = scaled.T
        self.squared = (scaled * scaled).sum(1)[None, :]


def _matern52_scaled(
    a: np.ndarray, b: _ScaledPoints, length_scales: tuple[float, float]
) -> np.ndarray:
    """`matern52` against points already scaled (the same arithmetic, so the same bits)."""
    scaled_a = a / np.asarray(length_scales)
    sq = (scaled_a * scaled_a).sum(1)[:, None] + b.squared - 2.0 * scaled_a @ b.scaled_t
    s = SQRT5 * np.sqrt(np.maximum(sq, 0.0))
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


def normalise(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(y - mean) / std, the mean and the std (1 when all values are equal), as normalize_y.

    The mean and std are numpy's `y.mean()` and `y.std()` step by step (the same pairwise sum,
    divisions and square root, so the same bits) without their wrappers, which cost more than
    the arithmetic on a few dozen values.
    """
    n = len(y)
    mean = float(_SUM(y)) / n
    centred = y - mean
    std = math.sqrt(float(_SUM(centred * centred)) / n)
    if std == 0.0:
        std = 1.0
    return centred / std, mean, std


def fit_hyperparameters(x: np.ndarray, y_norm: np.ndarray) -> Hyperparameters:
    """The grid point maximising the log marginal likelihood of normalised `y_norm` at `x`.

    For each length-scale pair and noise ratio g the correlation matrix C + g·I is factored
    (all of them in one batched Cholesky); the amplitude s² maximising the likelihood is
    then y'(C + gI)⁻¹y / n, clipped to `AMPLITUDE_BOUNDS`. Ties go to the first grid point.
    """
    n = len(y_norm)
    d1 = (x[:, None, 0] - x[None, :, 0]) ** 2
    d2 = (x[:, None, 1] - x[None, :, 1]) ** 2
    inv_sq = _INV_SQ
    r = np.sqrt(d1[None, None] * inv_sq[:, None, None, None] + d2 * inv_sq[None, :, None, None])
    s = SQRT5 * r
    corr = (1.0 + s + s * s / 3.0) * np.exp(-s)
    eye = np.eye(n)
    k = corr[:, :, None] + (NOISE_RATIOS[:, None, None] + JITTER) * eye
    chol = np.linalg.cholesky(k).reshape(-1, n, n)
    w = np.empty((chol.shape[0], n))
    for i in range(n):  # forward substitution, vectorised over the grid
        w[:, i] = (y_norm[i] - np.einsum("bj,bj->b", chol[:, i, :i], w[:, :i])) / chol[:, i, i]
    quad = (w * w).sum(1)
    log_det = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)
    amplitude = np.clip(quad / n, *AMPLITUDE_BOUNDS)
    nll = 0.5 * quad / amplitude + 0.5 * n * np.log(amplitude) + 0.5 * log_det
    i1, i2, ig = np.unravel_index(int(np.argmin(nll)), k.shape[:3])
    best_amplitude = float(amplitude[np.ravel_multi_index((i1, i2, ig), k.shape[:3])])
    return Hyperparameters(
        length_scales=(float(LENGTH_SCALES[i1]), float(LENGTH_SCALES[i2])),
        amplitude=best_amplitude,
        noise=best_amplitude * float(NOISE_RATIOS[ig]),
    )


class CandidatePosterior:
    """The GP posterior over a fixed set of candidate points, updated one observation at a time.

    Holds the Cholesky factor L of K(X, X) + (noise + jitter)·I for the observed inputs X and
    V = L⁻¹·K(X, candidates); `add` extends both by one row. The posterior of the latent
    objective (noise excluded, as skopt predicts) at the candidates is then
    mean = V'·L⁻¹·y and variance = amplitude - colsum(V²), in normalised units.
    """

    def __init__(self, candidates: np.ndarray, hyper: Hyperparameters) -> None:
        self.candidates = np.asarray(candidates, dtype=float)
        self.hyper = hyper
        self._scaled = _ScaledPoints(self.candidates, hyper.length_scales)
        m = len(self.candidates)
        self._x = np.empty((0, 2))
        self._y: list[float] = []
        self._chol = np.empty((0, 0))
        self._v = np.empty((0, m))
        self._v_sq = np.zeros(m)

    @classmethod
    def build(
        cls,
        candidates: np.ndarray,
        hyper: Hyperparameters,
        x: np.ndarray,
        y: np.ndarray,
    ) -> CandidatePosterior:
        """The posterior of observations `x` (n, 2), `y` factored at once (after a re-fit)."""
        posterior = cls(candidates, hyper)
        x = np.asarray(x, dtype=float).reshape(-1, 2)
        k = hyper.amplitude * matern52(x, x, hyper.length_scales)
        k.reshape(-1)[:: len(x) + 1] += hyper.noise + JITTER  # the diagonal (k is contiguous)
        chol = np.linalg.cholesky(k)
        k_cand = hyper.amplitude * _matern52_scaled(x, posterior._scaled, hyper.length_scales)
        v = solve_triangular(chol, k_cand, lower=True, check_finite=False)
        posterior._x, posterior._y = x, [float(value) for value in y]
        posterior._chol, posterior._v, posterior._v_sq = chol, v, (v * v).sum(0)
        return posterior

    @property
    def n(self) -> int:
        """Observations held."""
        return len(self._y)

    @property
    def x(self) -> np.ndarray:
        """The observed inputs, (n, 2)."""
        return self._x

    @property
    def y(self) -> np.ndarray:
        """The observed objectives (original units)."""
        return np.asarray(self._y)

    def add(self, point: np.ndarray, objective: float) -> None:
        """Add one observation: one new row of L and of V (O(n² + n·m))."""
        hyper = self.hyper
        point = np.asarray(point, dtype=float).reshape(1, 2)
        cross = hyper.amplitude * matern52(self._x, point, hyper.length_scales)[:, 0]
        own = hyper.amplitude + hyper.noise + JITTER
        n = self.n
        if n:
            row = _forward(self._chol, cross)
            diag = math.sqrt(max(own - float(row @ row), JITTER))
        else:
            row = np.empty(0)
            diag = math.sqrt(own)
        chol = np.zeros((n + 1, n + 1))
        chol[:n, :n] = self._chol
        chol[n, :n] = row
        chol[n, n] = diag
        k_cand = hyper.amplitude * _matern52_scaled(point, self._scaled, hyper.length_scales)[0]
        v_row = (k_cand - row @ self._v) / diag
        self._chol = chol
        self._v = np.concatenate((self._v, v_row[None, :]))  # vstack without its wrappers
        self._v_sq += v_row * v_row
        self._x = np.concatenate((self._x, point))
        self._y.append(float(objective))

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at the candidates, in the objective's units."""
        return self._predict(self.y)

    def _predict(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`predict` for the observed objectives `y` as an array (EI has them already)."""
        y_norm, mean, std = normalise(y)
        weights = _forward(self._chol, y_norm)
        mu = self._v.T @ weights
        var = np.maximum(self.hyper.amplitude - self._v_sq, 0.0)
        return mean + std * mu, std * np.sqrt(var)

    def expected_improvement(self, xi: float) -> np.ndarray:
        """EI for minimisation at every candidate: E[max(y_best - f - xi, 0)] (skopt's form)."""
        y = self.y
        mu, sigma = self._predict(y)
        improvement = float(min(self._y)) - mu - xi  # y.min(): the same float, no array call
        positive = sigma > 0.0
        if positive.all():  # the usual case: no masks (elementwise, so the same values)
            z = improvement / sigma
            return improvement * ndtr(z) + sigma * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        ei = np.zeros_like(mu)
        z = improvement[positive] / sigma[positive]
        ei[positive] = improvement[positive] * ndtr(z) + sigma[positive] * np.exp(
            -0.5 * z * z
        ) / math.sqrt(2.0 * math.pi)
        return ei


def _forward(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    """L⁻¹·b for lower-triangular L (n ≤ a few dozen: a Python loop beats a LAPACK call)."""
    n = len(b)
    out = np.empty(n)
    for i in range(n):
        out[i] = (b[i] - chol[i, :i] @ out[:i]) / chol[i, i]
    return out
