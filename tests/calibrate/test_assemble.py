"""Profiles assembled from calibration parts: measured sections replace the base's, the rest
is inherited and says so, and a profile written then loaded is identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibrate.assemble import Part, assemble, load_part, new_part, save_part, write_profile
from calibrate.fit import fit_draft_latency
from calibrate.samples import DecodeSample, PrefillSample
from simulator.errors import ConfigError
from simulator.profile import load_profile

BASE = Path(__file__).resolve().parents[2] / "scenarios" / "profiles" / "default.json"


def draft_part() -> Part:
    prefill = [PrefillSample(n, 0.01 + 0.001 * n) for n in (8, 16, 32, 64, 128, 256)]
    decode = [DecodeSample(c, 0.02 + 1e-6 * c) for c in (16, 64, 128, 256, 512, 1024)]
    latency, reports = fit_draft_latency(prefill, decode)
    return new_part(
        "draft",
        {"draft_latency": latency.model_dump(), "payload.vocab_size": 49152},
        {"draft_latency": "measured on a test machine"},
        reports,
        {"prefill": [s.to_row() for s in prefill]},
        {"llama_cpp": "test"},
        "pytest",
    )


def test_measured_parts_replace_the_base_and_the_rest_is_marked(tmp_path: Path) -> None:
    profile = assemble("test", [draft_part()], load_profile(BASE), "pytest")
    assert profile.draft_latency.decode_base_s == pytest.approx(0.02, rel=1e-6)
    assert profile.payload.vocab_size == 49152
    notes = profile.provenance.notes
    assert notes["target_latency"].startswith("NOT MEASURED")
    assert "draft.fit.decode" in notes and "MAPE" in notes["draft.fit.decode"]
    assert "per configuration" in notes["draft.fit.decode"]
    assert "draft_latency" in profile.provenance.source


def test_profile_written_then_loaded_is_identical(tmp_path: Path) -> None:
    profile = assemble("test", [draft_part()], load_profile(BASE), "pytest")
    path = tmp_path / "p.json"
    write_profile(profile, path)
    assert load_profile(path).profile == profile
    write_profile(load_profile(path).profile, tmp_path / "q.json")
    assert (tmp_path / "q.json").read_text() == path.read_text()


def test_part_round_trip_and_bad_parts(tmp_path: Path) -> None:
    part = draft_part()
    for report in part.reports.values():  # the per-configuration fields travel with the part
        assert {"mape_holdout", "mape_holdout_config", "noise_spread", "n_configs"} <= set(report)
        assert report["n_configs"] == 6
    save_part(part, tmp_path / "draft.json")
    assert load_part(tmp_path / "draft.json") == part
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_part(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_part(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="part kind"):
        new_part("gpu", {}, {}, {}, {}, {}, "")
