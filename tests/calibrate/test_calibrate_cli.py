"""`pipesd calibrate` end to end on the shipped SmolLM2 draft: part, profile, simulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipesd.cli import main
from simulator.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "scenarios" / "profiles" / "default.json"


def test_draft_part_becomes_a_profile_the_simulator_runs(tmp_path: Path, write_scenario) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    part = tmp_path / "draft.json"
    argv = ["calibrate", "draft", "--model", "smollm2-135m", "--threads", "1",
            "--prompt-lengths", "8,16,32", "--context-lengths", "16,32", "--repetitions", "2",
            "--warmup", "1", "--out", str(part)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(part.read_text())
    assert data["kind"] == "draft" and data["values"]["payload.vocab_size"] == 49152
    draft = data["values"]["models.draft"]
    assert 0.1 < draft["parameters_b"] < 0.2 and draft["quantisation"] == "Q4_1"  # SmolLM2-135M
    profile_path = tmp_path / "measured.json"
    argv = ["calibrate", "profile", str(part), "--name", "measured", "--base", str(BASE),
            "--out", str(profile_path)]  # fmt: skip
    assert main(argv) == 0
    profile = load_profile(profile_path).profile
    assert profile.draft_latency.decode_base_s == data["values"]["draft_latency"]["decode_base_s"]
    assert profile.provenance.notes["target_latency"].startswith("NOT MEASURED")
    scenario = write_scenario(prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 16})
    text = scenario.read_text().replace('profile = "profile.json"', f'profile = "{profile_path}"')
    scenario.write_text(text)
    assert main(["run", str(scenario), "--out", str(tmp_path / "run"), "--quiet"]) == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "no-such-model", "--threads", "1"], "model"),
        (["--model", "smollm2-135m", "--threads", "0"], "--threads"),
        (["--model", "smollm2-135m", "--threads", "1", "--prompt-lengths", "a,b"], "integers"),
    ],
)
def test_bad_draft_arguments_exit_2(argv: list[str], expected: str, tmp_path: Path, capsys) -> None:
    try:
        code = main(["calibrate", "draft", *argv, "--out", str(tmp_path / "x.json")])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_target_and_power_parts_assemble(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    target, power = tmp_path / "target.json", tmp_path / "power.json"
    argv = ["calibrate", "target", "--model", "tiny", "--device", "cpu", "--dtype", "float32",
            "--token-counts", "1,4", "--batch-sizes", "1,2", "--context-lengths", "16,32",
            "--prompt-lengths", "8,16,32", "--repetitions", "2", "--warmup", "1",
            "--out", str(target)]  # fmt: skip
    assert main(argv) == 0
    assert main(["calibrate", "power", "--package-watts", "28", "--seconds", "0.2",
                 "--out", str(power)]) == 0  # fmt: skip
    out = tmp_path / "profile.json"
    argv = ["calibrate", "profile", str(target), str(power), "--name", "cpu", "--base", str(BASE),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    profile = load_profile(out).profile
    assert profile.target_latency.forward_base_s > 0
    assert profile.power.edge_busy_w == 28.0
    assert profile.provenance.notes["draft_latency"].startswith("NOT MEASURED")


def test_cuda_or_missing_meters_give_one_line_errors(tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    if not torch.cuda.is_available():
        code = main(["calibrate", "target", "--model", "tiny", "--device", "cuda",
                     "--out", str(tmp_path / "t.json")])  # fmt: skip
        assert code == 2 and "no CUDA device" in capsys.readouterr().err
    if not Path("/sys/class/powercap").exists():
        assert main(["calibrate", "power", "--out", str(tmp_path / "p.json")]) == 2
        assert "--package-watts" in capsys.readouterr().err


def test_calibrate_all_writes_parts_and_profile(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    out = tmp_path / "all.json"
    argv = ["calibrate", "all", "--draft", "smollm2-135m", "--threads", "1",
            "--draft-prompt-lengths", "8,16,32", "--draft-context-lengths", "16,32",
            "--target", "tiny", "--device", "cpu", "--dtype", "float32", "--token-counts", "1,4",
            "--batch-sizes", "1,2", "--target-context-lengths", "16,32",
            "--target-prompt-lengths", "8,16,32", "--package-watts", "15", "--repetitions", "2",
            "--warmup", "1", "--name", "all", "--base", str(BASE), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "all.parts").iterdir()) == [
        "draft.json",
        "power.json",
        "target.json",
    ]
    profile = load_profile(out).profile
    source = profile.provenance.source
    assert "draft_latency" in source and "target_latency" in source
    assert profile.power.edge_busy_w == 15.0


def test_acceptance_part_from_a_real_pair(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("gguf", reason="gguf is not installed")
    from models.registry import smollm2_gguf
    from models.truncate import truncate_gguf

    draft = truncate_gguf(smollm2_gguf(), tmp_path / "draft.gguf", 28)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name three colours.\nWhat is two plus two?\n")
    out = tmp_path / "acceptance.json"
    argv = ["calibrate", "acceptance", "--draft", str(draft), "--target", "smollm2-135m",
            "--prompts", str(prompts), "--max-new-tokens", "16", "--threads", "1",
            "--bins", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    part = json.loads(out.read_text())
    assert part["values"]["acceptance"]["kind"] == "calibrated"
    assert (tmp_path / "acceptance.trace.csv").is_file()
    profile_path = tmp_path / "profile.json"
    argv = ["calibrate", "profile", str(out), "--name", "pair", "--base", str(BASE),
            "--out", str(profile_path)]  # fmt: skip
    assert main(argv) == 0
    assert load_profile(profile_path).profile.acceptance.kind == "calibrated"
