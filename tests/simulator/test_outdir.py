"""Run folders: --out never deletes or overwrites what the command did not write itself, and a
damaged run folder on --resume is one line naming the damaged file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipesd.cli import main
from simulator.errors import ConfigError
from simulator.outdir import (
    check_out_file,
    claim_out_dir,
    command_kind,
    release_out_dir,
)
from simulator.results import FILE_MODE


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("pipesd: error: "), err
    return err


@pytest.fixture
def scenario(write_scenario) -> Path:
    return write_scenario(prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 8})


def run(scenario: Path, out: Path | str, *extra: str) -> int:
    return main(["run", str(scenario), "--out", str(out), "--quiet", "--jobs", "1", *extra])


def test_a_folder_that_is_not_a_run_folder_is_never_touched(scenario, tmp_path, capsys):
    """The hostile session's data loss: --out pointing at a folder with a parts/ subfolder."""
    profiles = tmp_path / "profiles"
    (profiles / "parts").mkdir(parents=True)
    (profiles / "parts" / "draft.json").write_text("{}")
    (profiles / "timelines").mkdir()
    (profiles / "default.json").write_text("{}")
    before = tree(profiles)
    for extra in ((), ("--force",), ("--resume",)):
        assert run(scenario, profiles, *extra) == 2
        assert "is not a run folder" in one_error_line(capsys) or extra == ("--resume",)
        assert tree(profiles) == before


def test_force_replaces_only_an_earlier_run_of_the_same_command(scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(scenario, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "run" and manifest["status"] == "complete"
    summary = (out / "summary.csv").read_bytes()
    assert run(scenario, out) == 2
    assert "give --force to replace them, --resume to continue" in one_error_line(capsys)
    assert run(scenario, out, "--force") == 0
    assert (out / "summary.csv").read_bytes() == summary  # same seed, same results
    validation = tmp_path / "validation"
    validation.mkdir()
    (validation / "manifest.json").write_text(json.dumps({"command": ["pipesd", "validate"]}))
    assert run(scenario, validation, "--force") == 2
    assert "output of `pipesd validate`, not `pipesd run`" in one_error_line(capsys)


def test_empty_file_and_unwritable_outs_are_one_line(scenario, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(scenario, "")
    assert exit_info.value.code == 2
    assert "--out: must not be empty" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("keep")
    assert run(scenario, tmp_path / "a-file") == 2
    assert "exists and is not a folder" in one_error_line(capsys)
    assert run(scenario, tmp_path / "a-file" / "below") == 2
    one_error_line(capsys)
    assert (tmp_path / "a-file").read_text() == "keep"


def test_result_files_get_the_umask_mode(scenario, tmp_path):
    out = tmp_path / "out"
    assert run(scenario, out) == 0
    for name in ("summary.csv", "results.csv", "manifest.json"):
        assert (out / name).stat().st_mode & 0o777 == FILE_MODE
    assert 0o666 & ~_umask() == FILE_MODE


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_claim_marks_and_release_undoes(tmp_path):
    out = tmp_path / "new"
    assert claim_out_dir(out, "figures") is True
    assert json.loads((out / "manifest.json").read_text())["kind"] == "figures"
    release_out_dir(out, created=True)
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_out_dir(empty, "figures") is False
    release_out_dir(empty, created=False)
    assert empty.is_dir() and not any(empty.iterdir())


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (["pipesd", "run", "s.toml"], "run"),
        (["/usr/bin/pipesd", "realrun", "local", "s.toml"], "realrun local"),
        ("pipesd calibrate all --out x", "calibrate all"),
        (["pytest", "run"], None),
        ([1, 2], None),
        (None, None),
    ],
)
def test_command_kind(command, kind):
    assert command_kind(command) == kind


def test_output_files_of_the_wrong_kind(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad in ("", tmp_path, tmp_path / "file" / "x.json"):
        with pytest.raises(ConfigError):
            check_out_file(Path(bad) if bad != "" else Path(""))
    check_out_file(tmp_path / "new" / "x.json")
    check_out_file(tmp_path / "file")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ConfigError, match="not a regular file"):
            check_out_file(tmp_path / "fifo")


def damage_part(out: Path) -> None:
    part = next((out / "parts").glob("*.json"))
    part.write_text(part.read_text()[:50])


def damage_records(out: Path) -> None:
    part = next((out / "parts").glob("*.json"))
    data = json.loads(part.read_text())
    del data["records"]
    part.write_text(json.dumps(data))


def damage_types(out: Path) -> None:
    part = next((out / "parts").glob("*.json"))
    data = json.loads(part.read_text())
    data["records"][0]["end_s"] = "late"
    part.write_text(json.dumps(data))


def damage_bytes(out: Path) -> None:
    next((out / "parts").glob("*.json")).write_bytes(b"\xff\xfe\x00")


def damage_manifest(out: Path) -> None:
    (out / "manifest.json").write_text("{not json")


def damage_manifest_list(out: Path) -> None:
    (out / "manifest.json").write_text("[]")


def damage_parts_folder(out: Path) -> None:
    shutil.rmtree(out / "parts")
    (out / "parts").write_text("")


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (damage_part, "parts/"),
        (damage_records, "parts/"),
        (damage_types, "parts/"),
        (damage_bytes, "parts/"),
        (damage_manifest, "manifest.json"),
        (damage_manifest_list, "manifest.json"),
        (damage_parts_folder, "parts"),
    ],
)
def test_resume_over_a_damaged_run_names_the_file(scenario, tmp_path, capsys, damage, named):
    out = tmp_path / "out"
    assert run(scenario, out) == 0
    damage(out)
    before = tree(out)
    assert run(scenario, out, "--resume") == 2
    err = one_error_line(capsys)
    assert named in err and "fresh --out" in err
    assert tree(out) == before


def test_other_commands_refuse_a_folder_they_did_not_write(scenario, tmp_path, capsys, monkeypatch):
    """figures and revalidate go through the same gate (validate and realrun local too: they
    need models, so only their shared `make_out` is exercised here through revalidate)."""
    run_dir = tmp_path / "run"
    assert run(scenario, run_dir) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the recorded manifest names its scenario relative to the repo
    recorded = repo / "docs" / "validation" / "cpu-run11"
    for argv in (
        ["figures", str(run_dir), "--out", str(mine), "--force"],
        ["revalidate", str(recorded), "--quiet", "--out", str(mine), "--force"],
        ["figures", str(run_dir), "--out", str(run_dir)],  # a `pipesd run` folder
    ):
        assert main(argv) == 2
        assert "--out" in one_error_line(capsys)
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1
