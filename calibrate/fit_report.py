"""Fit quality: the MAPE metric and the `FitReport` every calibration fitter returns.

Every fit comes with a `FitReport` whose headline number is the held-out MAPE from deterministic
k-fold cross-validation (goal: <= 5%). Latency and link reports give it twice: per sample, and
per configuration (the median of a configuration's repeated samples, predicted by a model fitted
without any of them), with the samples' timing noise beside it, so that a noisy machine and a
wrong model can be told apart. `fold_index` is the deterministic fold rule the reports describe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_FOLDS = 5
"""k of k-fold cross-validation (k = min(DEFAULT_FOLDS, n) for n samples)."""

MIN_CONFIGS = 3
"""Fewest configurations (distinct feature vectors) the per-configuration held-out MAPE needs."""

MAPE_GOAL = 0.05
"""Fit-quality goal from the calibration issue: held-out MAPE <= 5%."""


def mape(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Mean absolute percentage error, as a fraction: mean(|y_pred - y_true| / |y_true|).

    0.05 means 5%. Every y_true must be non-zero (ValueError otherwise).
    """
    truth = np.asarray(y_true, dtype=float)
    pred = np.asarray(y_pred, dtype=float)
    if truth.shape != pred.shape or truth.ndim != 1 or truth.size == 0:
        raise ValueError(
            f"mape: y_true and y_pred must be equal-length, non-empty 1-D arrays "
            f"(got shapes {truth.shape} and {pred.shape})"
        )
    zero = np.flatnonzero(truth == 0.0)
    if zero.size:
        raise ValueError(f"mape: y_true must be non-zero (sample {int(zero[0])} is 0)")
    return float(np.mean(np.abs(pred - truth) / np.abs(truth)))


@dataclass(frozen=True)
class FitReport:
    """How well a fitted model predicts data it was not fitted on.

    `mape_holdout` is the held-out mean absolute percentage error, as a fraction (0.05 = 5%):
    the n samples are split into k = min(5, n) folds deterministically (sorted by their
    features, sample of rank r goes to fold r mod k, so the folds do not depend on the order the
    samples were given in and each spans the measured range); each fold is predicted by the
    model refitted on the other k - 1 folds, and the mean of |predicted - measured| / measured
    is taken over all n samples (pooled, not a mean of per-fold means). `mape_train` is the same
    error of the model fitted on all samples, predicting those samples.

    A sample's error mixes the model's error with the timing noise of one measurement, and
    repetitions of one configuration (samples with identical features) fall in training and
    test folds alike. Latency and link reports therefore also hold, over the `n_configs`
    configurations: `mape_holdout_config`, the held-out MAPE per configuration: configurations
    (sorted by their features) go to k = min(5, n_configs) folds as samples do above, each fold's
    configurations are predicted by the model refitted on the samples of the other folds' ones,
    and the error is taken against each configuration's median time (mean over configurations);
    and `noise_spread`, the timing noise of single samples: the median over configurations
    measured more than once of (median absolute deviation of its samples / its median time).
    `mape_holdout_config` is NaN with fewer than MIN_CONFIGS (3) configurations, `noise_spread`
    when no configuration was measured twice; both are NaN (and `n_configs` 0) for acceptance.

    Acceptance models predict a probability of a binary outcome, for which MAPE means nothing:
    their reports hold NaN in the MAPE fields and fill `brier_holdout` / `brier_train` (mean
    squared difference between predicted probability and outcome 0/1; lower is better, 0.25
    is a coin flip's score on balanced outcomes) and `calibration_error_holdout` (held-out
    expected calibration error, an absolute probability: for each fold and each confidence
    bin, |P(accept) of the table fitted on the other folds - acceptance rate observed in the
    fold|, averaged with weights = the fold's samples in the bin, over all n samples). The
    calibration error includes the sampling noise of the held-out folds, so it overstates the
    table's error on few samples and shrinks as samples grow (about 0.03 at 5k samples and 0.01
    at 50k with 10 bins).
    """

    n_samples: int
    mape_holdout: float
    mape_train: float
    method: str
    brier_holdout: float = math.nan
    brier_train: float = math.nan
    calibration_error_holdout: float = math.nan
    mape_holdout_config: float = math.nan
    noise_spread: float = math.nan
    n_configs: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int | np.integer):
            raise ValueError(
                f"FitReport.n_samples must be an integer >= 1 (got {self.n_samples!r})"
            )
        if self.n_samples < 1:
            raise ValueError(f"FitReport.n_samples must be an integer >= 1 (got {self.n_samples})")
        if (
            isinstance(self.n_configs, bool)
            or not isinstance(self.n_configs, int | np.integer)
            or not 0 <= self.n_configs <= self.n_samples
        ):
            raise ValueError(
                f"FitReport.n_configs must be an integer in [0, n_samples = {self.n_samples}] "
                f"(got {self.n_configs!r})"
            )
        for name in (
            "mape_holdout",
            "mape_train",
            "brier_holdout",
            "brier_train",
            "calibration_error_holdout",
            "mape_holdout_config",
            "noise_spread",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float | np.floating) or not (
                math.isnan(value) or 0.0 <= value < math.inf
            ):
                raise ValueError(
                    f"FitReport.{name} must be a finite number >= 0 or NaN (got {value!r})"
                )
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"FitReport.method must be a non-empty string (got {self.method!r})")

    def passes(self, goal: float = MAPE_GOAL) -> bool:
        """Whether the fit meets `goal`. Latency and link models: held-out MAPE per
        configuration <= goal where measured, else per sample (the simulator uses a
        configuration's typical time: the per-sample error adds single-timing noise it never
        sees). Acceptance models (MAPE NaN): held-out calibration error <= goal (absolute
        probability). False when none was measured."""
        if isinstance(goal, bool) or not isinstance(goal, int | float) or not 0.0 < goal < math.inf:
            raise ValueError(f"passes: goal must be a finite number > 0 (got {goal!r})")
        if not math.isnan(self.mape_holdout_config):
            return self.mape_holdout_config <= goal
        if not math.isnan(self.mape_holdout):
            return self.mape_holdout <= goal
        if not math.isnan(self.calibration_error_holdout):
            return self.calibration_error_holdout <= goal
        return False

    def note(self) -> str:
        """One line for a profile's provenance notes."""
        if math.isnan(self.mape_holdout):
            return (
                f"held-out Brier {self.brier_holdout:.4f}, calibration error "
                f"{self.calibration_error_holdout:.4f} (train Brier {self.brier_train:.4f}, "
                f"{self.n_samples} samples; {self.method})"
            )
        per_sample = f"{100 * self.mape_holdout:.2f}%"
        train = f"train {100 * self.mape_train:.2f}%, {self.n_samples} samples"
        if not self.n_configs:  # no configuration-level metrics (a report built by hand)
            return f"held-out MAPE {per_sample} ({train}; {self.method})"
        configs = f"{self.n_configs} configuration{'s' if self.n_configs != 1 else ''}"
        noise = (
            f"timing noise {100 * self.noise_spread:.2f}%"
            if not math.isnan(self.noise_spread)
            else "timing noise not measured: no configuration repeated"
        )
        if math.isnan(self.mape_holdout_config):
            return (
                f"held-out MAPE {per_sample} per sample (per configuration not computed: "
                f"{configs}, needs {MIN_CONFIGS}; {noise}; {train}; {self.method})"
            )
        return (
            f"held-out MAPE {100 * self.mape_holdout_config:.2f}% per configuration "
            f"({per_sample} per sample, {noise}; {train} in {configs}; {self.method})"
        )


def fold_index(keys: np.ndarray, folds: int) -> tuple[np.ndarray, int]:
    """Fold index per sample: samples sorted by the columns of `keys` (first column first),
    rank r goes to fold r mod k, k = min(folds, n)."""
    n = keys.shape[0]
    k = min(folds, n)
    order = np.lexsort(keys.T[::-1]) if keys.shape[1] else np.arange(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % k
    return fold_of, k


__all__ = ["DEFAULT_FOLDS", "MAPE_GOAL", "MIN_CONFIGS", "FitReport", "fold_index", "mape"]
