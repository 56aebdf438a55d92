"""`pipesd revalidate` (validation/validate.py): a committed validation's real run compared again
with the current simulator, no testbed and no models needed."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from models.prompts import family_prompts
from pipesd.cli import main
from simulator.runner import run_scenario
from validation.validate import METRICS, validation_points

REPO = Path(__file__).resolve().parents[2]
RUN11 = Path("docs/validation/cpu-run11")
SCENARIO = Path("scenarios/testbed_cpu.toml")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded manifests hold paths relative to the repository root."""
    monkeypatch.chdir(REPO)


def test_revalidate_compares_the_recorded_real_run_with_a_fresh_simulation(
    in_repo, tmp_path, capsys
):
    out = tmp_path / "again"
    assert main(["revalidate", str(RUN11), "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "median" in printed and "goal <= 3%" in printed and "beyond chance" in printed
    real = {(r["point"], r["policy"]): r for r in read_rows(RUN11 / "real" / "summary.csv")}
    assert (out / "real" / "summary.csv").read_bytes() == (
        RUN11 / "real" / "summary.csv"
    ).read_bytes()
    profile = RUN11 / "calibration" / "profile.json"
    points = validation_points(Path("scenarios/testbed_cpu.toml"), profile, [], [])
    fresh = tmp_path / "fresh"
    run_scenario(Path("scenarios/testbed_cpu.toml"), points, fresh, ["test"])
    sim = {(r["point"], r["policy"]): r for r in read_rows(fresh / "summary.csv")}
    rows = read_rows(out / "validation.csv")
    assert len(rows) == len(real) == 12
    for row in rows:
        key = (row["point"], row["policy"])
        for metric in METRICS:
            r, s = real[key][metric], sim[key][metric]
            assert row[f"{metric}_real"] == r or float(row[f"{metric}_real"]) == float(r)
            if s:
                assert float(row[f"{metric}_sim"]) == pytest.approx(float(s), rel=1e-5)
            if r and s and float(r) != 0:
                error = (float(s) - float(r)) / float(r)
                assert float(row[f"{metric}_err"]) == pytest.approx(error, rel=1e-5, abs=1e-9)
        assert float(row["tpt_ms_sim_probed"]) > 0  # the recorded speed references are used
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["revalidated_from"]["path"] == str(RUN11)
    assert manifest["profile"]["path"] == str(profile)
    assert manifest["command"][:2] == ["pipesd", "revalidate"]
    separated = manifest["ranking_of_separated_pairs"]
    assert separated["pairs"] == 18 and 0 < separated["separated_pairs"] <= 18


FIXED_RULE_POLICIES = {"vanilla", "hsl"}
"""Policies whose drafting does not adapt to measured costs: a slower draft can only slow them."""


def test_revalidate_with_another_profile_changes_only_the_simulated_side(in_repo, tmp_path, capsys):
    slow = json.loads((RUN11 / "calibration" / "profile.json").read_text())
    slow["draft_latency"]["decode_base_s"] *= 2
    other = tmp_path / "slow.json"
    other.write_text(json.dumps(slow))
    base, moved = tmp_path / "base", tmp_path / "moved"
    assert main(["revalidate", str(RUN11), "--quiet", "--out", str(base)]) == 0
    assert main(["revalidate", str(RUN11), "--quiet", "--profile", str(other),
                 "--out", str(moved)]) == 0  # fmt: skip
    capsys.readouterr()
    before, after = read_rows(base / "validation.csv"), read_rows(moved / "validation.csv")
    for a, b in zip(before, after, strict=True):
        assert a["tpt_ms_real"] == b["tpt_ms_real"]
        assert b["tpt_ms_sim"] != a["tpt_ms_sim"]
        if a["policy_name"] in FIXED_RULE_POLICIES:  # an adaptive policy may re-plan for the better
            assert float(b["tpt_ms_sim"]) > float(a["tpt_ms_sim"])


def test_revalidate_bad_sources_are_one_line_exit_2(in_repo, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["revalidate", str(tmp_path), "--out", out]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    changed = tmp_path / "changed"
    shutil.copytree(RUN11, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["scenario"]["sha256"] = "0" * 64
    (changed / "manifest.json").write_text(json.dumps(manifest))
    assert main(["revalidate", str(changed), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "testbed_cpu.toml" in err and "is not the manifest's" in err
    assert len(err.splitlines()) == 1
    other = tmp_path / "other.toml"
    other.write_text(SCENARIO.read_text() + "\n# edited\n")
    assert main(["revalidate", str(RUN11), "--scenario", str(other), "--out", out]) == 2
    assert "other.toml" in capsys.readouterr().err
    missing = str(tmp_path / "nope.toml")
    assert main(["revalidate", str(RUN11), "--scenario", missing, "--out", out]) == 2
    assert "--scenario" in capsys.readouterr().err
    (changed / "real" / "results.csv").unlink()
    assert main(["revalidate", str(changed), "--out", out]) == 2
    assert "missing real/results.csv" in capsys.readouterr().err
    assert main(["revalidate", str(RUN11), "--out", str(RUN11)]) == 2
    assert "must differ from SOURCE" in capsys.readouterr().err


def test_revalidate_takes_a_kept_copy_of_a_scenario_edited_since(in_repo, tmp_path, capsys):
    """--scenario: the same bytes at another path (the scenario itself edited after the run)
    give the same comparison as the manifest's own path."""
    kept = tmp_path / "kept.toml"
    kept.write_bytes(SCENARIO.read_bytes())
    own, copy = tmp_path / "own", tmp_path / "copy"
    assert main(["revalidate", str(RUN11), "--quiet", "--out", str(own)]) == 0
    assert main(["revalidate", str(RUN11), "--quiet", "--scenario", str(kept),
                 "--out", str(copy)]) == 0  # fmt: skip
    capsys.readouterr()
    assert read_rows(own / "validation.csv") == read_rows(copy / "validation.csv")


def test_replay_acceptance_simulates_the_runs_own_prompts_in_request_order(
    in_repo, tmp_path, capsys
):
    """--replay-acceptance TRACE on a real-acceptance run (run 20, 18 prompts): OUT/profile.json
    is the run's profile with its acceptance replaced by TRACE replayed request by request
    (named relative to OUT), and it is the profile simulated: Vanilla's NAV count is then the
    traces' own (243 real; the trace recorder's batch shapes flip a few near ties: 250)."""
    run20, kept = Path("docs/validation/cpu-run20-real18"), "scenarios/testbed_cpu_real18.toml"
    trace = Path("scenarios/acceptance/smollm2-q4_0.humaneval.heldout.csv.gz")
    out = tmp_path / "out"
    assert main(["revalidate", str(run20), "--scenario", kept, "--quiet",
                 "--replay-acceptance", str(trace), "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    written = json.loads((out / "profile.json").read_text())
    relative = os.path.relpath(trace.resolve(), out.resolve())
    assert written["acceptance"] == {
        "kind": "replay",
        "trace": relative,
        "block": 0,
        "order": "request",
    }
    assert "request order" in written["provenance"]["notes"]["acceptance"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"]["path"] == str(out / "profile.json")
    vanilla = [r for r in read_rows(out / "validation.csv") if r["policy"] == "vanilla"]
    assert {float(r["nav_count_sim"]) for r in vanilla} == {250.0}
    # Both splits' traces, fitting first: put in the run's order by their prompt ids (in
    # OUT/acceptance-replay.csv.gz), the very same simulation.
    fitting = Path("scenarios/acceptance/smollm2-q4_0.humaneval.fit122.csv.gz")
    both = tmp_path / "both"
    assert main(["revalidate", str(run20), "--scenario", kept, "--quiet", "--replay-acceptance",
                 str(fitting), str(trace), "--out", str(both)]) == 0  # fmt: skip
    capsys.readouterr()
    joined = json.loads((both / "profile.json").read_text())
    assert joined["acceptance"]["trace"] == "acceptance-replay.csv.gz"
    assert "by prompt id" in joined["provenance"]["notes"]["acceptance"]
    # That written trace records no prompt ids: given back alone, it is taken in its order.
    again = tmp_path / "again"
    assert main(["revalidate", str(run20), "--scenario", kept, "--quiet", "--replay-acceptance",
                 str(both / "acceptance-replay.csv.gz"), "--out", str(again)]) == 0  # fmt: skip
    capsys.readouterr()
    sim = [k for k in read_rows(out / "validation.csv")[0] if k.endswith("_sim")]
    expected = [[r[k] for k in sim] for r in read_rows(out / "validation.csv")]
    for folder in (both, again):
        assert [[r[k] for k in sim] for r in read_rows(folder / "validation.csv")] == expected


def test_replay_acceptance_is_refused_in_one_line_where_it_cannot_apply(in_repo, tmp_path, capsys):
    """A synthetic-acceptance run's scenario sets its own acceptance (the stream its testbed
    replayed), and a missing trace is a missing trace: one line each, exit 2, no OUT."""
    trace = Path("scenarios/acceptance/smollm2-q4_0.humaneval.heldout.csv.gz")
    out = tmp_path / "out"
    assert main(["revalidate", str(RUN11), "--replay-acceptance", str(trace),
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "sets its own acceptance" in err and len(err.splitlines()) == 1
    run20, kept = "docs/validation/cpu-run20-real18", "scenarios/testbed_cpu_real18.toml"
    assert main(["revalidate", run20, "--scenario", kept, "--replay-acceptance",
                 str(tmp_path / "nope.csv"), "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--replay-acceptance" in err and "not found" in err and len(err.splitlines()) == 1
    assert main(["revalidate", run20, "--scenario", kept, "--acceptance-model",
                 str(tmp_path / "nope.json"), "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--acceptance-model" in err and "not found" in err and len(err.splitlines()) == 1
    assert main(["revalidate", run20, "--scenario", kept, "--replay-order", "random",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--replay-order" in err and "--replay-acceptance only" in err
    assert not out.exists()


def test_a_fitted_model_or_another_prompt_sets_replay_on_a_recorded_run(in_repo, tmp_path, capsys):
    """--acceptance-model MODEL on a real-acceptance run: OUT/profile.json is the run's profile
    with the model's acceptance (the note names it), and it is the profile simulated; the
    fitting traces replayed in random order likewise (--replay-order random)."""
    run20, kept = "docs/validation/cpu-run20-real18", "scenarios/testbed_cpu_real18.toml"
    model = Path("scenarios/acceptance/smollm2-q4_0.hmm.json")
    out = tmp_path / "out"
    assert main(["revalidate", run20, "--scenario", kept, "--quiet", "--acceptance-model",
                 str(model), "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    written = json.loads((out / "profile.json").read_text())
    fitted = json.loads(model.read_text())["acceptance"]
    assert written["acceptance"]["kind"] == "hmm"
    assert written["acceptance"]["transition"] == fitted["transition"]
    assert str(model) in written["provenance"]["notes"]["acceptance"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"]["path"] == str(out / "profile.json")
    fitting = Path("scenarios/acceptance/smollm2-q4_0.humaneval.fit122.csv.gz")
    assert main(["revalidate", run20, "--scenario", kept, "--quiet", "--replay-acceptance",
                 str(fitting), "--replay-order", "random", "--out", str(out),
                 "--force"]) == 0  # fmt: skip
    capsys.readouterr()
    written = json.loads((out / "profile.json").read_text())
    assert written["acceptance"]["order"] == "random"
    assert "random sequence" in written["provenance"]["notes"]["acceptance"]


def test_per_request_fold_models_on_a_recorded_run(in_repo, tmp_path, capsys):
    """--acceptance-model with `acceptance-folds`' per-request models: accepted when they name
    the run's prompts in its order (OUT/profile.json holds them), refused in one line, before
    OUT exists, when they were fitted for another prompt order (the committed 164-prompt
    folds against run 20's held-out prompts)."""
    run20, kept = "docs/validation/cpu-run20-real18", "scenarios/testbed_cpu_real18.toml"
    fitted = json.loads(Path("scenarios/acceptance/smollm2-q4_0.hmm.json").read_text())
    held = [p.id for p in family_prompts("humaneval", "heldout")]
    folds = {"acceptance": {"kind": "by_request", "models": [fitted["acceptance"]] * 2,
                            "assignment": [r % 2 for r in range(len(held))],
                            "prompt_ids": held}}  # fmt: skip
    model = tmp_path / "folds.json"
    model.write_text(json.dumps(folds))
    out = tmp_path / "out"
    assert main(["revalidate", run20, "--scenario", kept, "--quiet", "--acceptance-model",
                 str(model), "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    written = json.loads((out / "profile.json").read_text())["acceptance"]
    assert written["kind"] == "by_request" and written["prompt_ids"] == held
    other = "scenarios/acceptance/smollm2-q4_0.humaneval.folds4.json"
    refused = tmp_path / "refused"
    assert main(["revalidate", run20, "--scenario", kept, "--acceptance-model", other,
                 "--out", str(refused)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "acceptance.prompt_ids" in err[0] and "--split heldout" in err[0]
    assert not refused.exists()
