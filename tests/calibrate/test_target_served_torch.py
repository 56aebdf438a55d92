"""The served-target timing loop (calibrate/served.py) on a fake target, and the torch-served
profiler (calibrate/target_served_torch.py) on the "tiny" random-weight shape, CPU."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from noise_checks import assert_runs_accounted

from calibrate.served import WINDOW_CONTEXT_SLACK, served_needs, time_served
from pipesd.cli import main
from simulator.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "scenarios" / "profiles" / "default.json"
GRIDS = ["--token-counts", "1,2,4", "--context-lengths", "16,48", "--prompt-lengths", "4,8,16",
         "--repetitions", "2", "--warmup", "1"]  # fmt: skip


@dataclass
class Result:
    accepted: int
    token: int
    target_ms: float


class FakeTarget:
    """The server's target interface; a verification of n positions at context c "takes"
    1 + 0.5 n + 0.01 c ms; it accepts `accept` drafts when it can."""

    n_vocab = 100

    def __init__(self, accept: int = 0) -> None:
        self.accept = accept
        self.sessions: dict[str, list[int]] = {}
        self.uploaded: dict[str, list[int]] = {}
        self.opened: list[int] = []
        self.verified: list[tuple[int, int]] = []

    def open(self, prompt: list[int]) -> tuple[str, float]:
        sid = f"s{len(self.opened)}"
        self.opened.append(len(prompt))
        self.sessions[sid], self.uploaded[sid] = list(prompt[:-1]), []
        return sid, 0.1 * len(prompt)

    def upload(self, sid: str, tokens: list[int], probs: None) -> int:
        assert all(0 <= t < self.n_vocab for t in tokens)
        self.uploaded[sid].extend(tokens)
        return len(self.uploaded[sid])

    def verify(self, sid: str) -> Result:
        drafts, context = self.uploaded[sid], len(self.sessions[sid])
        accepted = min(self.accept, len(drafts))
        self.verified.append((len(drafts) + 1, context))
        self.sessions[sid].extend([0] * (1 + accepted))
        self.uploaded[sid] = []
        return Result(accepted, 0, 1 + 0.5 * (len(drafts) + 1) + 0.01 * context)

    def drop(self, sid: str) -> None:
        self.sessions.pop(sid)


class Meter:
    """A counter advancing 0.25 J per reading."""

    def __init__(self) -> None:
        self.total = 0.0

    def read_j(self) -> float:
        self.total += 0.25
        return self.total

    def name(self) -> str:
        return "fake meter"


def test_served_loop_samples_every_configuration_at_its_actual_context():
    target = FakeTarget(accept=1)
    timed = time_served(target, (1, 3), (10, 20), (4, 8), 3, 1, None, "no meter", print, 0)
    assert len(timed.prefill) == 2 * 3 and {s.prompt_len for s in timed.prefill} == {4, 8}
    assert all(s.seconds == pytest.approx(1e-4 * s.prompt_len) for s in timed.prefill)
    assert len(timed.forward) == 2 * 2 * 3
    for s in timed.forward:  # the sample's context is what the cache held before it
        assert s.seconds == pytest.approx((1 + 0.5 * s.new_positions + 0.01 * s.context_len) / 1e3)
    contexts = sorted({(s.new_positions, s.context_len) for s in timed.forward})
    assert contexts == [(1, 10), (1, 20), (3, 11), (3, 21)]  # 1 token commits 1 position
    assert [(r.tokens, r.context, r.stats.n) for r in timed.runs] == [
        (1, 10, 3), (3, 10, 3), (1, 20, 3), (3, 20, 3)
    ]  # fmt: skip
    assert timed.energy_method is None and timed.idle_unavailable == "no meter"
    assert target.sessions == {}  # every session dropped


def test_energy_read_around_every_verification_without_windows():
    timed = time_served(
        FakeTarget(), (1, 2), (8,), (4,), 2, 0, Meter(), None, print, 0, idle_window_s=0.01
    )
    assert timed.idle_w is not None and timed.idle_w > 0
    assert all(r.energy_j == pytest.approx(0.25) and r.window_count == 2 for r in timed.runs)
    assert "every kept verification" in timed.energy_method


def test_energy_windows_at_the_middle_context_reopen_a_grown_session():
    target = FakeTarget(accept=3)
    timed = time_served(
        target, (1, 4), (8, 16, 32), (4,), 1, 0, Meter(), None, print, 0,
        idle_window_s=0.01, energy_window_s=0.02,
    )  # fmt: skip
    with_energy = [(r.tokens, r.context) for r in timed.runs if r.energy_j is not None]
    assert with_energy == [(1, 16), (4, 16)]
    for run in timed.runs:
        if run.energy_j is not None:
            assert run.energy_j == pytest.approx(0.25 / run.window_count)
            assert run.window_s >= 0.02 and run.mean_w > 0
    window = target.verified[2 * 3 :]  # after the timed round (3 contexts x 2 counts)
    assert max(c for _, c in window) <= 16 + WINDOW_CONTEXT_SLACK + 4
    assert target.opened.count(17) > 2  # reopened at context 16 as the window grew
    assert "windows of >= 0.02 s" in timed.energy_method
    assert target.sessions == {}


def test_served_needs_counts_the_window_slack():
    assert served_needs((100,), (1, 2, 4), (64,)) == 107
    assert served_needs((100,), (1, 2, 4), (64,), windows=True) == 107 + WINDOW_CONTEXT_SLACK + 4
    assert served_needs((8,), (1,), (512,)) == 512


# ------------------------------------------------------------------ the torch-served profiler


def _needs_torch() -> None:
    pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    pytest.importorskip("transformers", reason="transformers (extra 'models') is not installed")


def test_torch_served_profiler_times_the_servers_torch_target():
    _needs_torch()
    from calibrate.target_served_torch import profile_torch_served_target

    measured = profile_torch_served_target(
        "tiny", "cpu", token_counts=(1, 2, 4), context_lengths=(16, 48), prompt_lengths=(4, 8, 16),
        repetitions=2, warmup=1, energy_meter=Meter(), idle_window_s=0.01, n_ctx=256, threads=1,
    )  # fmt: skip
    assert measured.mode == "static" and measured.compile_mode is None
    assert measured.n_ctx == 256 and measured.max_verify == 64 and measured.n_params > 0
    assert measured.device == "cpu" and measured.dtype == "float32"
    noise = measured.noise["forward"]
    assert len(noise) == 3 * 2 and all(s.batch == 1 for s in measured.forward)
    assert_runs_accounted(measured.forward, measured.forward_rejected, noise, 2)
    assert all(r.energy_j is not None for r in measured.runs)  # RAPL-like: every verification
    latency, reports = measured.fit()
    assert latency.forward_per_extra_sequence_s == 0 and latency.forward_s(4, 32) > 0
    assert set(reports) == {"prefill", "forward"}
    assert "TorchTarget mode static, not compiled" in measured.lines()[0]


def test_torch_served_profiler_refuses_more_positions_than_n_ctx():
    _needs_torch()
    from calibrate.target_served_torch import profile_torch_served_target

    with pytest.raises(ValueError, match="n_ctx is 64"):
        profile_torch_served_target(
            "tiny", "cpu", token_counts=(1, 2), context_lengths=(62,), prompt_lengths=(4, 8),
            repetitions=1, warmup=0, n_ctx=64,
        )  # fmt: skip


def test_cli_torch_served_part_loads_into_a_profile(tmp_path: Path) -> None:
    _needs_torch()
    part = tmp_path / "target.json"
    argv = ["calibrate", "target", "--backend", "torch-served", "--model", "tiny", "--device",
            "cpu", "--threads", "1", *GRIDS, "--out", str(part)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(part.read_text())
    assert data["kind"] == "target"
    samples = data["samples"]
    assert len(samples["noise_forward"]) == 3 * 2  # repetitions 2, more where unstable
    assert_runs_accounted(
        samples["forward"], samples.get("forward_rejected", []), samples["noise_forward"], 2
    )
    assert data["notes"]["target.noise.forward"].startswith("measurement noise: CV")
    assert "TorchTarget mode static" in data["notes"]["target_latency"]
    assert data["versions"]["torch"] and data["values"]["models.target"]["name"] == "tiny"
    out = tmp_path / "profile.json"
    argv = ["calibrate", "profile", str(part), "--name", "served", "--base", str(BASE),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    target = load_profile(out).profile.target_latency
    assert target.model_dump() == data["values"]["target_latency"]


SERVED = ["--backend", "torch-served", "--model", "tiny", "--device", "cpu"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([*SERVED, "--batch-sizes", "1,2"], "--batch-sizes"),
        ([*SERVED, "--threads", "0"], "--threads"),
        ([*SERVED, "--token-counts", "1,80"], "at most 65"),
        (["--backend", "torch-served", "--model", "no-such-shape", "--device", "cpu"], "model"),
    ],
)
def test_bad_torch_served_arguments_are_one_line(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_torch()
    code = main(["calibrate", "target", *extra, "--out", str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
