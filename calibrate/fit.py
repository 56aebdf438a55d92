"""Fitters that turn calibration samples into the profile's latency, link and acceptance models.

Each fitter checks its samples, fits (`calibrate.fit_affine.AffineModel` for latency and link,
binned rates for acceptance) and returns the model with its `calibrate.fit_report.FitReport`.
Where the profile schema needs the intercept > 0 (a draft's decode step, a target's forward
pass: each has a fixed cost), it is bounded below by MIN_BASE_FRACTION (1%) of the fastest
sample, so noisy samples that extrapolate to 0 still give a valid model; its report says the
bound held, and the held-out MAPE (folds fitted with the same bound) shows what it costs.

Every failure raises ValueError (TypeError for a sample of the wrong kind) with a one-line
message saying what is wrong: too few samples (and how many are needed), a feature that never
varies (so its slope cannot be identified), features that vary together, a fitted value the
profile schema forbids.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from calibrate.fit_affine import AffineModel, cross_validate
from calibrate.fit_report import DEFAULT_FOLDS, FitReport, fold_index
from calibrate.samples import (
    AcceptanceSample,
    DecodeSample,
    ForwardSample,
    PrefillSample,
    TransferSample,
)
from simulator.acceptance_spec import CalibratedAcceptance, HistogramConfidence, TableCurve
from simulator.profile import DraftLatency, TargetLatency


def _samples(what: str, samples: Any, kind: type) -> list:
    """`samples` as a list, every item a `kind` (TypeError otherwise)."""
    if isinstance(samples, str | bytes) or not isinstance(samples, Sequence):
        raise TypeError(
            f"{what}: expected a sequence of {kind.__name__} (got {type(samples).__name__})"
        )
    items = list(samples)
    for i, item in enumerate(items):
        if not isinstance(item, kind):
            raise TypeError(
                f"{what}: sample {i} is a {type(item).__name__}, expected {kind.__name__}"
            )
    return items


def _require(what: str, n: int, need: int, params: str) -> None:
    if n < need:
        raise ValueError(
            f"{what}: needs at least {need} samples (got {n}): {need - 1} parameters "
            f"({params}) plus one so that every cross-validation fold can be fitted"
        )


def _require_spread(what: str, values: np.ndarray, field: str, param: str) -> None:
    if np.all(values == values[0]):
        raise ValueError(
            f"{what}: every sample has {field} = {values[0]:g}, so {param} cannot be "
            f"identified (needs at least 2 distinct {field} values)"
        )


MIN_BASE_FRACTION = 0.01
"""An intercept the schema needs > 0 is bounded below by this fraction of the fastest sample."""


def _affine(
    what: str,
    intercept: str,
    features: Sequence[tuple[str, np.ndarray, np.ndarray, str]],
    y: np.ndarray,
    positive: bool = False,
) -> tuple[AffineModel, FitReport]:
    """Fit `intercept` + one slope per feature, with the checks and messages of the profile
    fitters. Each feature is (sample field, its values, the model column, slope parameter).
    `positive`: the schema needs the intercept > 0, so it is bounded below by
    MIN_BASE_FRACTION of the fastest sample (the report's method says when the bound held)."""
    params = [intercept, *(param for *_, param in features)]
    _require(what, y.size, len(params) + 1, ", ".join(params))
    for field, values, _, param in features:
        _require_spread(what, values, field, param)
    bad = np.flatnonzero(y <= 0.0)
    if bad.size:
        raise ValueError(f"{what}: seconds must be > 0 to fit (sample {int(bad[0])} has 0)")
    X = np.column_stack([column for _, _, column, _ in features])
    floor = MIN_BASE_FRACTION * float(np.min(y)) if positive else 0.0
    model = AffineModel(tuple(field for field, *_ in features), min_intercept=floor)
    try:
        model.fit(X, y)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    report = cross_validate(model, X, y)
    if model.intercept_at_bound_:
        report = dataclasses.replace(
            report,
            method=(
                f"{report.method}; {intercept} held at its lower bound, "
                f"{100 * MIN_BASE_FRACTION:g}% of the fastest sample (the samples extrapolate "
                f"to <= 0 at no work: noisy, or not affine)"
            ),
        )
    return model, report


def _feature(field: str, values: Sequence[float], param: str, offset: float = 0.0) -> tuple:
    """A feature for `_affine`: the model column is values - offset."""
    raw = np.asarray(values, dtype=float)
    return (field, raw, raw - offset, param)


ZERO_RELATIVE = 1e-9
"""A fitted per-byte cost below this fraction of the largest measured time counts as 0."""


def _fit_prefill(what: str, prefill: Sequence[PrefillSample]) -> tuple[float, float, FitReport]:
    """(prefill_base_s, prefill_per_token_s, report) from prefill samples."""
    pre = _samples(f"{what}: prefill", prefill, PrefillSample)
    model, report = _affine(
        f"{what}: prefill",
        "prefill_base_s",
        [_feature("prompt_len", [s.prompt_len for s in pre], "prefill_per_token_s")],
        np.array([s.seconds for s in pre], dtype=float),
    )
    assert model.coef_ is not None
    return model.intercept_, float(model.coef_[0]), report


QUADRATIC_PREFILL_LENGTHS = 3
"""Distinct prompt lengths a target prefill fit needs to include its L^2 (attention) term."""


def _fit_target_prefill(
    what: str, prefill: Sequence[PrefillSample]
) -> tuple[float, float, float, FitReport]:
    """(prefill_base_s, prefill_per_token_s, prefill_per_token_squared_s, report) from a
    target's prefill samples: with the L^2 term where the samples have at least
    QUADRATIC_PREFILL_LENGTHS distinct lengths and one sample more than that (three parameters
    and cross-validation), else 0 (the affine fit)."""
    pre = _samples(f"{what}: prefill", prefill, PrefillSample)
    lengths = [s.prompt_len for s in pre]
    if len(set(lengths)) < QUADRATIC_PREFILL_LENGTHS or len(lengths) <= QUADRATIC_PREFILL_LENGTHS:
        base, per_token, report = _fit_prefill(what, prefill)
        return base, per_token, 0.0, report
    model, report = _affine(
        f"{what}: prefill",
        "prefill_base_s",
        [
            _feature("prompt_len", lengths, "prefill_per_token_s"),
            _feature("prompt_len_squared", [n * n for n in lengths], "prefill_per_token_squared_s"),
        ],
        np.array([s.seconds for s in pre], dtype=float),
    )
    assert model.coef_ is not None
    return model.intercept_, float(model.coef_[0]), float(model.coef_[1]), report


def fit_draft_latency(
    prefill: Sequence[PrefillSample], decode: Sequence[DecodeSample]
) -> tuple[DraftLatency, dict[str, FitReport]]:
    """The draft latency model and the report of each part ("prefill", "decode").

    prefill(L) = prefill_base_s + prefill_per_token_s * L from the prefill samples;
    decode(ctx) = decode_base_s + decode_per_context_token_s * ctx from the decode samples.
    Each part needs >= 3 samples with at least 2 distinct lengths; decode_base_s, which the
    schema needs > 0, is bounded below by MIN_BASE_FRACTION of the fastest decode sample.
    """
    prefill_base, prefill_per_token, pre_report = _fit_prefill("fit_draft_latency", prefill)
    dec = _samples("fit_draft_latency: decode", decode, DecodeSample)
    dec_y = np.array([s.seconds for s in dec], dtype=float)
    dec_model, dec_report = _affine(
        "fit_draft_latency: decode",
        "decode_base_s",
        [_feature("context_len", [s.context_len for s in dec], "decode_per_context_token_s")],
        dec_y,
        positive=True,
    )
    assert dec_model.coef_ is not None
    latency = DraftLatency(
        prefill_base_s=prefill_base,
        prefill_per_token_s=prefill_per_token,
        decode_base_s=dec_model.intercept_,
        decode_per_context_token_s=float(dec_model.coef_[0]),
    )
    return latency, {"prefill": pre_report, "decode": dec_report}


def fit_target_latency(
    prefill: Sequence[PrefillSample], forward: Sequence[ForwardSample]
) -> tuple[TargetLatency, dict[str, FitReport]]:
    """The target latency model and the report of each part ("prefill", "forward").

    prefill(L) = prefill_base_s + prefill_per_token_s * L + prefill_per_token_squared_s * L^2
    from the prefill samples (the L^2 term needs 3+ prompt lengths, else it is 0);
    forward = forward_base_s + forward_per_token_s * new_positions
    + forward_per_context_token_s * context_len + forward_per_extra_sequence_s * (batch - 1)
    + forward_per_position_context_s * new_positions * context_len / batch
    from the forward samples (positions and context summed over the batch). The forward part
    needs >= 5 samples in which positions, context and batch each take 2+ values and vary
    independently; forward_base_s, which the schema needs > 0, is bounded below by
    MIN_BASE_FRACTION of the fastest forward sample.
    """
    return fit_target_parts("fit_target_latency", prefill, forward, batched=True)


def fit_target_parts(
    caller: str,
    prefill: Sequence[PrefillSample],
    forward: Sequence[ForwardSample],
    *,
    batched: bool,
) -> tuple[TargetLatency, dict[str, FitReport]]:
    """The target latency model and its reports, with messages naming `caller`: as
    `fit_target_latency` when `batched`, else from batch-1 samples without the batch term
    (forward_per_extra_sequence_s = 0; ValueError if a forward sample has batch != 1), so the
    batched and single-sequence fitters share one forward model."""
    prefill_base, prefill_per_token, prefill_squared, pre_report = _fit_target_prefill(
        caller, prefill
    )
    what = f"{caller}: forward"
    fwd = _samples(what, forward, ForwardSample)
    if not batched:
        wide = [s for s in fwd if s.batch != 1]
        if wide:
            raise ValueError(
                f"{what}: every sample must have batch 1 (got batch {wide[0].batch}); "
                "fit batched samples with calibrate.fit.fit_target_latency"
            )
    features = [
        _feature("new_positions", [s.new_positions for s in fwd], "forward_per_token_s"),
        _feature("context_len", [s.context_len for s in fwd], "forward_per_context_token_s"),
    ]
    if batched:
        batches = [s.batch for s in fwd]
        features.append(_feature("batch", batches, "forward_per_extra_sequence_s", offset=1.0))
    features.append(_position_context(fwd))
    fwd_y = np.array([s.seconds for s in fwd], dtype=float)
    fwd_model, fwd_report = _affine(what, "forward_base_s", features, fwd_y, positive=True)
    assert fwd_model.coef_ is not None
    coef = [float(c) for c in fwd_model.coef_]
    extra_sequence_s = coef.pop(2) if batched else 0.0
    latency = TargetLatency(
        prefill_base_s=prefill_base,
        prefill_per_token_s=prefill_per_token,
        prefill_per_token_squared_s=prefill_squared,
        forward_base_s=fwd_model.intercept_,
        forward_per_token_s=coef[0],
        forward_per_context_token_s=coef[1],
        forward_per_extra_sequence_s=extra_sequence_s,
        forward_per_position_context_s=coef[2],
    )
    return latency, {"prefill": pre_report, "forward": fwd_report}


def _position_context(samples: Sequence[ForwardSample]) -> tuple:
    """The attention feature: sum over the batch of positions x context (sequences alike)."""
    return _feature(
        "position_context",
        [s.new_positions * s.context_len / s.batch for s in samples],
        "forward_per_position_context_s",
    )


def fit_link(samples: Sequence[TransferSample]) -> tuple[float, float, FitReport]:
    """(overhead_s, megabits_per_s, report) of one link direction.

    time = overhead_s + n_bytes * 8 / (megabits_per_s * 1e6): the intercept is the per-message
    overhead, the slope the per-byte cost. Needs >= 3 samples with at least 2 distinct sizes;
    transfer time must grow with size (else the bandwidth is unbounded and ValueError says so).
    """
    items = _samples("fit_link", samples, TransferSample)
    sizes = np.array([s.n_bytes for s in items], dtype=float)
    times = np.array([s.seconds for s in items], dtype=float)
    model, report = _affine(
        "fit_link", "overhead_s", [_feature("n_bytes", sizes, "seconds_per_byte")], times
    )
    assert model.coef_ is not None and model.intercept_ is not None
    per_byte = float(model.coef_[0])
    if per_byte * np.max(sizes) <= ZERO_RELATIVE * np.max(times):
        raise ValueError(
            "fit_link: transfer time does not grow with n_bytes (fitted per-byte cost 0), so "
            "the bandwidth cannot be estimated; measure larger transfers"
        )
    return model.intercept_, 8.0 / (per_byte * 1e6), report


# --------------------------------------------------------------------------------------------
# Acceptance
# --------------------------------------------------------------------------------------------


def _bin_index(edges: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Bin of each confidence, the rule `simulator.acceptance.accept_probability` uses
    (left-closed bins; 1.0 falls in the last)."""
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)


def _table(index: np.ndarray, accepted: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts per bin, P(accept) per bin); an empty bin gets the overall acceptance rate."""
    counts = np.bincount(index, minlength=bins).astype(float)
    hits = np.bincount(index, weights=accepted.astype(float), minlength=bins)
    overall = float(accepted.mean())
    rates = np.divide(hits, counts, out=np.full(bins, overall), where=counts > 0)
    return counts, rates


def fit_acceptance(
    samples: Sequence[AcceptanceSample], bins: int = 10
) -> tuple[CalibratedAcceptance, FitReport]:
    """A calibrated acceptance model from (confidence, accepted) samples, and its report.

    `bins` equal-width bins over [0, 1] (edges i / bins; left-closed, 1.0 in the last bin, as
    the simulator looks them up). The confidence distribution is a histogram whose weights are
    the sample counts per bin (the simulator draws uniformly within a bin). P(accept | c) is a
    table: the observed acceptance rate of each bin; a bin without samples gets the overall
    acceptance rate (the best guess with no local evidence; its histogram weight is 0, so the
    simulator never draws from it).

    The report's MAPE fields are NaN (meaningless for binary outcomes): it holds the held-out
    and training Brier scores and the held-out expected calibration error (see FitReport),
    from k = min(5, n) deterministic folds over the samples sorted by confidence; `passes()`
    compares the calibration error with its goal. Needs >= 2 samples; `bins` an integer >= 1.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"fit_acceptance: bins must be an integer >= 1 (got {bins!r})")
    bins = int(bins)
    items = _samples("fit_acceptance", samples, AcceptanceSample)
    n = len(items)
    if n < 2:
        raise ValueError(
            f"fit_acceptance: needs at least 2 samples (got {n}) so that the fit can be "
            f"checked on held-out samples"
        )
    confidence = np.array([s.confidence for s in items], dtype=float)
    accepted = np.array([s.accepted for s in items], dtype=bool)
    edges = np.array([i / bins for i in range(bins + 1)])
    index = _bin_index(edges, confidence)
    counts, rates = _table(index, accepted, bins)

    outcome = accepted.astype(float)
    fold_of, k = fold_index(confidence.reshape(-1, 1), DEFAULT_FOLDS)
    held_out = np.empty(n)
    calibration = 0.0
    for fold in range(k):
        test = fold_of == fold
        _, fold_rates = _table(index[~test], accepted[~test], bins)
        held_out[test] = fold_rates[index[test]]
        test_counts, test_rates = _table(index[test], accepted[test], bins)
        calibration += float(np.sum(test_counts * np.abs(fold_rates - test_rates)))
    report = FitReport(
        n_samples=n,
        mape_holdout=math.nan,
        mape_train=math.nan,
        method=f"binned P(accept | confidence), {bins} bins, {k}-fold CV",
        brier_holdout=float(np.mean((held_out - outcome) ** 2)),
        brier_train=float(np.mean((rates[index] - outcome) ** 2)),
        calibration_error_holdout=calibration / n,
    )
    model = CalibratedAcceptance(
        kind="calibrated",
        confidence=HistogramConfidence(
            kind="histogram", edges=edges.tolist(), weights=counts.tolist()
        ),
        p_accept=TableCurve(kind="table", edges=edges.tolist(), values=rates.tolist()),
    )
    return model, report


__all__ = [
    "MIN_BASE_FRACTION",
    "fit_acceptance",
    "fit_draft_latency",
    "fit_link",
    "fit_target_latency",
    "fit_target_parts",
]
