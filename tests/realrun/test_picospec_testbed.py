"""PicoSpec's edge-side verification selected by the scenario on the testbed: a policy whose
payload sets `downlink_top_k` verifies at the edge on the target's top-K in a sampling run
(`realrun edge` / `realrun local` through realrun.testbed.run_testbed), the others on the
server; results.csv and the manifest say which ran; bad combinations are one-line errors.

End to end on the synthetic target (a uvicorn thread) and on SmolLM2-135M as its own draft
(`run_local`, a server subprocess, no shaping): every token the PicoSpec run emits lies in the
target's top-K, and the server answered its verifies with top-K rows, never a decision.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")

from model_marks import needs_smollm2, smollm2_path

from realrun.testbed_rules import (
    EXACT_P_SKIP,
    SamplingSpec,
    check_sampling,
    edge_top_k,
    entry_skip_reason,
    verification,
)
from simulator.errors import ConfigError
from simulator.scenario import expand_sweep


class Inline(dict):
    """A policy's `payload` table, written inline by the scenario writer (its repr)."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in self.items()) + "}"


def picospec(k: int, **payload: Any) -> dict[str, Any]:
    """A PicoSpec entry with a top-`k` downlink (`payload`: more payload fields)."""
    table = Inline(kind="token_prob", downlink_top_k=k, **payload)
    return {"name": "picospec", "draft_len": 4, "payload": table}


K = 4
PICOSPEC = picospec(K)
EXACT_P = picospec(K, downlink_scheme="exact_p_then_topk") | {"label": "picospec-exact-p"}
POLICIES = [{"name": "vanilla", "draft_len": 4}, PICOSPEC]
PROMPTS = {"count": 1, "prompt_len": 16, "max_new_tokens": 8}


def entries(write_scenario, policies: list[dict[str, Any]]) -> dict[str, Any]:
    scenario = expand_sweep(write_scenario(policies=policies, prompts=PROMPTS))[0].scenario
    return {entry.label: entry for entry in scenario.policies}


def test_the_rule_edge_top_k_only_when_sampling(write_scenario):
    e = entries(write_scenario, [*POLICIES, EXACT_P])
    sampling = SamplingSpec(0.8)
    assert edge_top_k(e["picospec"], sampling) == K
    assert edge_top_k(e["picospec"], None) == 0  # greedy: the server verifies
    assert edge_top_k(e["vanilla"], sampling) == 0
    assert verification(e["picospec"], sampling, "real").startswith("edge:")
    assert verification(e["picospec"], None, "real") == "server: greedy"
    assert verification(e["vanilla"], sampling, "real") == "server: speculative rejection sampling"
    # the exact-p protocol variant is simulated only: skipped when sampling, server when greedy
    assert entry_skip_reason(e["picospec-exact-p"], sampling) == EXACT_P_SKIP
    assert entry_skip_reason(e["picospec-exact-p"], None) is None
    assert entry_skip_reason(e["picospec"], sampling) is None


def test_a_top_k_the_server_cannot_send_is_a_one_line_error(write_scenario, tmp_path, capsys):
    from pipesd.cli import main

    path = write_scenario(policies=[picospec(300)], prompts=PROMPTS)
    with pytest.raises(ConfigError, match=r"policies\.picospec\.payload\.downlink_top_k"):
        check_sampling(SamplingSpec(0.8), expand_sweep(path)[0].scenario)
    check_sampling(None, expand_sweep(path)[0].scenario)  # greedy: the server verifies, fine
    argv = ["realrun", "edge", str(path), "--server", "http://127.0.0.1:9", "--draft", "d.gguf",
            "--temperature", "0.8", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "downlink_top_k" in err and "1..256" in err


@pytest.mark.parametrize("name", ["picospec_llama", "picospec_qwen"])
def test_the_shipped_picospec_scenarios_sample_on_the_testbed(name):
    """A sampling run of PicoSpec's scenarios starts (the skipped cloud-only policy's full
    rows do not size the server's body) with both top-16 PicoSpec variants at the edge."""
    from realrun.local import LocalOptions, check_points
    from realrun.testbed_rules import body_limit

    path = Path(__file__).parents[2] / "scenarios" / f"{name}.toml"
    points = expand_sweep(path)
    sampling = SamplingSpec(0.8)
    options = LocalOptions(target=Path("t.gguf"), draft=Path("d.gguf"), sampling=sampling)
    skipped = check_points(path, points, options)
    assert set(skipped) == {"cloud_ar", "split", "picospec-exact-p", "oracle"}
    assert body_limit(points[0].scenario, sampling) == 64 * 1024
    modes = {e.label: edge_top_k(e, sampling) for e in points[0].scenario.policies
             if e.label not in skipped}  # fmt: skip
    assert modes == {"vanilla": 0, "picospec": 16, "picospec-no-truncation": 16}
    with pytest.raises(ConfigError, match=r"policies\.vanilla\.payload \(full"):
        body_limit(points[0].scenario)  # greedy: vanilla's full rows at 64 tokens a message


class Recorder:
    """Wraps run_edge and CloudClient.verify: each run's sampling and output, and whether each
    verify answer carried top-K rows (the edge decides) or the server's decision."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from realrun.edge import executor
        from realrun.edge.client import CloudClient

        self.runs: list[dict[str, Any]] = []
        real_run, real_verify = executor.run_edge, CloudClient.verify

        def run_edge(policy, draft, cloud, prompt, n_new, **kwargs):
            run = {
                "policy": type(policy).__name__.lower(),
                "sampling": kwargs.get("sampling"),
                "answers": [],
            }
            self.runs.append(run)
            record, output, timeline = real_run(policy, draft, cloud, prompt, n_new, **kwargs)
            run |= {"prompt": list(prompt), "output": list(output), "record": record}
            return record, output, timeline

        def verify(client, *args, **kwargs):
            answer = real_verify(client, *args, **kwargs)
            if self.runs:
                self.runs[-1]["answers"].append("topk" if "topk" in answer else "decision")
            return answer

        monkeypatch.setattr(executor, "run_edge", run_edge)
        monkeypatch.setattr(CloudClient, "verify", verify)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["policy"] == name and "output" in run]


def check_results(out: Path, k: int) -> None:
    """results.csv and the manifest record the edge's top-K verification for PicoSpec and the
    server's for vanilla."""
    with (out / "results.csv").open(newline="") as handle:
        rows = {row["policy"]: row for row in csv.DictReader(handle)}
    assert (rows["picospec"]["verification"], rows["picospec"]["downlink_top_k"]) == (
        "edge_topk",
        str(k),
    )
    assert (rows["vanilla"]["verification"], rows["vanilla"]["downlink_top_k"]) == ("server", "0")
    modes = json.loads((out / "manifest.json").read_text())["testbed"]["verification"]
    edge = f"edge: separate rejection sampling on the target's top-{k} (edge_topk)"
    assert modes["picospec"] == edge
    assert modes["vanilla"] == "server: speculative rejection sampling"


def check_runs(recorder: Recorder, k: int) -> list[dict[str, Any]]:
    """PicoSpec's verifies were answered with top-K rows, vanilla's with decisions; returns
    PicoSpec's runs."""
    (vanilla,) = recorder.of("vanilla")
    (pico,) = recorder.of("picospec")
    assert vanilla["sampling"].downlink_top_k == 0 and pico["sampling"].downlink_top_k == k
    assert vanilla["answers"] and set(vanilla["answers"]) == {"decision"}
    assert pico["answers"] and set(pico["answers"]) == {"topk"}
    for run in (vanilla, pico):
        assert len(run["output"]) == PROMPTS["max_new_tokens"]
        assert run["record"].local_tokens == 0 and run["record"].navs >= 1
    return [pico]


@needs_smollm2
def test_synthetic_target_picospec_verifies_at_the_edge(write_scenario, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    from test_server_limits import served

    from realrun.cloud.server import create_app
    from realrun.cloud.synthetic_target import SyntheticTarget
    from realrun.cloud.verifier import softmax
    from realrun.testbed import run_testbed

    recorder = Recorder(monkeypatch)
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    point = expand_sweep(path)[0]
    target = SyntheticTarget(n_vocab=49152, seed=5)  # SmolLM2's vocabulary, seeded logits
    app = create_app("", target=target, rate_limit_per_s=None)
    with served(app) as url:
        run_testbed(path, point, url, smollm2_path(), 1, tmp_path / "out", ["test"],
                    sampling=SamplingSpec(1.0, 8))  # fmt: skip
    check_results(tmp_path / "out", K)
    for run in check_runs(recorder, K):
        sequence = run["prompt"] + run["output"]
        for i in range(len(run["prompt"]), len(sequence)):
            p = softmax(target.row(sequence[i - 1], i - 1), 1.0)
            assert sequence[i] in np.argsort(-p, kind="stable")[:K], i


@needs_smollm2
def test_realrun_local_smollm2_picospec_verifies_at_the_edge(write_scenario, tmp_path, monkeypatch):
    """`realrun local` (a SmolLM2 server subprocess, SmolLM2 as its own draft, no shaping) at
    T = 0.8: PicoSpec's tokens all lie in the target's top-16, recomputed here by llama.cpp."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from realrun.local import LocalOptions, run_local

    k = 16
    path = write_scenario(policies=[POLICIES[0], picospec(k)], prompts=PROMPTS)
    points = expand_sweep(path)
    recorder = Recorder(monkeypatch)
    model = smollm2_path()
    options = LocalOptions(model, model, shaping="none", sampling=SamplingSpec(0.8, 16))
    out = tmp_path / "local"
    run_local(path, points, options, out, ["test"])
    check_results(out, k)
    used = json.loads((out / "manifest.json").read_text())["testbed"]["points"]["0"]
    assert used["verification"]["picospec"].startswith("edge:")
    (run,) = check_runs(recorder, k)
    target = llama_cpp.Llama(str(model), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    try:
        sequence = run["prompt"] + run["output"]
        target.eval(sequence)
        logits = np.asarray(target.scores[: len(sequence)])
    finally:
        target.close()
    for i in range(len(run["prompt"]), len(sequence)):
        row = logits[i - 1]  # a batch evaluation: allow float noise against the server's
        assert row[sequence[i]] >= np.sort(row)[-k] - 1e-3, i
