"""validation.recalibrate: a validation's profile with both latency models measured just now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path

from calibrate.options import DraftOptions, TargetOptions
from simulator.errors import ConfigError
from simulator.profile import load_profile
from validation import recalibrate

BASE = Path(__file__).resolve().parents[2] / "scenarios" / "profiles" / "cpu-testbed.json"


@needs_smollm2
def test_recalibrated_profile_replaces_only_the_latency_models(tmp_path, small_recalibration):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
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


def test_a_llama_target_on_a_gpu_is_refused_before_measuring(tmp_path):
    with pytest.raises(ConfigError, match="CPU only") as caught:
        recalibrate.measure_parts(tmp_path, 1, tmp_path, 1, print, "x", "llama", "cuda")
    assert "--target-backend torch" in str(caught.value)


def test_a_torch_target_is_measured_as_the_server_serves_it(tmp_path, monkeypatch):
    """The options objects recalibrate builds: the draft on the edge's grids, the target with
    the served torch backend on the run's device and threads (no fake argparse namespaces)."""
    seen = {}

    def fake_draft(options, say, command):
        seen["draft"] = options
        return "draft part"

    def fake_target(options, say, command):
        seen["target"] = options
        return "target part"

    monkeypatch.setattr(recalibrate, "measure_draft", fake_draft)
    monkeypatch.setattr(recalibrate, "measure_target", fake_target)
    parts = recalibrate.measure_parts(tmp_path, 1, "tiny", 2, print, "x", "torch", "cuda:1")
    assert parts == ("draft part", "target part")
    draft, target = seen["draft"], seen["target"]
    assert isinstance(draft, DraftOptions) and draft.burst == recalibrate.BURST
    assert isinstance(target, TargetOptions) and target.backend == "torch-served"
    assert target.model == "tiny" and target.device == "cuda:1" and target.threads == 2
    assert target.batch_sizes is None
