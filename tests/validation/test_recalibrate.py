"""validation.recalibrate: a validation's profile with both latency models measured just now."""

from __future__ import annotations

import itertools
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


def test_grids_reach_the_runs_longest_prompt_and_context():
    """Run 18 reached context ~310 on a target grid ending at 192 (extrapolated): each grid is
    carried past its end in steps of at most GRID_GROWTH, rounded, until it covers the run."""
    prompts = recalibrate.extended(recalibrate.PROMPT_LENGTHS, 258)
    assert prompts[: len(recalibrate.PROMPT_LENGTHS)] == tuple(recalibrate.PROMPT_LENGTHS)
    assert prompts[-1] == 272 and prompts[-1] >= 258
    for before, after in itertools.pairwise(prompts):
        assert before < after <= before * recalibrate.GRID_GROWTH + recalibrate.GRID_ROUND
    assert recalibrate.extended(recalibrate.TARGET_CONTEXTS, 100) == tuple(
        recalibrate.TARGET_CONTEXTS
    )
    assert recalibrate.extended(recalibrate.TARGET_CONTEXTS, 370)[-1] == 384


def test_the_run_extent_extends_both_models_grids(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(recalibrate, "measure_draft", lambda o, s, c: seen.update(d=o))
    monkeypatch.setattr(recalibrate, "measure_target", lambda o, s, c: seen.update(t=o))
    extent = recalibrate.Extent(prompt_tokens=258, context_tokens=370)
    recalibrate.measure_parts(tmp_path, 1, tmp_path, 1, print, "x", extent=extent)
    assert seen["d"].prompt_lengths[-1] == seen["t"].prompt_lengths[-1] == 272
    assert seen["d"].context_lengths[-1] == seen["t"].context_lengths[-1] == 384
    recalibrate.measure_parts(tmp_path, 1, tmp_path, 1, print, "x")
    assert seen["d"].context_lengths[-1] == recalibrate.DRAFT_CONTEXTS[-1]


@needs_smollm2
def test_run_extent_counts_the_scenarios_prompts_as_the_testbed_formats_them():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    from realrun.testbed_rules import tokens_per_message
    from validation.validate import validation_points

    root = Path(__file__).resolve().parents[2] / "scenarios"
    points = validation_points(
        root / "testbed_cpu_real.toml", root / "profiles" / "cpu-testbed-q4_0-hmm.json", [], []
    )
    extent = recalibrate.run_extent(points[0].scenario, smollm2_path())
    # HumanEval's 42 held-out prompts, as the scenario's comment counts them: at most 351 tokens
    assert extent.prompt_tokens == 351
    longest_draft = tokens_per_message(points[0].scenario)  # the per-NAV cap of the protocol
    assert extent.context_tokens == 351 + points[0].scenario.model.prompts.max_new_tokens + 64
    assert longest_draft == 64
