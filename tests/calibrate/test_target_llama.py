"""The llama.cpp target profiler (calibrate/target_llama.py) on a 2-layer SmolLM2 copy, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path
from noise_checks import assert_runs_accounted

from calibrate.samples import ForwardSample, PrefillSample
from calibrate.target_llama import fit_single_sequence
from pipesd.cli import main
from simulator.profile import load_profile

pytestmark = needs_smollm2

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "scenarios" / "profiles" / "default.json"
TOKENS = (1, 2, 3)
"""Six configurations for a four-term forward model: the fit and its cross-validation stay
identified even when interference leaves one kept run per configuration (issue 21)."""
CONTEXTS = (8, 24)
PROMPTS = (4, 8, 16)
REPETITIONS = 2
GRIDS = ["--token-counts", "1,2,3", "--context-lengths", "8,24", "--prompt-lengths", "4,8,16",
         "--repetitions", "2", "--warmup", "1"]  # fmt: skip


class FakeMeter:
    """A meter whose counter advances by a fixed amount per reading."""

    def __init__(self, joules_per_read: float) -> None:
        self.step = joules_per_read
        self.total = 0.0

    def read_j(self) -> float:
        self.total += self.step
        return self.total

    def name(self) -> str:
        return "fake meter"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M cut to its first 2 layers (shares the real tokenizer and head)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("gguf", reason="gguf is not installed")
    from models.truncate import truncate_gguf

    source = smollm2_path()
    return truncate_gguf(source, tmp_path_factory.mktemp("tiny") / "tiny.gguf", 2)


def test_profiler_measures_every_configuration_with_energy(tiny_gguf: Path) -> None:
    from calibrate.target_llama import profile_llama_target

    measured = profile_llama_target(
        tiny_gguf, 1, TOKENS, CONTEXTS, PROMPTS, REPETITIONS, 1,
        energy_meter=FakeMeter(0.5), idle_window_s=0.01,
    )  # fmt: skip
    noise = measured.noise
    assert [row["prompt_len"] for row in noise["prefill"]] == list(PROMPTS)
    assert [(row["tokens"], row["context"]) for row in noise["forward"]] == [
        (n, c) for c in CONTEXTS for n in TOKENS
    ]
    assert_runs_accounted(
        measured.prefill, measured.prefill_rejected, noise["prefill"], REPETITIONS
    )
    assert_runs_accounted(
        measured.forward, measured.forward_rejected, noise["forward"], REPETITIONS
    )
    assert all(s.batch == 1 and s.seconds > 0 for s in measured.forward)
    assert {s.new_positions for s in measured.forward} == set(TOKENS)
    # each verification commits at least the pending token: contexts c, c + 1, ... per session
    for c in CONTEXTS:
        seen = sorted({s.context_len for s in measured.forward if c <= s.context_len < c + 16})
        assert seen[0] == c and len(seen) == len(TOKENS)
    assert {(r.tokens, r.context) for r in measured.runs} == {
        (n, c) for n in TOKENS for c in CONTEXTS
    }
    # the meter is read around every run (kept or not)
    assert all(r.window_count == r.stats.n + r.stats.n_rejected for r in measured.runs)
    assert all(r.energy_j == 0.5 for r in measured.runs)
    assert measured.mean_active_w() is not None and measured.idle_w is not None
    assert measured.shape["layers"] == 2 and measured.shape["vocab"] == 49152
    latency, reports = measured.fit()
    assert latency.forward_per_extra_sequence_s == 0.0 and latency.forward_base_s > 0
    assert "batch 1 only" in reports["forward"].method
    assert "llama-cpp-python" in measured.lines()[0]


@pytest.mark.skipif(
    Path("/sys/class/powercap").exists(),
    reason="this machine has /sys/class/powercap (RAPL may be readable)",
)
def test_without_rapl_energy_is_none_with_the_reason(tiny_gguf: Path) -> None:
    from calibrate.target_llama import profile_llama_target

    measured = profile_llama_target(tiny_gguf, 1, (1, 2), (4, 8), (4, 8), 1, 0)
    assert measured.energy_method is None and measured.mean_active_w() is None
    assert measured.energy_unavailable.startswith("RAPL:")


def test_grid_past_the_context_is_refused(tiny_gguf: Path) -> None:
    from calibrate.target_llama import profile_llama_target

    with pytest.raises(ValueError, match="n_ctx"):  # llama.cpp rounds n_ctx 64 up to 256
        profile_llama_target(tiny_gguf, 1, (1, 2), (300,), (4, 8), 1, 0, n_ctx=64)


def test_cli_part_loads_into_a_profile(tiny_gguf: Path, tmp_path: Path) -> None:
    part = tmp_path / "target.json"
    argv = ["calibrate", "target", "--backend", "llama", "--model", str(tiny_gguf),
            "--threads", "1", *GRIDS, "--out", str(part)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(part.read_text())
    assert data["kind"] == "target"
    assert data["reports"]["forward"]["mape_holdout"] >= 0
    samples = data["samples"]
    assert_runs_accounted(
        samples["forward"],
        samples.get("forward_rejected", []),
        samples["noise_forward"],
        REPETITIONS,
    )
    assert "target.noise.forward" in data["notes"]
    assert "LlamaTarget" in data["notes"]["target_latency"]
    assert data["notes"]["power.gpu_active_w"].startswith("not measured") or (
        "power.gpu_active_w" in data["values"]
    )
    assert data["versions"]["llama-cpp-python"] != "not installed"
    assert data["values"]["models.target"]["parameters_b"] > 0
    out = tmp_path / "profile.json"
    argv = ["calibrate", "profile", str(part), "--name", "llama", "--base", str(BASE),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    target = load_profile(out).profile.target_latency
    assert target.model_dump() == data["values"]["target_latency"]
    assert target.forward_s(4, 100) > target.forward_s(1, 100) > 0


def test_calibrate_all_takes_the_llama_target(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    argv = ["calibrate", "all", "--draft", str(tiny_gguf), "--threads", "1",
            "--draft-prompt-lengths", "8,16,32", "--draft-context-lengths", "16,32",
            "--target", str(tiny_gguf), "--target-backend", "llama", "--token-counts", "1,2,3",
            "--target-context-lengths", "8,24", "--target-prompt-lengths", "4,8,16",
            "--package-watts", "15", "--repetitions", "2", "--warmup", "1", "--name", "all",
            "--base", str(BASE), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    part = json.loads((tmp_path / "all.parts" / "target.json").read_text())
    assert "LlamaTarget" in part["notes"]["target_latency"]
    assert load_profile(out).profile.target_latency.forward_per_extra_sequence_s == 0.0


LLAMA = ["--backend", "llama", "--model", "x", "--threads", "1"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--backend", "onnx", "--model", "smollm2-135m", "--threads", "1"], "--backend"),
        (["--backend", "llama", "--model", "smollm2-135m"], "--threads"),
        (["--backend", "llama", "--model", "smollm2-135m", "--threads", "0"], "--threads"),
        (["--backend", "torch-served", "--model", "x", "--batch-sizes", "1,2"], "--batch-sizes"),
        ([*LLAMA, "--device", "cuda"], "--device"),
        ([*LLAMA, "--dtype", "float32"], "--dtype"),
        (["--backend", "llama", "--model", "no-such-model", "--threads", "1"], "model"),
        (["--model", "tiny", "--threads", "2"], "--threads"),
    ],
)
def test_bad_target_arguments_are_one_line(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["calibrate", "target", *extra, "--out", str(tmp_path / "x.json")])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_single_sequence_fit_recovers_known_coefficients() -> None:
    base, per_token, per_context = 2e-3, 1e-3, 3e-6
    forward = [
        ForwardSample(n, c, 1, base + per_token * n + per_context * c)
        for n in (1, 2, 4, 8)
        for c in (64, 256, 1024)
    ]
    prefill = [PrefillSample(p, 1e-3 + 5e-4 * p) for p in (16, 64, 256)]
    latency, reports = fit_single_sequence(prefill, forward)
    assert latency.forward_base_s == pytest.approx(base, rel=1e-6)
    assert latency.forward_per_token_s == pytest.approx(per_token, rel=1e-6)
    assert latency.forward_per_context_token_s == pytest.approx(per_context, rel=1e-6)
    assert latency.prefill_per_token_s == pytest.approx(5e-4, rel=1e-6)
    assert reports["forward"].mape_holdout < 1e-6
    with pytest.raises(ValueError, match="batch 1"):
        fit_single_sequence(prefill, [*forward, ForwardSample(4, 128, 2, 0.01)])
