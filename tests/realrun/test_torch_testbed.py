"""The testbed with a torch target (`--target-backend torch`), the GPU validation's path, on the
CPU: arguments, the draft/target vocabulary check, and `realrun local` end to end with the
"tiny" random-weight shape as target and a GGUF of the same shape as draft (synthetic
acceptance, as a paper-sized random-weight pair would run on the GPU machine)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from model_marks import needs_smollm2

from realrun.cli import local_options, torch_target_arg
from realrun.testbed_rules import check_vocabularies
from simulator.errors import ConfigError


def test_torch_targets_are_files_folders_shapes_or_known_names(tmp_path):
    assert torch_target_arg("tiny") == "tiny"
    assert torch_target_arg("Llama-2-7B") == "Llama-2-7B"
    assert torch_target_arg(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(ConfigError, match="allowed with --target-backend torch") as caught:
        torch_target_arg("no-such-model")
    assert "Llama-2-7B" in str(caught.value) and "\n" not in str(caught.value)


def _args(**changes) -> argparse.Namespace:
    values = dict(
        target="tiny", draft="smollm2-135m", target_backend="torch", target_device="cpu",
        target_threads=1, draft_threads=1, shaping="software", acceptance="synthetic",
        temperature=None, top_k=None,
    )  # fmt: skip
    values.update(changes)
    return argparse.Namespace(**values)


@needs_smollm2
def test_options_carry_the_backend_and_device():
    options = local_options(_args(target_device="cuda:1"))
    assert options.target == "tiny" and options.target_backend == "torch"
    assert options.target_device == "cuda:1"


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU"])
def test_a_bad_target_device_is_one_line(device):
    with pytest.raises(ConfigError, match="allowed: cpu, cuda, cuda:N"):
        local_options(_args(target=".", target_device=device, draft="."))


def test_vocabularies_real_needs_equal_synthetic_needs_the_drafts_inside():
    check_vocabularies(49152, 49152, "real")
    check_vocabularies(512, 32000, "synthetic")
    with pytest.raises(ConfigError, match="sharing a tokenizer"):
        check_vocabularies(512, 32000, "real")
    with pytest.raises(ConfigError, match="cannot all be verified"):
        check_vocabularies(49152, 512, "synthetic")


def test_realrun_local_with_a_torch_target_runs_a_random_weight_pair(write_scenario, tmp_path):
    pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    pytest.importorskip("transformers", reason="transformers (extra 'models') is not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    import csv
    import json

    from models.shape_gguf import build_shape_gguf
    from pipesd.cli import main

    draft: Path = build_shape_gguf("tiny", tmp_path / "tiny-draft.gguf", quant="F16")
    scenario = write_scenario(
        policies=[{"name": "vanilla"}, {"name": "pipesd", "autotune": False}],
        link={"uplink_mbps": 20.0, "downlink_mbps": 50.0, "one_way_latency_s": 0.002},
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 12},
        seeds=[1, 2],
    )
    out = tmp_path / "local"
    argv = ["realrun", "local", str(scenario), "--target", "tiny", "--target-backend", "torch",
            "--draft", str(draft), "--acceptance", "synthetic", "--shaping", "software",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    testbed = manifest["testbed"]
    assert testbed["target_backend"] == "torch" and testbed["target_device"] == "cpu"
    server = testbed["points"]["0"]["server"]
    assert server[server.index("--backend") + 1] == "torch"
    assert testbed["points"]["0"]["health"]["n_vocab"] == 512
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["policy"] for r in rows] == ["vanilla", "pipesd"]
    assert all(float(r["tpt_ms"]) > 0 and float(r["acceptance_rate"]) > 0 for r in rows)
    with (out / "results.csv").open() as handle:
        results = list(csv.DictReader(handle))
    assert all(r["new_tokens"] == "12" and r["local_tokens"] == "0" for r in results)
    # sessions go seed by seed, the policies interleaved (the machine's drift is shared)
    order = [(r["seed"], r["policy"]) for r in results if r["request"] == "0"]
    assert order == [("1", "vanilla"), ("1", "pipesd"), ("2", "vanilla"), ("2", "pipesd")]


def test_validate_recalibrates_a_torch_target_as_served(
    write_scenario, tmp_path, small_recalibration
):
    """`validate --recalibrate --target-backend torch`: the target part is the served torch
    target's (calibrate target --backend torch-served) and the validation table is written."""
    pytest.importorskip("torch", reason="torch (extra 'models') is not installed")
    pytest.importorskip("transformers", reason="transformers (extra 'models') is not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
    import json

    from models.shape_gguf import build_shape_gguf
    from pipesd.cli import main

    draft = build_shape_gguf("tiny", tmp_path / "tiny-draft.gguf", quant="F16")
    scenario = write_scenario(
        link={"uplink_mbps": 20.0, "downlink_mbps": 50.0, "one_way_latency_s": 0.002},
        prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 8},
    )
    out = tmp_path / "validate"
    argv = ["validate", str(scenario), "--profile", str(tmp_path / "profile.json"),
            "--recalibrate", "--target", "tiny", "--target-backend", "torch", "--draft",
            str(draft), "--acceptance", "synthetic", "--shaping", "software", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    target = json.loads((out / "calibration" / "target.json").read_text())
    assert "TorchTarget mode static" in target["notes"]["target_latency"]
    assert target["values"]["models.target"]["name"] == "tiny"
    assert (out / "validation.csv").read_text().count("\n") == 2  # header + vanilla
