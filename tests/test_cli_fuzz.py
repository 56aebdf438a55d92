"""Fuzz `pipesd run` with generated bad input: every case is exit 2 and one line, never more.

A seeded generator breaks one thing per case in a small valid setup (scenario TOML, profile
JSON, bandwidth and acceptance traces, a finished run folder): a value of the wrong type, a
non-finite or absurd number, an unknown or missing key, nesting thousands of levels deep, bad
bytes, a damaged trace, part or manifest, a bad flag, an output path of the wrong kind. Each
case goes through the CLI's `main()` in-process (a handful through a real subprocess) and must
exit 2 with exactly one `pipesd: error:` line on stderr, no traceback, and nothing changed on
disk. The cases are all bad by construction, so a case the CLI accepts fails the test too.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipesd.cli import main

REPO = Path(__file__).resolve().parents[1]
PROFILE = json.loads((REPO / "scenarios" / "profiles" / "default.json").read_text())
CASES_PER_FAMILY = 50
SEED = 17

SCENARIO: dict[str, Any] = {
    "name": "fuzz",
    "profile": "profile.json",
    "seeds": [1, 2],
    "reference_policy": "vanilla",
    "edge": {"compute_factor": 1.0, "max_draft_tokens": 64},
    "link": {"uplink_mbps": 20.0, "downlink_mbps": 200.0, "one_way_latency_s": 0.01},
    "prompts": {"count": 1, "prompt_len": 16, "max_new_tokens": 8},
    "payload": {"kind": "topk", "top_k": 4},
    "cloud": {"max_batch": 2, "batch_window_s": 0.001},
    "acceptance": {"kind": "iid", "rate": 0.7},
    "edge_groups": [{"count": 2, "compute_spread": 0.1, "uplink_mbps": 10.0}],
    "policies": [
        {"name": "vanilla", "draft_len": 4},
        {"name": "pipesd", "autotune": False, "r1": 0.3, "probe_sizes": [1, 2]},
    ],
}
TRACE = "t_s,mbps\n0,20\n5,10\n"
REPLAY = "sequence,position,confidence,accepted\n0,0,0.9,1\n0,1,0.4,0\n1,0,0.7,1\n"

BAD_NUMBERS = ['"20"', "true", "nan", "inf", "-inf", "1e308", "-1e308", "[]", "{}"]
"""TOML values no numeric field of SCENARIO accepts (all its numbers are bounded)."""
BAD_STRINGS = ["5", "true", "nan", "[]", "{a = 1}"]
BAD_BOOLS = ['"yes"', "1", "nan", "[]"]
BAD_JSON_NUMBERS: list[Any] = ["20", True, None, math.nan, math.inf, -math.inf, 1e308, -1e308, []]
BAD_JSON_STRINGS: list[Any] = [5, True, math.nan, [], {"a": 1}]


def deep_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def toml_value(value: Any) -> str:
    """TOML text of a value (floats via repr: nan, inf, 1e+308 are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Raw):
        return value.text
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


@dataclass(frozen=True)
class Raw:
    """TOML text put into a document as it is."""

    text: str


def toml_document(data: dict[str, Any]) -> str:
    """A scenario dict as TOML: scalars, then [tables], then [[arrays of tables]]."""
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {
        k: v
        for k, v in data.items()
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    }
    lines = [
        f"{k} = {toml_value(v)}" for k, v in data.items() if k not in tables and k not in arrays
    ]
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    for name, items in arrays.items():
        for item in items:
            lines += [f"[[{name}]]", *(f"{k} = {toml_value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


def leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every scalar in `data` with its path of keys and indices."""
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in leaves(v, (*path, k))]
    if isinstance(data, list):
        return [leaf for i, v in enumerate(data) for leaf in leaves(v, (*path, i))]
    return [(path, data)]


def tables(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every table (dict) in `data`."""
    found = [path] if isinstance(data, dict) else []
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else []
    )
    for key, value in items:
        found += tables(value, (*path, key))
    return found


def put(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


@dataclass
class Case:
    """One bad input: files to write (name -> text or bytes) and the `pipesd` arguments."""

    name: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    scenario: str = "scenario.toml"
    setup: Callable[[Path], None] | None = None


def base_files(scenario: dict[str, Any] | None = None) -> dict[str, str | bytes]:
    return {
        "scenario.toml": toml_document(scenario or SCENARIO),
        "profile.json": json.dumps(PROFILE),
        "up.csv": TRACE,
        "replay.csv": REPLAY,
    }


def bad_for(value: Any, rng: random.Random) -> str:
    if isinstance(value, bool):
        return rng.choice(BAD_BOOLS)
    if isinstance(value, int | float):
        return rng.choice([*BAD_NUMBERS, deep_list(40)])
    return rng.choice([*BAD_STRINGS, deep_list(40)])


def scenario_leaf_cases(rng: random.Random) -> list[Case]:
    cases = []
    candidates = [(p, v) for p, v in leaves(SCENARIO) if p[0] not in ("profile",)]
    for _ in range(CASES_PER_FAMILY):
        path, value = rng.choice(candidates)
        if path[0] == "name" or path[-1] == "label":
            bad = rng.choice(["5", "nan", "[]"])
        else:
            bad = bad_for(value, rng)
        data = copy.deepcopy(SCENARIO)
        put(data, path, Raw(bad))
        cases.append(Case(f"scenario {dotted(path)} = {bad[:20]}", base_files(data)))
    return cases


def scenario_shape_cases(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(CASES_PER_FAMILY):
        data = copy.deepcopy(SCENARIO)
        kind = i % 5
        if kind == 0:
            path = rng.choice(tables(data))
            target = data
            for key in path:
                target = target[key]
            target[rng.choice(["colour", "uplnk_mbps", "r3", "x"])] = 1
            name = f"unknown key in {dotted(path) or 'top'}"
        elif kind == 1:
            path = rng.choice([("name",), ("prompts", "count"), ("policies",), ("prompts",)])
            target = data
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
            name = f"missing {dotted(path)}"
        elif kind == 2:
            text = toml_document(data)
            lines = text.splitlines()
            at = rng.randrange(len(lines))
            lines.insert(
                at, rng.choice(["= = 1", "[unclosed", 'x = "open', "[[]]", "a = 1\na = 2"])
            )
            cases.append(
                Case(
                    f"toml syntax at line {at}", {**base_files(), "scenario.toml": "\n".join(lines)}
                )
            )
            continue
        elif kind == 3:
            depth = rng.choice([40, 5000, 100_000])
            bracket = rng.choice(["[", "{x = "])
            closing = "]" if bracket == "[" else "}"
            text = toml_document(data) + f"\n[deep]\nv = {bracket * depth}1{closing * depth}\n"
            cases.append(
                Case(f"nesting {depth} {bracket}", {**base_files(), "scenario.toml": text})
            )
            continue
        else:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            cases.append(Case("random bytes", {**base_files(), "scenario.toml": b"\xff" + blob}))
            continue
        cases.append(Case(name, base_files(data)))
    return cases


def profile_cases(rng: random.Random) -> list[Case]:
    cases = []
    candidates = leaves(PROFILE)
    for i in range(CASES_PER_FAMILY):
        data = copy.deepcopy(PROFILE)
        if i % 6 == 5:
            text = json.dumps(data)
            cut = rng.randrange(1, len(text) - 1)
            cases.append(
                Case(f"profile cut at {cut}", {**base_files(), "profile.json": text[:cut]})
            )
            continue
        if i % 6 == 4:
            depth = rng.choice([40, 100_000])
            text = json.dumps(data)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
            cases.append(Case(f"profile nesting {depth}", {**base_files(), "profile.json": text}))
            continue
        path, value = rng.choice(candidates)
        if isinstance(value, str):
            bad = rng.choice(BAD_JSON_STRINGS)
        else:
            bad = rng.choice(BAD_JSON_NUMBERS)
        put(data, path, bad)
        cases.append(
            Case(
                f"profile {dotted(path)} = {bad!r}",
                {**base_files(), "profile.json": json.dumps(data)},
            )
        )
    return cases


def trace_cases(rng: random.Random) -> list[Case]:
    cases = []
    with_trace = copy.deepcopy(SCENARIO)
    with_trace["link"]["uplink_trace"] = "up.csv"
    with_replay = copy.deepcopy(SCENARIO)
    with_replay["acceptance"] = {"kind": "replay", "trace": "replay.csv"}
    bad_rows = ["0,nan", "0,inf", "0,0", "0,-1", "0,1e308", "0,x", "0,", "x,1", "inf,1", "1e300,1"]
    bad_traces: list[str | bytes] = [f"t_s,mbps\n{row}\n" for row in bad_rows]
    bad_traces += [TRACE + "3,10\n", "time,rate\n0,1\n", "t_s,mbps\n", "t_s,mbps\n1,10\n"]
    bad_traces += [b"\xff\xfe\x00t_s,mbps\n"]
    bad_replay = ["0,2,nan,1", "0,2,2.0,1", "0,2,x,1", "0,2,0.5,maybe", "0,x,0.5,1", "0,2"]
    for i in range(CASES_PER_FAMILY):
        if i % 2 == 0:
            trace = rng.choice(bad_traces)
            files = {**base_files(with_trace), "up.csv": trace}
            cases.append(Case(f"trace {trace[:30]!r}", files))
        else:
            row = rng.choice(bad_replay)
            files = {**base_files(with_replay), "replay.csv": REPLAY + row + "\n"}
            cases.append(Case(f"replay row {row!r}", files))
    return cases


def flag_cases(rng: random.Random) -> list[Case]:
    paths = [dotted(p) for p, v in leaves(SCENARIO) if p[0] in ("link", "edge", "prompts", "cloud")]
    flags = [
        ["--jobs", "0"],
        ["--jobs", "-3"],
        ["--policies", ","],
        ["--policies", "nope"],
        ["--set", "link.uplink_mbps"],
        ["--set", "=3"],
        ["--set", "a..b=1"],
        ["--set", "link.nope=1"],
        ["--set", f"link.uplink_mbps={deep_list(10_000)}"],
        ["--set", "policies.pipesd.r1.x=1"],
        ["--set", "policies.nobody.r1=0.3"],
        ["--set", "policies.pipesd.probe_sizes=[]"],
        ["--set", "policies.pipesd.probe_sizes=[-1]"],
        ["--set", "policies.pipesd.initial_alpha_s=inf"],
        ["--sweep", "link.uplink_mbps="],
        ["--sweep", "link.uplink_mbps=1,nan"],
        [
            *("--sweep", "seeds=" + ",".join(f"[{i}]" for i in range(200))),
            "--sweep",
            "x=" + ",".join(map(str, range(60))),
        ],
        ["--force", "--resume"],
        ["--resume"],
        ["--out", ""],
        ["--out", "profile.json"],
        ["--out", "up.csv/below"],
        ["--out", "."],
    ]
    cases = [Case(f"flags {' '.join(f)[:40]}", base_files(), f) for f in flags]
    for _ in range(CASES_PER_FAMILY):
        path = rng.choice(paths)
        value = rng.choice([*BAD_NUMBERS, deep_list(40)])
        flag = rng.choice(["--set", "--sweep"])
        cases.append(Case(f"{flag} {path}={value[:20]}", base_files(), [flag, f"{path}={value}"]))
    return cases


def special_file_cases() -> list[Case]:
    def fifo(root: Path) -> None:
        os.mkfifo(root / "fifo.toml")

    cases = [
        Case("scenario is a folder", base_files(), scenario="keep"),
        Case("scenario is /dev/zero", base_files(), scenario="/dev/zero"),
        Case("scenario missing", base_files(), scenario="missing.toml"),
    ]
    if hasattr(os, "mkfifo"):
        cases.append(Case("scenario is a FIFO", base_files(), scenario="fifo.toml", setup=fifo))
        profile_fifo = copy.deepcopy(SCENARIO)
        profile_fifo["profile"] = "fifo.toml"
        cases.append(Case("profile is a FIFO", base_files(profile_fifo), setup=fifo))
    return cases


def write_case(root: Path, case: Case) -> None:
    root.mkdir()
    for name, content in case.files.items():
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "keep").mkdir()  # a non-run folder with content, for --out keep
    (root / "keep" / "data.txt").write_text("user data")
    if case.setup is not None:
        case.setup(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in root.rglob("*")
        if p.is_file() or p.is_dir()
    }


def all_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = scenario_leaf_cases(rng) + scenario_shape_cases(rng) + profile_cases(rng)
    cases += trace_cases(rng) + flag_cases(rng) + special_file_cases()
    cases.append(Case("--out keep (a folder of user data)", base_files(), ["--out", "keep"]))
    cases.append(Case("--out keep --force", base_files(), ["--out", "keep", "--force"]))
    return cases


def argv_of(case: Case) -> list[str]:
    """The case's command line, relative to its folder (the working directory)."""
    out = [] if "--out" in case.args else ["--out", "out"]
    return ["run", case.scenario, *out, "--quiet", "--jobs", "1", *case.args]


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = int(exit_info.code or 0)
    return code, capsys.readouterr().err


def test_every_generated_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = all_cases()
    assert len(cases) >= 200
    failures = []
    for index, case in enumerate(cases):
        root = tmp_path / f"case{index}"
        write_case(root, case)
        monkeypatch.chdir(root)  # `--out .` and relative names mean the case's folder
        before = snapshot(root)
        code, err = run_in_process(argv_of(case), capsys)
        lines = err.splitlines()
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if len(lines) != 1 or "Traceback" in err or not lines[0].startswith("pipesd"):
            problems.append(f"stderr {err[:300]!r}")
        if snapshot(root) != before:
            problems.append("files changed")
        if problems:
            failures.append(f"{case.name}: {', '.join(problems)}")
        shutil.rmtree(root, ignore_errors=True)
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder of the base scenario (damaged copies of it are resumed)."""
    root = tmp_path_factory.mktemp("finished")
    for name, content in base_files().items():
        (root / name).write_text(content if isinstance(content, str) else content.decode())
    assert (
        main(
            [
                "run",
                str(root / "scenario.toml"),
                "--out",
                str(root / "out"),
                "--quiet",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    return root


DAMAGES: dict[str, Callable[[Path, random.Random], None]] = {
    "part cut": lambda out, rng: _edit_part(out, lambda t: t[: rng.randrange(1, len(t))]),
    "part bytes": lambda out, rng: _edit_part(out, lambda t: "\udcff" + t),
    "part field": lambda out, rng: _edit_part(out, lambda t: t.replace('"records"', '"recs"', 1)),
    "part type": lambda out, rng: _edit_part(out, lambda t: t.replace('"seed": ', '"seed": "x', 1)),
    "part other task": lambda out, rng: _edit_part(
        out, lambda t: t.replace('"seed": 1', '"seed": 9', 1)
    ),
    "manifest cut": lambda out, rng: _cut(out / "manifest.json", rng),
    "manifest list": lambda out, rng: (out / "manifest.json").write_text("[1]"),
    "manifest deep": lambda out, rng: (out / "manifest.json").write_text("[" * 100_000),
    "manifest gone": lambda out, rng: (out / "manifest.json").unlink(),
}


def _edit_part(out: Path, change: Callable[[str], str]) -> None:
    part = sorted((out / "parts").glob("*.json"))[0]
    part.write_bytes(change(part.read_text()).encode("utf-8", "surrogateescape"))


def _cut(path: Path, rng: random.Random) -> None:
    text = path.read_text()
    path.write_text(text[: rng.randrange(1, len(text))])


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_over_a_damaged_run_is_one_line(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    root = tmp_path / "root"
    shutil.copytree(finished_run, root)
    DAMAGES[damage](root / "out", random.Random(damage))
    before = snapshot(root)
    argv = ["run", str(root / "scenario.toml"), "--out", str(root / "out"), "--quiet", "--resume"]
    code, err = run_in_process(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "fresh --out" in err or "nothing to resume" in err or "not a run folder" in err, err
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("depth", "scenario_arg"),
    [
        pytest.param(200_000, "scenario.toml", id="deep TOML"),
        pytest.param(0, "/dev/zero", id="/dev/zero"),
        pytest.param(
            0,
            "fifo.toml",
            id="FIFO",
            marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform"),
        ),
    ],
)
def test_subprocess_no_traceback_no_hang(tmp_path: Path, depth: int, scenario_arg: str) -> None:
    scenario_text = "v = " + "[" * depth + "]" * depth + "\n" if depth else None
    if scenario_text is not None:
        (tmp_path / "scenario.toml").write_text(scenario_text)
    if scenario_arg == "fifo.toml":
        os.mkfifo(tmp_path / "fifo.toml")
    result = subprocess.run(
        [sys.executable, "-m", "pipesd.cli", "run", scenario_arg, "--out", "out", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
