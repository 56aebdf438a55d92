"""The affine latency model (non-negative weighted least squares) and its cross-validation.

One shape, after scikit-learn: a model is configured at construction (arguments checked there,
messages naming the argument and its allowed values), `fit(X, y)` returns the fitted model,
`predict(X)` answers; `cross_validate` gives its `FitReport`.

Latency and link models are affine with non-negative coefficients and intercept (a latency
cannot shrink as work grows, nor start below zero): non-negative least squares on [1, x]
columns (`scipy.optimize.nnls`), optionally with the intercept bounded below (where NNLS's
intercept falls below the bound, the intercept is set to it and the slopes fitted again). By
default each sample's residual is divided by its measured value ("relative" weighting), so the
fit minimises squared relative error: the quantity MAPE measures, and the right weighting for
timing noise that scales with the time measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from calibrate.fit_report import DEFAULT_FOLDS, MIN_CONFIGS, FitReport, fold_index, mape

WEIGHTINGS = ("relative", "absolute")
"""How AffineModel weighs residuals: divided by the measured y, or as they are."""


class AffineModel:
    """y = intercept_ + coef_ · x, fitted by (non-negative) weighted least squares.

    Arguments (checked here, ValueError naming the argument otherwise):
    - `feature_names`: one non-empty, distinct name per column of X (used in messages);
      default a single feature "x".
    - `weighting`: "relative" (default: residuals divided by y, i.e. least squared relative
      error; every y must be > 0) or "absolute" (ordinary least squares).
    - `nonnegative`: True (default) constrains intercept and coefficients to >= 0
      (`scipy.optimize.nnls`); False fits them unconstrained (`numpy.linalg.lstsq`).
    - `min_intercept`: a lower bound on the intercept (default 0: none beyond `nonnegative`).
      When the solution above has a smaller intercept, the best fit within the bound has the
      intercept at the bound, and the slopes are fitted to y - bound (`intercept_at_bound_`
      then says so).

    `fit` needs at least as many samples as parameters (features + 1), every feature must take
    at least two distinct values, and no feature may be an affine combination of the others;
    otherwise its slope is not identified and `fit` says which. After `fit`: `intercept_`
    (float) and `coef_` (array, one per feature).
    """

    def __init__(
        self,
        feature_names: Sequence[str] = ("x",),
        *,
        weighting: str = "relative",
        nonnegative: bool = True,
        min_intercept: float = 0.0,
    ) -> None:
        if isinstance(feature_names, str) or not isinstance(feature_names, Sequence):
            raise ValueError(
                f"AffineModel: feature_names must be a sequence of strings (got {feature_names!r})"
            )
        names = tuple(feature_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"AffineModel: feature_names must hold at least one non-empty string "
                f"(got {feature_names!r})"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"AffineModel: feature_names must be distinct (got {names!r})")
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"AffineModel: weighting must be one of {', '.join(WEIGHTINGS)} (got {weighting!r})"
            )
        if not isinstance(nonnegative, bool | np.bool_):
            raise ValueError(
                f"AffineModel: nonnegative must be True or False (got {nonnegative!r})"
            )
        if (
            isinstance(min_intercept, bool)
            or not isinstance(min_intercept, int | float | np.floating)
            or not 0.0 <= min_intercept < math.inf
        ):
            raise ValueError(
                f"AffineModel: min_intercept must be a finite number >= 0 (got {min_intercept!r})"
            )
        self.feature_names = names
        self.weighting = weighting
        self.nonnegative = bool(nonnegative)
        self.min_intercept = float(min_intercept)
        self.intercept_: float | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_at_bound_ = False

    def __repr__(self) -> str:
        state = (
            f", intercept_={self.intercept_!r}, coef_={self.coef_.tolist()!r}"
            if self.coef_ is not None
            else ""
        )
        return (
            f"AffineModel(feature_names={self.feature_names!r}, weighting={self.weighting!r}, "
            f"nonnegative={self.nonnegative!r}, min_intercept={self.min_intercept!r}{state})"
        )

    @property
    def n_features(self) -> int:
        """Number of columns of X."""
        return len(self.feature_names)

    @property
    def n_params(self) -> int:
        """Number of fitted parameters: one slope per feature plus the intercept."""
        return self.n_features + 1

    def get_params(self) -> dict[str, Any]:
        """The construction arguments."""
        return {
            "feature_names": self.feature_names,
            "weighting": self.weighting,
            "nonnegative": self.nonnegative,
            "min_intercept": self.min_intercept,
        }

    def clone(self) -> AffineModel:
        """An unfitted model with the same arguments."""
        return AffineModel(**self.get_params())

    @property
    def method(self) -> str:
        """How the model is fitted, in words (for reports)."""
        solver = "nnls" if self.nonnegative else "lstsq"
        return f"affine {solver}, {self.weighting} weights"

    def _design(self, X: Any) -> np.ndarray:
        """X as a finite (n, n_features) float array."""
        array = np.asarray(X, dtype=float)
        if array.ndim == 1 and self.n_features == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != self.n_features:
            raise ValueError(
                f"X must have shape (n, {self.n_features}) for features "
                f"{', '.join(self.feature_names)} (got shape {array.shape})"
            )
        bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
        if bad.size:
            raise ValueError(f"X must be finite (sample {int(bad[0])} is not)")
        return array

    def _target(self, y: Any, n: int) -> np.ndarray:
        """y as a finite length-n float array (> 0 under relative weighting)."""
        values = np.asarray(y, dtype=float)
        if values.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match X (got shape {values.shape})")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"y must be finite (sample {int(bad[0])} is {values[bad[0]]})")
        if self.weighting == "relative":
            bad = np.flatnonzero(values <= 0.0)
            if bad.size:
                raise ValueError(
                    f"y must be > 0 with relative weighting (sample {int(bad[0])} is "
                    f"{values[bad[0]]})"
                )
        return values

    def _check_identifiable(self, X: np.ndarray) -> None:
        """ValueError naming a feature whose slope the samples cannot determine."""
        n = X.shape[0]
        if n < self.n_params:
            raise ValueError(
                f"needs at least {self.n_params} samples to fit {self.n_params} parameters "
                f"(intercept and a slope for {', '.join(self.feature_names)}) (got {n})"
            )
        for j, name in enumerate(self.feature_names):
            if np.all(X[:, j] == X[0, j]):
                raise ValueError(
                    f"every sample has {name} = {X[0, j]:g}: its slope cannot be identified "
                    f"(needs at least 2 distinct {name} values)"
                )
        design = _scaled(np.column_stack([np.ones(n), X]))
        rank = np.linalg.matrix_rank(design)
        if rank < self.n_params:
            involved = [
                name
                for j, name in enumerate(self.feature_names)
                if np.linalg.matrix_rank(np.delete(design, j + 1, axis=1)) == rank
            ]
            raise ValueError(
                f"{', '.join(involved)} vary together (an affine combination of one another "
                f"across the samples): their slopes cannot be separated; vary them independently"
            )

    def _solve(self, X: np.ndarray, y: np.ndarray) -> AffineModel:
        """Fit without the identifiability checks (used on cross-validation folds)."""
        design = np.column_stack([np.ones(X.shape[0]), X])
        weights = 1.0 / y if self.weighting == "relative" else np.ones_like(y)
        design = design * weights[:, None]
        target = y * weights
        scale = np.max(np.abs(design), axis=0)
        scale[scale == 0.0] = 1.0
        if self.nonnegative:
            solution, _ = nnls(design / scale, target)
        else:
            solution = np.linalg.lstsq(design / scale, target, rcond=None)[0]
        params = solution / scale
        self.intercept_at_bound_ = bool(params[0] < self.min_intercept)
        if self.intercept_at_bound_:
            # The best fit over the smaller set {intercept >= bound} then has the intercept
            # at the bound (the objective is convex and its minimum lies outside the set), so
            # the slopes are the best fit to y - bound.
            rest = target - self.min_intercept * design[:, 0]
            slopes = design[:, 1:] / scale[1:]
            if self.nonnegative:
                solution, _ = nnls(slopes, rest)
            else:
                solution = np.linalg.lstsq(slopes, rest, rcond=None)[0]
            params = np.concatenate([[self.min_intercept], solution / scale[1:]])
        self.intercept_ = float(params[0])
        self.coef_ = params[1:].astype(float)
        return self

    def fit(self, X: Any, y: Any) -> AffineModel:
        """Fit to samples X (n, n_features; 1-D allowed for one feature) and y (n,); returns
        self, fitted."""
        design = self._design(X)
        target = self._target(y, design.shape[0])
        self._check_identifiable(design)
        return self._solve(design, target)

    def predict(self, X: Any) -> np.ndarray:
        """intercept_ + X @ coef_ for X of shape (n, n_features) (1-D for one feature)."""
        if self.coef_ is None or self.intercept_ is None:
            raise ValueError("AffineModel is not fitted: call fit(X, y) first")
        return self.intercept_ + self._design(X) @ self.coef_


def _scaled(design: np.ndarray) -> np.ndarray:
    """Columns divided by their largest magnitude (for rank decisions independent of units)."""
    scale = np.max(np.abs(design), axis=0)
    scale[scale == 0.0] = 1.0
    return design / scale


def cross_validate(model: AffineModel, X: Any, y: Any, folds: int = DEFAULT_FOLDS) -> FitReport:
    """The FitReport of `model`'s arguments on (X, y): held-out MAPE from k-fold
    cross-validation, k = min(folds, n), and training MAPE of the fit on all samples; the
    held-out MAPE per configuration from k = min(folds, configurations) folds of
    configurations (NaN below MIN_CONFIGS configurations) and the timing noise (see FitReport).

    `model` is used as a template (its arguments); it is not modified. Folds are fitted
    without identifiability checks: a training fold that happens not to identify a slope still
    gets NNLS's solution, and the held-out error shows what that costs.
    """
    folds = _check_folds(folds)
    template = model.clone()
    design = template._design(X)
    target = template._target(y, design.shape[0])
    n = design.shape[0]
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 samples (got {n})")
    full = template.clone().fit(design, target)
    fold_of, k = fold_index(design, folds)
    held_out = np.empty(n)
    for fold in range(k):
        test = fold_of == fold
        part = template.clone()._solve(design[~test], target[~test])
        held_out[test] = part.predict(design[test])
    keys, config_of = _configurations(design)
    medians = np.array([np.median(target[config_of == c]) for c in range(keys.shape[0])])
    method = f"{template.method}, {k}-fold CV"
    mape_config = math.nan
    if keys.shape[0] >= MIN_CONFIGS:
        config_fold, k_config = fold_index(keys, folds)
        held_config = np.empty(keys.shape[0])
        for fold in range(k_config):
            test = config_fold == fold
            train = ~test[config_of]
            part = template.clone()._solve(design[train], target[train])
            held_config[test] = part.predict(keys[test])
        mape_config = mape(medians, held_config)
        method = f"{method}, {k_config}-fold by configuration"
    return FitReport(
        n_samples=n,
        mape_holdout=mape(target, held_out),
        mape_train=mape(target, full.predict(design)),
        method=method,
        mape_holdout_config=mape_config,
        noise_spread=_noise_spread(target, config_of, medians),
        n_configs=int(keys.shape[0]),
    )


def _configurations(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct feature vectors sorted by their columns, first column first; the index of
    each sample's configuration in them)."""
    keys, inverse = np.unique(design, axis=0, return_inverse=True)
    return keys, inverse.reshape(-1)


def _noise_spread(target: np.ndarray, config_of: np.ndarray, medians: np.ndarray) -> float:
    """Median over configurations with 2+ samples of MAD / median; NaN if there are none."""
    spreads = [
        float(np.median(np.abs(target[config_of == c] - medians[c]))) / abs(medians[c])
        for c in range(medians.size)
        if np.count_nonzero(config_of == c) > 1
    ]
    return float(np.median(spreads)) if spreads else math.nan


def _check_folds(folds: Any) -> int:
    """`folds` as an int (ValueError unless an integer >= 2)."""
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2 (got {folds!r})")
    return int(folds)


__all__ = ["WEIGHTINGS", "AffineModel", "cross_validate"]
