"""`pipesd calibrate refit`: re-run a part's fits on the samples it stores, measuring nothing.

A part file keeps every sample it was fitted on (`calibrate.assemble.Part.samples`), so when
the fitters' reports change the part can be brought up to date without measuring again.
`refit_part` runs the fit the measuring subcommand ran (draft: `fit_draft_latency`; target:
`fit_single_sequence` when every forward sample has batch 1, as the llama.cpp backend measures,
else `fit_target_latency`; link: `fit_link`; acceptance: `fit_acceptance` with the part's
bins) and rewrites the fitted values, the reports and the fit notes. Provenance (machine,
versions, the measuring command, its date) stays; the note `<kind>.refit` names the refit
command and its date. Values the part does not fit (the draft's vocabulary, the link's latency)
are kept as they are. Power and payload parts hold no fitted samples: ValueError.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from calibrate.assemble import Part, report_dict
from calibrate.fit import fit_acceptance, fit_draft_latency, fit_link, fit_target_latency
from calibrate.fit_report import FitReport
from calibrate.link import median_overhead
from calibrate.samples import (
    AcceptanceSample,
    DecodeSample,
    ForwardSample,
    PrefillSample,
    TransferSample,
)
from calibrate.target_llama import FORWARD_MAPE_PREFIX, fit_single_sequence, forward_mape_note

REFITTABLE = ("draft", "target", "link", "acceptance")
"""Part kinds whose values are fitted from stored samples."""


def _rows(part: Part, name: str, kind: type) -> list:
    """The part's `name` samples as `kind` instances (ValueError naming a missing or bad row)."""
    rows = part.samples.get(name)
    if not rows:
        stored = ", ".join(sorted(part.samples)) or "none"
        raise ValueError(f"the {part.kind} part stores no {name!r} samples (has: {stored})")
    samples = []
    for i, row in enumerate(rows):
        try:
            samples.append(kind.from_row(row))
        except ValueError as exc:
            raise ValueError(f"samples.{name}[{i}]: {exc}") from None
    return samples


def _draft(part: Part) -> tuple[dict[str, Any], dict[str, FitReport], dict[str, str]]:
    prefill = _rows(part, "prefill", PrefillSample)
    decode = _rows(part, "decode", DecodeSample)
    latency, reports = fit_draft_latency(prefill, decode)
    return {"draft_latency": latency.model_dump()}, reports, {}


def _target(part: Part) -> tuple[dict[str, Any], dict[str, FitReport], dict[str, str]]:
    prefill = _rows(part, "prefill", PrefillSample)
    forward = _rows(part, "forward", ForwardSample)
    if all(s.batch == 1 for s in forward):
        latency, reports = fit_single_sequence(prefill, forward)
    else:
        latency, reports = fit_target_latency(prefill, forward)
    notes = {}
    note = part.notes.get("target_latency", "")
    if FORWARD_MAPE_PREFIX in note:  # the llama.cpp backend's note ends with the forward MAPE
        head = note[: note.rindex(FORWARD_MAPE_PREFIX)]
        notes["target_latency"] = head + forward_mape_note(reports["forward"])
    return {"target_latency": latency.model_dump()}, reports, notes


def _link(part: Part) -> tuple[dict[str, Any], dict[str, FitReport], dict[str, str]]:
    samples = _rows(part, "transfer", TransferSample)
    one_way = part.values.get("link.one_way_latency_s")
    if not isinstance(one_way, int | float) or not math.isfinite(one_way) or one_way < 0:
        raise ValueError(
            f"the link part's values need link.one_way_latency_s, a number >= 0 (got {one_way!r}):"
            " the per-message overhead is the fit's intercept minus the round trip"
        )
    intercept, mbps, report = fit_link(samples)
    values = {
        "link.uplink_mbps": mbps,
        "link.downlink_mbps": mbps,
        "link.uplink_overhead_s": max(intercept - 2 * one_way, 0.0),
    }
    if "nav" in part.samples:  # a testbed link: the NAVs' own overhead (calibrate.link)
        try:
            overheads = [float(row["overhead_s"]) for row in part.samples["nav"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError("samples.nav: each row needs a number 'overhead_s'") from None
        values["link.uplink_overhead_s"] = median_overhead(overheads)
    return values, {"link": report}, {}


def _acceptance(part: Part) -> tuple[dict[str, Any], dict[str, FitReport], dict[str, str]]:
    samples = _rows(part, "positions", AcceptanceSample)
    try:
        bins = len(part.values["acceptance"]["p_accept"]["edges"]) - 1
    except (KeyError, TypeError):
        raise ValueError(
            "the acceptance part's values need acceptance.p_accept.edges (its bins)"
        ) from None
    model, report = fit_acceptance(samples, bins=bins)
    return {"acceptance": model.model_dump(mode="json")}, {"acceptance": report}, {}


FITS = {"draft": _draft, "target": _target, "link": _link, "acceptance": _acceptance}


def _changes(prefix: str, old: Any, new: Any) -> list[str]:
    """'path: old -> new' for every leaf where `new` differs from `old`."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [
            line
            for key in sorted(set(old) | set(new), key=str)
            for line in _changes(f"{prefix}.{key}", old.get(key), new.get(key))
        ]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def refit_part(part: Part, command: str, date: str | None = None) -> tuple[Part, list[str]]:
    """(the part refitted from its samples, the fitted values that changed as 'field: old ->
    new' lines; empty when every value is as the part had it).

    `command` and `date` (default: today, UTC) go into the part's `<kind>.refit` note.
    ValueError if the part's kind holds no fitted samples or its samples cannot be fitted.
    """
    if part.kind not in FITS:
        raise ValueError(
            f"a {part.kind} part holds no fitted samples: only {', '.join(REFITTABLE)} parts "
            f"can be refitted"
        )
    values, reports, notes = FITS[part.kind](part)
    changes = [
        line for key, value in values.items() for line in _changes(key, part.values.get(key), value)
    ]
    when = date or dt.datetime.now(dt.UTC).date().isoformat()
    all_notes = {**part.notes, **notes}
    for name, report in reports.items():
        all_notes[f"{part.kind}.fit.{name}"] = report.note()
    all_notes[f"{part.kind}.refit"] = (
        f"values, fit reports and fit notes recomputed from the stored samples on {when} by "
        f"`{command}` (nothing measured again)"
    )
    refitted = part.model_copy(
        update={
            "values": {**part.values, **values},
            "notes": all_notes,
            "reports": {name: report_dict(r) for name, r in reports.items()},
        }
    )
    return refitted, changes


__all__ = ["REFITTABLE", "refit_part"]
