"""PipeSD's NAV-threshold (R1, R2) autotuner: Bayesian optimisation behind a swappable ask/tell.

Two GP-EI backends: `GpThresholdTuner` (the default: a small numpy GP, `policies/pipesd/gp.py`,
about a millisecond a step) and `SkoptThresholdTuner` (scikit-optimize, the reference it was
checked against: `benchmarks/bench_autotune_quality.py`), plus random search as the baseline.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from numbers import Real
from typing import Any, Literal, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from policies.pipesd.gp import CandidatePosterior, fit_hyperparameters, normalise

Point = tuple[float, float]
"""(R1 sequence threshold, R2 token threshold)."""

Backend = Literal["gp", "skopt"]
"""`GpThresholdTuner` or `SkoptThresholdTuner`."""

SEED_MODULUS = 2**32
"""Run seeds are reduced modulo this, the range numpy's legacy RandomState (used by skopt) takes."""

ACQ_POINTS = 1000
"""Random candidates scored by the acquisition function per ask (both backends)."""

_BLAS = ThreadpoolController()
"""The GPs work on matrices of a few dozen rows: BLAS threads only add contention (a step took
5x longer with two threads on a busy 2-core machine, the numpy GP's re-fit up to 40x), so
each step runs on one."""

_UNLIMITED = nullcontext()


def _one_blas_thread() -> AbstractContextManager[object]:
    """BLAS on one thread for a step: `_BLAS.limit`, or nothing when every BLAS library runs
    on one thread already (a caller's `threadpool_limits`), since entering a limit costs 5-30 µs
    and checking the libraries' thread counts under 1 µs."""
    if all(library.num_threads == 1 for library in _BLAS.lib_controllers):
        return _UNLIMITED
    return _BLAS.limit(limits=1)


REFIT_EVERY = 4
"""The numpy GP re-fits its kernel hyper-parameters every this many observations."""


class ThresholdTuner(Protocol):
    """Minimises an objective (lower is better) over (R1, R2) within a budget of evaluations.

    PipeSD talks only to this interface, so another backend (e.g. optuna) can replace skopt.
    """

    @property
    def done(self) -> bool:
        """Whether the budget of evaluations of the current run is spent."""
        ...

    def ask(self) -> Point:
        """The next point to evaluate; the best point seen once `done`. Repeats until `tell`."""
        ...

    def tell(self, point: Point, objective: float) -> None:
        """Report the objective measured at `point`."""
        ...

    def best(self) -> tuple[Point, float] | None:
        """The best point told in the current run and its objective; None before any `tell`."""
        ...

    def restart(self) -> None:
        """Forget the current run and start tuning afresh (e.g. after the objective drifted)."""
        ...


class _BudgetedTuner(ABC):
    """What every tuner shares: ranges, budget, history of the current run, seeding per run.

    Run r (0 for the first, +1 per `restart`) is seeded with (seed + r) mod 2**32, so a tuner is
    reproducible from its constructor arguments and the objectives it is told.
    """

    def __init__(
        self, r1_range: tuple[float, float], r2_range: tuple[float, float], n_calls: int, seed: int
    ) -> None:
        self.r1_range = _checked_range("r1_range", r1_range)
        self.r2_range = _checked_range("r2_range", r2_range)
        self.n_calls = _checked_count("n_calls", n_calls)
        self.seed = _checked_seed(seed)
        self._run = 0
        self._history: list[tuple[Point, float]] = []
        self._pending: Point | None = None
        self._begin(self.seed % SEED_MODULUS)

    @property
    def done(self) -> bool:
        return len(self._history) >= self.n_calls

    def ask(self) -> Point:
        best = self.best()
        if self.done and best is not None:
            return best[0]
        if self._pending is None:
            self._pending = self._propose()
        return self._pending

    def tell(self, point: Point, objective: float) -> None:
        if self.done:
            raise RuntimeError("the tuning budget is spent; call restart() to tune again")
        told = self._checked_point(point)
        value = _checked_objective(objective)
        self._observe(told, value)
        self._history.append((told, value))
        self._pending = None

    def best(self) -> tuple[Point, float] | None:
        if not self._history:
            return None
        return min(self._history, key=lambda item: item[1])

    def restart(self) -> None:
        self._run += 1
        self._history = []
        self._pending = None
        self._begin((self.seed + self._run) % SEED_MODULUS)

    def _checked_point(self, point: Point) -> Point:
        if len(point) != 2:
            raise ValueError(f"point must be (r1, r2), got {point!r}")
        r1 = _checked_in_range("point r1", point[0], self.r1_range)
        r2 = _checked_in_range("point r2", point[1], self.r2_range)
        return (r1, r2)

    @abstractmethod
    def _begin(self, run_seed: int) -> None:
        """Start a run's backend state from its seed."""

    @abstractmethod
    def _propose(self) -> Point:
        """A new point to evaluate (called once per `tell`)."""

    @abstractmethod
    def _observe(self, point: Point, objective: float) -> None:
        """Feed one validated evaluation to the backend."""


class GpThresholdTuner(_BudgetedTuner):
    """Gaussian-process Bayesian optimisation with expected improvement, in numpy.

    The same model and acquisition as `SkoptThresholdTuner` (Matern 5/2 with amplitude and
    noise, inputs scaled to the unit square, normalised objective, EI with margin `xi` over
    `ACQ_POINTS` random candidates), made cheap: the kernel hyper-parameters are fitted by a
    grid search of the marginal likelihood when the GP starts (after `n_initial_points` random
    evaluations) and again every `refit_every` observations, and in between each observation
    extends the posterior by a rank-one Cholesky update (`policies/pipesd/gp.py`). The
    candidates are drawn once per run, from the run's seeded Generator, as are the random
    initial points; so a run is reproducible from the seed and what it is told. BLAS runs on
    one thread during a step, as for `SkoptThresholdTuner`.
    """

    def __init__(
        self,
        r1_range: tuple[float, float] = (0.05, 0.9),
        r2_range: tuple[float, float] = (0.6, 0.99),
        n_calls: int = 16,
        n_initial_points: int = 5,
        seed: int = 0,
        xi: float = 0.001,
        refit_every: int = REFIT_EVERY,
        n_candidates: int = ACQ_POINTS,
    ) -> None:
        self.n_initial_points = _checked_count("n_initial_points", n_initial_points)
        self.xi = _checked_xi(xi)
        self.refit_every = _checked_count("refit_every", refit_every)
        self.n_candidates = _checked_count("n_candidates", n_candidates)
        self._rng: np.random.Generator
        self._candidates: np.ndarray
        self._unit: list[tuple[float, float]]
        self._objectives: list[float]
        self._posterior: CandidatePosterior | None
        self._fitted_at: int
        self._next: np.ndarray | None
        """The candidate maximising EI after the latest `tell` (None while points are random)."""
        super().__init__(r1_range, r2_range, n_calls, seed)

    @property
    def posterior(self) -> CandidatePosterior | None:
        """The GP over the candidates (None until `n_initial_points` evaluations are told)."""
        return self._posterior

    def _begin(self, run_seed: int) -> None:
        self._rng = np.random.default_rng(run_seed)
        self._candidates = self._rng.random((self.n_candidates, 2))
        self._unit = []
        self._objectives = []
        self._posterior = None
        self._fitted_at = 0
        self._next = None

    def _propose(self) -> Point:
        if self._next is None:
            return self._from_unit(self._rng.random(2))
        return self._from_unit(self._next)

    def _observe(self, point: Point, objective: float) -> None:
        self._unit.append(self._to_unit(point))
        self._objectives.append(objective)
        if len(self._objectives) < self.n_initial_points:
            return
        with _one_blas_thread():  # one limit per step: entering one costs tens of µs
            self._update()
            ei = self._posterior.expected_improvement(self.xi)  # type: ignore[union-attr]
        self._next = self._candidates[int(np.argmax(ei))]

    def _update(self) -> None:
        """Add the latest observation to the GP, re-fitting the hyper-parameters when due."""
        n = len(self._objectives)
        if self._posterior is None or n - self._fitted_at >= self.refit_every:
            x, y = np.array(self._unit), np.array(self._objectives)
            hyper = fit_hyperparameters(x, normalise(y)[0])
            self._posterior = CandidatePosterior.build(self._candidates, hyper, x, y)
            self._fitted_at = n
        else:
            self._posterior.add(np.array(self._unit[-1]), self._objectives[-1])

    def _to_unit(self, point: Point) -> tuple[float, float]:
        (l1, h1), (l2, h2) = self.r1_range, self.r2_range
        return ((point[0] - l1) / (h1 - l1), (point[1] - l2) / (h2 - l2))

    def _from_unit(self, unit: np.ndarray) -> Point:
        (l1, h1), (l2, h2) = self.r1_range, self.r2_range
        r1 = min(max(l1 + float(unit[0]) * (h1 - l1), l1), h1)
        r2 = min(max(l2 + float(unit[1]) * (h2 - l2), l2), h2)
        return (r1, r2)


class SkoptThresholdTuner(_BudgetedTuner):
    """Gaussian-process Bayesian optimisation with expected improvement (scikit-optimize).

    The first `n_initial_points` evaluations are uniformly random, later ones maximise EI over
    `ACQ_POINTS` random candidates ("sampling": skopt's default L-BFGS polish costs more than
    the GP fit and gains nothing visible at this budget). `xi` is EI's exploration margin in
    objective units; the default suits objectives of about 0.05-0.3 (seconds per token), where
    skopt's own 0.01 would be a margin of 3-20 %. With `n_initial_points >= n_calls` the whole
    budget is random. The GP's kernel hyper-parameters are fitted with a single L-BFGS run
    (skopt's default restarts it twice): a step costs about a third as much, and the test
    against random search still holds. BLAS runs on one thread during a step: on matrices of a
    few dozen rows more threads only add contention (5x slower on a busy 2-core machine).
    """

    def __init__(
        self,
        r1_range: tuple[float, float] = (0.05, 0.9),
        r2_range: tuple[float, float] = (0.6, 0.99),
        n_calls: int = 16,
        n_initial_points: int = 5,
        seed: int = 0,
        xi: float = 0.001,
    ) -> None:
        self.n_initial_points = _checked_count("n_initial_points", n_initial_points)
        self.xi = _checked_xi(xi)
        self._optimizer: Any
        super().__init__(r1_range, r2_range, n_calls, seed)

    def _begin(self, run_seed: int) -> None:
        from skopt import Optimizer  # scikit-optimize: only this reference backend needs it
        from skopt.space import Space  # scikit-optimize, as above
        from skopt.utils import cook_estimator  # scikit-optimize, as above

        dimensions = [self.r1_range, self.r2_range]
        gp = cook_estimator(
            "GP", space=Space(dimensions), random_state=run_seed, n_restarts_optimizer=0
        )
        self._optimizer = Optimizer(
            dimensions=dimensions,
            base_estimator=gp,
            acq_func="EI",
            acq_optimizer="sampling",
            n_initial_points=self.n_initial_points,
            random_state=run_seed,
            acq_func_kwargs={"xi": self.xi},
            acq_optimizer_kwargs={"n_points": ACQ_POINTS},
        )

    def _propose(self) -> Point:
        with _one_blas_thread():
            r1, r2 = self._optimizer.ask()
        return (float(r1), float(r2))

    def _observe(self, point: Point, objective: float) -> None:
        with _one_blas_thread():
            self._optimizer.tell(list(point), objective)


class RandomThresholdTuner(_BudgetedTuner):
    """Uniform random search over the ranges: the baseline the BO tuner must beat."""

    def __init__(
        self,
        r1_range: tuple[float, float] = (0.05, 0.9),
        r2_range: tuple[float, float] = (0.6, 0.99),
        n_calls: int = 16,
        seed: int = 0,
    ) -> None:
        self._rng: np.random.Generator
        super().__init__(r1_range, r2_range, n_calls, seed)

    def _begin(self, run_seed: int) -> None:
        self._rng = np.random.default_rng(run_seed)

    def _propose(self) -> Point:
        r1 = float(self._rng.uniform(*self.r1_range))
        r2 = float(self._rng.uniform(*self.r2_range))
        return (r1, r2)

    def _observe(self, point: Point, objective: float) -> None:
        """Random search ignores what it is told; the shared history keeps the best."""


def threshold_tuner(backend: Backend, **settings: Any) -> ThresholdTuner:
    """The tuner of a backend ("gp" or "skopt") with the given constructor settings."""
    if backend == "gp":
        return GpThresholdTuner(**settings)
    if backend == "skopt":
        return SkoptThresholdTuner(**settings)
    raise ValueError(f"backend must be 'gp' or 'skopt', got {backend!r}")


def _checked_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    if len(bounds) != 2 or not all(_is_real(bound) for bound in bounds):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {bounds!r}")
    low, high = bounds
    if not 0.0 < low < high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < low < high <= 1, got {bounds!r}")
    return (float(low), float(high))


def _checked_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _checked_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def _checked_xi(xi: float) -> float:
    if not (_is_real(xi) and math.isfinite(xi) and xi >= 0):
        raise ValueError(f"xi must be a finite number >= 0, got {xi!r}")
    return float(xi)


def _checked_in_range(name: str, value: float, bounds: tuple[float, float]) -> float:
    if not (_is_real(value) and bounds[0] <= value <= bounds[1]):
        raise ValueError(f"{name} must lie in [{bounds[0]}, {bounds[1]}], got {value!r}")
    return float(value)


def _checked_objective(objective: float) -> float:
    if not (_is_real(objective) and math.isfinite(objective)):
        raise ValueError(f"objective must be a finite number, got {objective!r}")
    return float(objective)


def _is_real(value: object) -> bool:
    if type(value) is float:  # the usual case, without the ABC check (per tell)
        return True
    return isinstance(value, Real) and not isinstance(value, bool)
