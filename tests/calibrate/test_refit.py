"""`pipesd calibrate refit`: a part's fits run again on its stored samples, nothing measured;
values stay, reports and fit notes are brought up to date, provenance is kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from calibrate.assemble import Part, load_part, new_part, save_part
from calibrate.fit import fit_acceptance, fit_draft_latency, fit_link, fit_target_latency
from calibrate.refit import refit_part
from calibrate.samples import (
    AcceptanceSample,
    DecodeSample,
    ForwardSample,
    PrefillSample,
    TransferSample,
)
from calibrate.target_llama import FORWARD_MAPE_PREFIX, fit_single_sequence
from pipesd.cli import main

PARTS = Path(__file__).resolve().parents[2] / "scenarios" / "profiles" / "parts"
NEW_FIELDS = ("mape_holdout_config", "noise_spread", "n_configs")


def noisy(values: list[float], seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [v * (1.0 + 0.05 * rng.standard_normal()) for v in values]


def draft_part() -> Part:
    """A draft part as `calibrate draft` writes it, then aged: its reports lack the fields
    added since (as parts written before them do)."""
    lengths = [16, 32, 64, 128] * 3
    prefill = [
        PrefillSample(n, t)
        for n, t in zip(lengths, noisy([0.01 + 4e-4 * n for n in lengths], 1), strict=True)
    ]
    contexts = [32, 33, 64, 65, 128, 129]
    decode = [
        DecodeSample(c, t)
        for c, t in zip(contexts, noisy([0.006 + 5e-6 * c for c in contexts], 2), strict=True)
    ]
    latency, reports = fit_draft_latency(prefill, decode)
    part = new_part(
        "draft",
        {"draft_latency": latency.model_dump(), "payload.vocab_size": 49152},
        {"draft_latency": "measured on a test machine"},
        reports,
        {"prefill": [s.to_row() for s in prefill], "decode": [s.to_row() for s in decode]},
        {"llama-cpp-python": "test"},
        "pipesd calibrate draft --model x --threads 1 --out draft.json",
    )
    old_reports = {
        name: {k: v for k, v in report.items() if k not in NEW_FIELDS}
        for name, report in part.reports.items()
    }
    old_notes = {**part.notes, "draft.fit.prefill": "held-out MAPE 5.00% (old)"}
    return part.model_copy(update={"reports": old_reports, "notes": old_notes})


def test_refit_keeps_values_and_provenance_and_updates_reports() -> None:
    part = draft_part()
    refitted, changes = refit_part(part, "pipesd calibrate refit draft.json", date="2026-01-02")
    assert changes == []
    assert refitted.values == part.values
    for field in ("kind", "samples", "machine", "versions", "command", "created"):
        assert getattr(refitted, field) == getattr(part, field), field
    assert set(refitted.reports) == {"prefill", "decode"}
    prefill = refitted.reports["prefill"]
    assert prefill["n_configs"] == 4 and prefill["mape_holdout_config"] >= 0
    assert prefill["noise_spread"] > 0
    assert refitted.reports["decode"]["noise_spread"] is None  # no context measured twice
    assert "per configuration" in refitted.notes["draft.fit.prefill"]
    assert refitted.notes["draft_latency"] == "measured on a test machine"
    assert refitted.notes["draft.refit"] == (
        "values, fit reports and fit notes recomputed from the stored samples on 2026-01-02 by "
        "`pipesd calibrate refit draft.json` (nothing measured again)"
    )


def test_refit_reports_values_that_change() -> None:
    part = draft_part()
    values = {**part.values, "draft_latency": {**part.values["draft_latency"]}}
    values["draft_latency"]["decode_base_s"] = 1.0
    _, changes = refit_part(part.model_copy(update={"values": values}), "pytest")
    assert len(changes) == 1 and changes[0].startswith("draft_latency.decode_base_s: 1.0 -> ")


def test_refit_of_a_llama_target_part_rewrites_its_forward_note() -> None:
    prefill = [PrefillSample(n, 0.007 * n * (1 + 0.01 * (n % 3))) for n in (16, 32, 64, 128) * 2]
    forward = [
        ForwardSample(m, c + m, 1, (0.01 + 0.008 * m + 2.5e-8 * m * c) * (1 + 0.02 * (r - 1)))
        for r in range(3)
        for c in (32, 64, 128)
        for m in (1, 2, 4, 8)
    ]
    latency, reports = fit_single_sequence(prefill, forward)
    note = f"measured somewhere; batch 1 only; {FORWARD_MAPE_PREFIX}9.99%"
    part = new_part(
        "target",
        {"target_latency": latency.model_dump()},
        {"target_latency": note},
        reports,
        {"prefill": [s.to_row() for s in prefill], "forward": [s.to_row() for s in forward]},
        {},
        "pytest",
    )
    refitted, changes = refit_part(part, "pytest")
    assert changes == []
    forward_report = refitted.reports["forward"]
    assert "batch 1 only" in forward_report["method"]
    assert refitted.notes["target_latency"] == (
        f"measured somewhere; batch 1 only; {FORWARD_MAPE_PREFIX}"
        f"{100 * forward_report['mape_holdout_config']:.2f}% per configuration "
        f"({100 * forward_report['mape_holdout']:.2f}% per sample)"
    )


def test_refit_of_a_batched_target_part_uses_the_batched_fit() -> None:
    prefill = [PrefillSample(n, 0.01 + 1e-4 * n) for n in (16, 64, 256)]
    forward = [
        ForwardSample(b * m, b * c, b, 0.02 + 1e-3 * b * m + 1e-6 * b * c + 1e-3 * (b - 1))
        for b in (1, 2, 4)
        for m in (1, 4, 8)
        for c in (128, 512)
    ]
    latency, reports = fit_target_latency(prefill, forward)
    part = new_part(
        "target",
        {"target_latency": latency.model_dump()},
        {"target_latency": "torch"},
        reports,
        {"prefill": [s.to_row() for s in prefill], "forward": [s.to_row() for s in forward]},
        {},
        "pytest",
    )
    refitted, changes = refit_part(part, "pytest")
    assert changes == [] and refitted.notes["target_latency"] == "torch"
    assert refitted.values["target_latency"]["forward_per_extra_sequence_s"] > 0


def test_refit_of_a_link_part_keeps_the_latency_and_subtracts_the_round_trip() -> None:
    sizes = [256, 4096, 65536, 1048576] * 4
    times = noisy([0.0225 + n * 8 / 50e6 for n in sizes], 3)
    samples = [TransferSample(n, t) for n, t in zip(sizes, times, strict=True)]
    intercept, mbps, report = fit_link(samples)
    values = {
        "link.uplink_mbps": mbps,
        "link.downlink_mbps": mbps,
        "link.one_way_latency_s": 0.01,
        "link.uplink_overhead_s": max(intercept - 0.02, 0.0),
        "link.downlink_overhead_s": 0.0,
    }
    transfer = [s.to_row() for s in samples]
    part = new_part("link", values, {}, {"link": report}, {"transfer": transfer}, {}, "pytest")
    refitted, changes = refit_part(part, "pytest")
    assert changes == [] and refitted.values == values
    assert refitted.reports["link"]["n_configs"] == 4


def test_refit_of_an_acceptance_part_keeps_its_bins() -> None:
    rng = np.random.default_rng(0)
    samples = [AcceptanceSample(c, bool(rng.random() < c)) for c in rng.random(400)]
    model, report = fit_acceptance(samples, bins=7)
    rows = [{"confidence": s.confidence, "accepted": int(s.accepted)} for s in samples]
    values = {"acceptance": model.model_dump(mode="json")}
    part = new_part("acceptance", values, {}, {"acceptance": report}, {"positions": rows}, {}, "")
    refitted, changes = refit_part(part, "pytest")
    assert changes == [] and refitted.values == values
    assert refitted.reports["acceptance"]["n_configs"] == 0
    assert refitted.reports["acceptance"]["mape_holdout_config"] is None


def test_refit_says_what_it_cannot_do() -> None:
    power = new_part("power", {"power.edge_busy_w": 20.0}, {}, {}, {}, {}, "pytest")
    with pytest.raises(ValueError, match="a power part holds no fitted samples"):
        refit_part(power, "pytest")
    part = draft_part()
    with pytest.raises(ValueError, match="stores no 'decode' samples"):
        refit_part(part.model_copy(update={"samples": {"prefill": part.samples["prefill"]}}), "")
    bad = {**part.samples, "decode": [{"context_len": "-1", "seconds": "0.1"}]}
    with pytest.raises(ValueError, match=r"samples\.decode\[0\]: DecodeSample\.context_len"):
        refit_part(part.model_copy(update={"samples": bad}), "")


@pytest.mark.parametrize("name", ["cpu-testbed.draft", "cpu-testbed.target", "cpu-testbed.link"])
def test_committed_parts_are_up_to_date_with_the_fitters(name: str) -> None:
    """The committed measured parts hold what the current fitters make of their samples (else:
    `pipesd calibrate refit` them, then re-assemble cpu-testbed.json)."""
    part = load_part(PARTS / f"{name}.json")
    refitted, changes = refit_part(part, "pytest")
    assert changes == []
    assert refitted.reports.keys() == part.reports.keys()
    for report_name, report in refitted.reports.items():
        stored = part.reports[report_name]
        assert stored.keys() == report.keys()
        for key, value in report.items():
            if isinstance(value, float) and not math.isnan(value):
                assert stored[key] == pytest.approx(value, rel=1e-9), (report_name, key)
            else:
                assert stored[key] == value, (report_name, key)
    for key, note in refitted.notes.items():
        if ".fit." in key:
            assert part.notes[key] == note


def test_refit_command_rewrites_a_part(tmp_path: Path, capsys) -> None:
    path = tmp_path / "draft.json"
    save_part(draft_part(), path)
    out = tmp_path / "refitted.json"
    assert main(["calibrate", "refit", str(path), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["reports"]["prefill"]["n_configs"] == 4
    assert f"`pipesd calibrate refit {path} --out {out}`" in data["notes"]["draft.refit"]
    assert "fitted values unchanged" in capsys.readouterr().err
    assert main(["calibrate", "refit", str(path)]) == 0  # in place by default
    assert load_part(path).reports == load_part(out).reports
    capsys.readouterr()
    power = tmp_path / "power.json"
    save_part(new_part("power", {"power.edge_busy_w": 20.0}, {}, {}, {}, {}, ""), power)
    assert main(["calibrate", "refit", str(power)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no fitted samples" in err and len(err.splitlines()) == 1
