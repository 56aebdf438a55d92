"""realrun.recalibrate: a validation's profile with both latency models measured just now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path

from realrun import recalibrate
from simulator.errors import ConfigError
from simulator.profile import load_profile

BASE = Path(__file__).resolve().parents[2] / "scenarios" / "profiles" / "cpu-testbed.json"


@needs_smollm2
def test_recalibrated_profile_replaces_only_the_latency_models(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    for name, value in [
        ("PROMPT_LENGTHS", [8, 16, 24]),
        ("DRAFT_CONTEXTS", [16, 24, 32]),
        ("TARGET_CONTEXTS", [16, 24, 32]),
        ("TARGET_TOKEN_COUNTS", [1, 2, 4]),
        ("REPETITIONS", 2),
        ("WARMUP", 0),
        ("DRAFT_REPETITIONS", 2),
        ("PAUSE_MS", 1.0),
    ]:
        monkeypatch.setattr(recalibrate, name, value)
    model = smollm2_path()
    lines: list[str] = []
    path = recalibrate.recalibrated_profile(
        BASE, model, 1, model, 1, tmp_path / "calibration", lines.append, "pipesd validate test"
    )
    assert path == tmp_path / "calibration" / "profile.json" and lines
    new, base = load_profile(path).profile, load_profile(BASE).profile
    draft = json.loads((tmp_path / "calibration" / "draft.json").read_text())
    target = json.loads((tmp_path / "calibration" / "target.json").read_text())
    assert new.draft_latency.model_dump() == draft["values"]["draft_latency"]
    assert new.target_latency.model_dump() == target["values"]["target_latency"]
    assert new.draft_latency != base.draft_latency
    for section in ("link", "payload", "power", "acceptance", "models", "split"):
        assert getattr(new, section) == getattr(base, section), section
    notes = new.provenance.notes
    assert "just before the real run" in notes["recalibrated"]
    assert "pipesd validate test" in notes["recalibrated"] and new.provenance.command


def test_a_missing_base_profile_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        recalibrate.recalibrated_profile(
            tmp_path / "nope.json", tmp_path, 1, tmp_path, 1, tmp_path, print, "x"
        )
