"""PipeSD: DP-planned token-batch pipeline, dual-threshold NAV trigger, proactive drafting and
an online Bayesian-optimisation autotuner for the thresholds (see `shared/design/papers.md`).

Switches reproduce the paper's ablations: `pipeline=false` (upload the whole draft at NAV),
`fixed_batch=k` (pipeline with fixed-size batches), `trigger="token"|"sequence"` (one threshold
only), `autotune=false` (fixed thresholds), `proactive=false` (wait while a NAV is pending).
"""

from __future__ import annotations

import functools
from collections import deque
from typing import Annotated, Literal

from pydantic import Field, model_validator

from policies.base import Decision, Policy, RequestStart, VerifyOutcome
from policies.params import PolicyParams
from policies.pipesd.autotune import threshold_tuner
from policies.pipesd.batch_plan import batch_boundaries, plan_batches
from policies.pipesd.estimators import (
    ExponentialAverage,
    MovingAverage,
    UploadCostEstimator,
    planning_window,
    tolerance_band,
)

CONTINUE, SEND, VERIFY = Decision.CONTINUE, Decision.SEND, Decision.VERIFY


class PipeSDParams(PolicyParams):
    """PipeSD's parameters; defaults from the authors' code as reported in papers.md."""

    r1: float = Field(0.3, gt=0.0, le=1.0, description="sequence threshold R1 (start value)")
    r2: float = Field(0.8, gt=0.0, le=1.0, description="token threshold R2 (start value)")
    trigger: Literal["dual", "token", "sequence"] = "dual"
    pipeline: bool = True
    fixed_batch: int | None = Field(None, ge=1, le=256, description="fixed batch size (ablation)")
    proactive: bool = True
    autotune: bool = True
    initial_window: int = Field(20, ge=1, le=256, description="N̂ before any draft is seen")
    window_history: int = Field(100, ge=1, description="draft lengths averaged into N̂")
    max_draft_len: int = Field(64, ge=1, le=256, description="hard cap on draft length")
    replan_tolerance: float = Field(0.2, gt=0.0, description="re-plan when α, β or γ moves more")
    probe_sizes: tuple[Annotated[int, Field(ge=1, le=256, strict=True)], ...] = Field(
        (1, 2, 3, 4, 5, 6, 7, 8),
        strict=False,
        min_length=1,
        max_length=256,
        description="start-up probes, tokens each (TOML list)",
    )
    initial_alpha_s: float = Field(0.05, ge=0.0, description="α prior, s per message")
    initial_beta_s: float = Field(0.1, ge=0.0, description="β prior, s per token")
    initial_gamma_s: float = Field(0.036, ge=0.0, description="γ prior, s per drafted token")
    tune_r1_range: tuple[float, float] = Field((0.05, 0.9), strict=False)
    tune_r2_range: tuple[float, float] = Field((0.6, 0.99), strict=False)
    tune_calls: int = Field(16, ge=2, description="BO evaluations per tuning run")
    tune_initial_points: int = Field(5, ge=1, description="random points before the GP")
    tune_window_tokens: int = Field(30, ge=1, description="accepted tokens per evaluation")
    tune_backend: Literal["gp", "skopt"] = Field(
        "gp", description="BO backend: numpy GP, or scikit-optimize (the reference)"
    )
    tuner_step_s: float = Field(
        3.1e-4,
        ge=0.0,
        description="edge compute of one BO step (tell + ask) at compute factor 1, charged to "
        "the edge's timeline by the simulator (default: the numpy GP's mean step in "
        "benchmarks/bench_policy_steps.py, initial points and hyper-parameter re-fits included)",
    )
    drift_tolerance: float = Field(0.25, gt=0.0, description="re-tune when time/token drifts")
    drift_windows: int = Field(3, ge=1, description="consecutive drifted windows to re-tune")

    @model_validator(mode="after")
    def _tune_ranges_are_intervals(self) -> PipeSDParams:
        for name, (low, high) in (("r1", self.tune_r1_range), ("r2", self.tune_r2_range)):
            if not 0.0 < low < high <= 1.0:
                raise ValueError(f"tune_{name}_range must satisfy 0 < low < high <= 1")
        return self


@functools.lru_cache(maxsize=4096, typed=True)
def _planned_boundaries(
    window: int, alpha_s: float, beta_s: float, gamma_s: float
) -> frozenset[int]:
    """The DP plan's batch ends for these inputs, kept per inputs (a pure function): the edges
    of a fleet start from the same priors and probe the same links, so they plan alike."""
    return frozenset(batch_boundaries(plan_batches(window, alpha_s, beta_s, gamma_s)))


class ThresholdAutotuner:
    """Runs the BO tuner online: one evaluation per window of committed tokens.

    The objective is the measured time per committed token over the window (times come from
    the executor's events). When the budget is spent the best point is kept. The paper does not
    publish its re-tune rule; ours: the mean of the first `drift_windows` windows at the chosen
    point is the baseline, and tuning restarts when the mean of the last `drift_windows`
    windows differs from it by more than `drift_tolerance` (either way: the link got worse or
    better).
    """

    __slots__ = (
        "_baseline",
        "_elapsed_s",
        "_recent",
        "_tokens",
        "evaluations",
        "params",
        "point",
        "restarts",
        "tuner",
        "window_tokens",
    )

    def __init__(self, params: PipeSDParams, seed: int) -> None:
        self.params = params
        self.tuner = threshold_tuner(
            params.tune_backend,
            r1_range=params.tune_r1_range,
            r2_range=params.tune_r2_range,
            n_calls=params.tune_calls,
            n_initial_points=params.tune_initial_points,
            seed=seed,
        )
        start = (params.r1, params.r2)
        in_range = all(
            low <= value <= high
            for value, (low, high) in zip(
                start, (params.tune_r1_range, params.tune_r2_range), strict=True
            )
        )
        # the configured (R1, R2) are the first point evaluated when they lie in the ranges
        self.point = start if in_range else self.tuner.ask()
        self._elapsed_s = 0.0
        self._tokens = 0
        self.window_tokens = params.tune_window_tokens
        self._baseline: float | None = None
        self._recent: deque[float] = deque(maxlen=params.drift_windows)
        self.evaluations = 0
        self.restarts = 0

    def observe(self, elapsed_s: float, tokens: int) -> tuple[float, float]:
        """Account one decoding interval; return the thresholds to use next."""
        self._elapsed_s += elapsed_s
        self._tokens += tokens
        if self._tokens < self.window_tokens:
            return self.point
        return self.evaluate()

    def evaluate(self) -> tuple[float, float]:
        """A window is complete: tell the tuner (or watch for drift); the thresholds to use."""
        objective = self._elapsed_s / self._tokens
        self._elapsed_s, self._tokens = 0.0, 0
        if not self.tuner.done:
            self.tuner.tell(self.point, objective)
            self.evaluations += 1
            self.point = self.tuner.ask()
            return self.point
        self._recent.append(objective)
        if len(self._recent) < self._recent.maxlen:  # type: ignore[operator]
            return self.point
        mean = sum(self._recent) / len(self._recent)
        if self._baseline is None:
            self._baseline = mean
            self._recent.clear()
        elif abs(mean - self._baseline) > self.params.drift_tolerance * self._baseline:
            self.restarts += 1
            self._baseline = None
            self._recent.clear()
            self.tuner.restart()
            self.point = self.tuner.ask()
        return self.point


class PipeSD(Policy):
    """The PipeSD edge policy."""

    __slots__ = (
        "_bands",
        "_boundaries",
        "_c1",
        "_confidences",
        "_deferred_verify",
        "_last_result_s",
        "_max_len",
        "_pipeline",
        "_plan_inputs",
        "_point",
        "_r1_active",
        "_r2_active",
        "_use_sequence",
        "_use_token",
        "_window_due",
        "autotuner",
        "draft_lengths",
        "drafts_while_pending",
        "gamma",
        "params",
        "r1",
        "r2",
        "replans",
        "tuner_step_s",
        "tuner_steps",
        "upload",
        "window",
    )
    """Its state in the object itself: with a thousand edges taking turns, a call touches fewer
    cold cache lines than through an instance dict."""

    def __init__(self, params: PipeSDParams, seed: int) -> None:
        self.params = params
        self.tuner_steps = 0  # (a slot: Policy's class default is shadowed)
        self.drafts_while_pending = params.proactive
        self._use_sequence = params.trigger in ("dual", "sequence")
        self._use_token = params.trigger in ("dual", "token")
        self._set_thresholds(params.r1, params.r2)
        self._max_len = params.max_draft_len
        self._pipeline = params.pipeline
        self.upload = UploadCostEstimator(params.initial_alpha_s, params.initial_beta_s)
        self.gamma = ExponentialAverage(params.initial_gamma_s, weight=1.0 / 32.0)
        self.draft_lengths = MovingAverage(float(params.initial_window), params.window_history)
        self.autotuner = ThresholdAutotuner(params, seed) if params.autotune else None
        self.tuner_step_s = params.tuner_step_s
        self._point: tuple[float, float] | None = None
        if self.autotuner is not None:
            self._point = self.autotuner.point
            self._set_thresholds(*self._point)
        self.window = params.initial_window
        self._window_due = True  # N̂ to recompute: draft lengths observed since the last time
        self.replans = 0
        self._plan_inputs = (-1.0, -1.0, -1.0)
        self._boundaries: frozenset[int] = frozenset()
        self._replan()
        self._reset_draft()
        self._last_result_s: float | None = None

    # -- planning -----------------------------------------------------------------------------
    def _replan(self) -> None:
        """Recompute batch boundaries for the current N̂ and α, β, γ estimates."""
        alpha, beta, gamma = self.upload.alpha_s, self.upload.beta_s, self.gamma.value
        self._plan_inputs = (alpha, beta, gamma)
        tol = self.params.replan_tolerance
        self._bands = (
            *tolerance_band(alpha, tol),
            *tolerance_band(beta, tol),
            *tolerance_band(gamma, tol),
        )
        if self.params.fixed_batch is not None:
            size = self.params.fixed_batch
            self._boundaries = frozenset(range(size, self.window + 1, size)) | {self.window}
        else:
            self._boundaries = _planned_boundaries(self.window, alpha, beta, gamma)
        self.replans += 1

    def _maybe_replan(self) -> None:
        """Re-plan when α, β or γ left the band around the values the plan was made with."""
        a_lo, a_hi, b_lo, b_hi, g_lo, g_hi = self._bands
        if not (
            a_lo <= self.upload.alpha_s <= a_hi
            and b_lo <= self.upload.beta_s <= b_hi
            and g_lo <= self.gamma.value <= g_hi
        ):
            self._replan()

    def _is_boundary(self, k: int) -> bool:
        """Whether the k-th token of a draft (1-based) closes a batch; the plan repeats past N̂."""
        return ((k - 1) % self.window) + 1 in self._boundaries

    # -- per-draft state ----------------------------------------------------------------------
    def _reset_draft(self, confidences: list[float] | None = None) -> None:
        self._confidences = confidences or []
        c1 = 1.0
        for c in self._confidences:
            c1 *= c
        self._c1 = c1
        self._deferred_verify = False

    def _set_thresholds(self, r1: float, r2: float) -> None:
        """Use new thresholds; a disabled trigger gets a threshold nothing falls below."""
        self.r1, self.r2 = r1, r2
        self._r1_active = r1 if self._use_sequence else -1.0
        self._r2_active = r2 if self._use_token else -1.0

    # -- executor callbacks -------------------------------------------------------------------
    def startup_probe_sizes(self) -> tuple[int, ...]:
        return self.params.probe_sizes if self.params.pipeline else ()

    def start_request(self, event: RequestStart) -> None:
        self._reset_draft()
        self._last_result_s = event.now_s

    def on_upload(self, n_tokens: int, duration_s: float) -> None:
        upload = self.upload
        upload.observe(n_tokens, duration_s)
        a_lo, a_hi, b_lo, b_hi, g_lo, g_hi = self._bands  # _maybe_replan, inlined (per upload)
        if not (
            a_lo <= upload.alpha_s <= a_hi
            and b_lo <= upload.beta_s <= b_hi
            and g_lo <= self.gamma.value <= g_hi
        ):
            self._replan()

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        gamma = self.gamma  # ExponentialAverage.observe, inlined (once per drafted token)
        gamma.value += gamma.weight * (draft_time_s - gamma.value)
        confidences = self._confidences
        confidences.append(confidence)
        c1 = self._c1 = self._c1 * confidence
        k = len(confidences)
        if c1 < self._r1_active or confidence < self._r2_active or k >= self._max_len:
            if pending:
                self._deferred_verify = True
            else:
                self.draft_lengths.observe(float(k))
                self._window_due = True
                self._confidences, self._c1 = [], 1.0
            return VERIFY
        if pending:
            return SEND if self._pipeline and k % self.window == 0 else CONTINUE
        if self._pipeline and ((k - 1) % self.window) + 1 in self._boundaries:
            return SEND
        return CONTINUE

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        _, accepted, surviving, surviving_sent, now_s = outcome
        tuner = self.autotuner
        if tuner is not None and self._last_result_s is not None:
            # ThresholdAutotuner.observe, inlined (once per answer): a step per full window
            tuner._elapsed_s += now_s - self._last_result_s
            tuner._tokens += accepted + 1
            if tuner._tokens >= tuner.window_tokens:
                point = tuner.evaluate()
                self.tuner_steps = tuner.evaluations  # BO steps so far: the executor charges them
                if point is not self._point:  # the tuner moved (it returns the same tuple)
                    self._point = point
                    self._set_thresholds(*point)
        self._last_result_s = now_s
        window = self.window
        if self._window_due:  # else the mean draft length, so N̂, is unchanged
            self._window_due = False
            window = planning_window(self.draft_lengths.value, self._max_len)
        if window != self.window:
            self.window = window
            self._replan()
        else:  # _maybe_replan for γ alone: α and β last moved in on_upload, which checked them
            g_lo, g_hi = self._bands[4:]
            if not g_lo <= self.gamma.value <= g_hi:
                self._replan()
        deferred = self._deferred_verify
        survivors = self._confidences[-surviving:] if surviving else None
        if not survivors:  # _reset_draft(), inlined (the usual case)
            self._confidences, self._c1, self._deferred_verify = [], 1.0, False
            return CONTINUE
        self._reset_draft(survivors)
        if deferred:
            self.draft_lengths.observe(float(len(survivors)))
            self._window_due = True
            self._reset_draft()
            return Decision.VERIFY
        if self._pipeline:
            unsent = len(survivors) - surviving_sent
            if unsent > 0 and self._is_boundary(len(survivors)):
                return Decision.SEND
        return Decision.CONTINUE

    def state(self) -> dict[str, float]:
        alpha, beta, gamma = self._plan_inputs
        tuned = self.autotuner
        return {
            "r1": self.r1,
            "r2": self.r2,
            "window": float(self.window),
            "alpha_s": alpha,
            "beta_s": beta,
            "gamma_s": gamma,
            "replans": float(self.replans),
            "bo_evaluations": float(tuned.evaluations if tuned else 0),
            "bo_restarts": float(tuned.restarts if tuned else 0),
        }
