"""Shared fixtures: small scenarios written to a temporary folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from validation import recalibrate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = REPO / "scenarios" / "profiles" / "default.json"


def toml_value(value: Any) -> str:
    """A Python value as TOML text (enough for test scenarios)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def toml_text(data: dict[str, Any]) -> str:
    """Serialise a scenario dict: scalars first, then tables, then arrays of tables."""

    def is_table_list(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    def key(name: str) -> str:
        return f'"{name}"' if "." in name else name

    lines = [
        f"{k} = {toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and not is_table_list(v)
    ]
    for name, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{name}]")
            lines.extend(f"{key(k)} = {toml_value(v)}" for k, v in value.items())
    for name, value in data.items():
        if is_table_list(value):
            for table in value:
                lines.append(f"\n[[{name}]]")
                lines.extend(f"{key(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


ScenarioWriter = Callable[..., Path]


@pytest.fixture
def write_scenario(tmp_path: Path) -> ScenarioWriter:
    """Write a scenario (and optionally a modified profile) into tmp_path; return its path."""

    def write(
        policies: list[dict[str, Any]] | None = None,
        profile_changes: dict[str, Any] | None = None,
        name: str = "scenario.toml",
        **sections: Any,
    ) -> Path:
        profile = json.loads(DEFAULT_PROFILE.read_text())
        for dotted, value in (profile_changes or {}).items():
            node = profile
            *parents, last = dotted.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
        (tmp_path / "profile.json").write_text(json.dumps(profile))
        data: dict[str, Any] = {
            "name": "test",
            "profile": "profile.json",
            "seeds": [1],
            "prompts": {"count": 3, "prompt_len": 32, "max_new_tokens": 48},
        }
        data["policies"] = policies or [{"name": "vanilla"}]
        first = data["policies"][0]
        data["reference_policy"] = first.get("label", first["name"])
        data.update(sections)
        path = tmp_path / name
        path.write_text(toml_text(data))
        return path

    return write


SMALL_RECALIBRATION = [
    ("PROMPT_LENGTHS", [8, 16, 24]),
    ("DRAFT_CONTEXTS", [16, 24, 32]),
    ("TARGET_CONTEXTS", [16, 24, 32]),
    ("TARGET_TOKEN_COUNTS", [1, 2, 4]),
    ("REPETITIONS", 2),
    ("WARMUP", 0),
    ("DRAFT_REPETITIONS", 2),
    ("PAUSE_MS", 1.0),
]
"""validation.recalibrate's grids, cut to seconds of work."""


@pytest.fixture
def small_recalibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate --recalibrate` (validation.recalibrate) on small grids for this test."""
    for name, value in SMALL_RECALIBRATION:
        monkeypatch.setattr(recalibrate, name, value)
