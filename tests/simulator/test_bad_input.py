"""Bad input through the real CLI: exit code 2 and one line naming file, field and allowed values.

Every case builds its own copy of a small valid scenario and profile in tmp_path, breaks one
thing, runs `pipesd run` and checks the single stderr line. A few cases go through a
subprocess to prove the exit code and that no traceback reaches the user.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipesd.cli import main
from policies.registry import policy_names

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = REPO / "scenarios" / "profiles" / "default.json"
POLICY_NAMES = ", ".join(policy_names())

BASE = """\
name = "small"
profile = "profile.json"
seeds = [1]
reference_policy = "vanilla"

[edge]
compute_factor = 1.0

[link]
uplink_mbps = 20.0
downlink_mbps = 200.0

[prompts]
count = 2
prompt_len = 32
max_new_tokens = 16

[payload]
kind = "full"

[[policies]]
name = "vanilla"

[[policies]]
name = "pipesd"
autotune = false
"""

GOOD_TRACE = "t_s,mbps\n0,20\n5,10\n"
GOOD_REPLAY = "sequence,position,confidence,accepted\n0,0,0.9,1\n0,1,0.4,0\n"


def edit(old: str, new: str) -> str:
    """BASE with one exact piece of text replaced."""
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def profile_with(change: Callable[[dict[str, Any]], None]) -> str:
    """The default profile's JSON text after `change` mutated it."""
    data = json.loads(DEFAULT_PROFILE.read_text())
    change(data)
    return json.dumps(data)


def _set(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for part in parents:
            data = data[part]
        data[last] = value

    return change


def _drop(dotted: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for part in parents:
            data = data[part]
        del data[last]

    return change


UPLINK_TRACE = edit("uplink_mbps = 20.0", 'uplink_trace = "up.csv"')
REPLAY = BASE + '\n[acceptance]\nkind = "replay"\ntrace = "replay.csv"\n'
JITTER = edit("uplink_mbps = 20.0", 'uplink_mbps = 20.0\nuplink_jitter = "jitter.csv"')


@dataclass(frozen=True)
class Case:
    """One kind of bad input: the scenario text, extra files, CLI arguments, expected words."""

    scenario: str = BASE
    files: dict[str, str | bytes] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    # the scenario file itself
    "toml-syntax": Case(
        edit("count = 2", "count = = 2"), expect=("scenario.toml", "not valid TOML", "line 14")
    ),
    "toml-not-utf8": Case(
        files={"scenario.toml": b"\xff\xfename = 1\n"}, expect=("scenario.toml", "not valid TOML")
    ),
    "unknown-top-level-field": Case(
        'colour = "red"\n' + BASE,
        expect=("scenario.toml", "colour: unknown field (allowed: acceptance, ", "prompts"),
    ),
    "unknown-link-field": Case(
        edit("downlink_mbps = 200.0", "downlink_mbps = 200.0\nuplnk_mbps = 3.0"),
        expect=("link.uplnk_mbps: unknown field", "allowed: burst_bytes", "uplink_mbps"),
    ),
    "string-for-number": Case(
        edit("uplink_mbps = 20.0", 'uplink_mbps = "fast"'),
        expect=("link.uplink_mbps", "valid number", "'fast'"),
    ),
    "numeric-string-not-coerced": Case(
        edit("uplink_mbps = 20.0", 'uplink_mbps = "20"'),
        expect=("link.uplink_mbps", "valid number", "'20'"),
    ),
    "negative-bandwidth": Case(
        edit("uplink_mbps = 20.0", "uplink_mbps = -5.0"),
        expect=("link.uplink_mbps", "greater than or equal to 0.000001", "-5.0"),
    ),
    "infinite-latency": Case(
        edit("downlink_mbps = 200.0", "downlink_mbps = 200.0\none_way_latency_s = inf"),
        expect=("link.one_way_latency_s", "finite", "inf"),
    ),
    "compute-factor-zero": Case(
        edit("compute_factor = 1.0", "compute_factor = 0"),
        expect=("edge.compute_factor", "greater than or equal to 0.000001", "got 0"),
    ),
    "max-new-tokens-one": Case(
        edit("max_new_tokens = 16", "max_new_tokens = 1"),
        expect=("prompts.max_new_tokens", "greater than or equal to 2", "got 1"),
    ),
    "negative-seed": Case(
        edit("seeds = [1]", "seeds = [-1]"),
        expect=("seeds[0]", "greater than or equal to 0", "-1"),
    ),
    "missing-required-section": Case(
        edit("[prompts]\ncount = 2\nprompt_len = 32\nmax_new_tokens = 16\n", ""),
        expect=("scenario.toml", "prompts: required field is missing"),
    ),
    "unknown-payload-kind": Case(
        edit('kind = "full"', 'kind = "probs"'),
        expect=("payload.kind", "'token_id', 'token_prob', 'topk' or 'full'", "'probs'"),
    ),
    "unknown-acceptance-kind": Case(
        BASE + '\n[acceptance]\nkind = "magic"\n',
        expect=("acceptance.kind", "'magic'", "allowed: 'iid', 'calibrated', 'replay'"),
    ),
    "misspelt-acceptance-field": Case(
        BASE + '\n[acceptance]\nkind = "iid"\nrat = 0.5\n',
        expect=("acceptance.rat: unknown field", "allowed: confidence, kind, rate"),
    ),
    # policies
    "unknown-policy-name": Case(
        edit('name = "pipesd"', 'name = "pipesdx"'),
        expect=("policies[1].name", "'pipesdx'", f"allowed: {POLICY_NAMES}"),
    ),
    "policy-without-name": Case(
        edit('name = "vanilla"', 'label = "vanilla"'),
        expect=("policies[0].name", "required field is missing", f"allowed: {POLICY_NAMES}"),
    ),
    "unknown-policy-parameter": Case(
        edit("autotune = false", "autotune = false\nr3 = 0.5"),
        expect=("policies.pipesd.r3: unknown field", "allowed: autotune", "r1, r2"),
    ),
    "vanilla-draft-len-zero": Case(
        edit('name = "vanilla"', 'name = "vanilla"\ndraft_len = 0'),
        expect=("policies.vanilla.draft_len", "greater than or equal to 1", "got 0"),
    ),
    "pipesd-r1-above-one": Case(
        edit("autotune = false", "autotune = false\nr1 = 1.5"),
        expect=("policies.pipesd.r1", "less than or equal to 1", "1.5"),
    ),
    "pipesd-bad-tune-range": Case(
        edit("autotune = false", "autotune = false\ntune_r1_range = [0.5, 0.1]"),
        expect=("policies.pipesd", "tune_r1_range must satisfy 0 < low < high <= 1"),
    ),
    "duplicate-label": Case(
        edit('name = "pipesd"', 'name = "pipesd"\nlabel = "vanilla"'),
        expect=("policies[1].label", "duplicate label 'vanilla'"),
    ),
    "reference-policy-not-a-label": Case(
        edit('reference_policy = "vanilla"', 'reference_policy = "cloud_ar"'),
        expect=("reference_policy", "'cloud_ar'", "allowed: vanilla, pipesd"),
    ),
    # the profile
    "profile-missing": Case(
        edit('profile = "profile.json"', 'profile = "nope.json"'),
        expect=("scenario.toml", "profile: profile file 'nope.json' not found"),
    ),
    "profile-not-json": Case(
        files={"profile.json": "{not json"}, expect=("profile.json", "not valid JSON")
    ),
    "profile-schema-version": Case(
        files={"profile.json": profile_with(_set("schema_version", 2))},
        expect=("profile.json", "schema_version", "unsupported value 2", "allowed: 1"),
    ),
    "profile-missing-field": Case(
        files={"profile.json": profile_with(_drop("draft_latency.decode_base_s"))},
        expect=("profile.json", "draft_latency.decode_base_s: required field is missing"),
    ),
    "profile-negative-latency": Case(
        files={"profile.json": profile_with(_set("link.one_way_latency_s", -0.01))},
        expect=("profile.json", "link.one_way_latency_s", "greater than or equal to 0", "-0.01"),
    ),
    "profile-bad-confidence": Case(
        files={"profile.json": profile_with(_set("acceptance.confidence.a", -1))},
        expect=("profile.json", "acceptance.confidence.a", "greater than 0", "-1"),
    ),
    # bandwidth traces
    "trace-missing": Case(
        UPLINK_TRACE, expect=("scenario.toml", "link.uplink_trace: trace file 'up.csv' not found")
    ),
    "trace-bad-header": Case(
        UPLINK_TRACE,
        files={"up.csv": "time,rate\n0,20\n"},
        expect=("up.csv", "header", "trace needs columns t_s, mbps"),
    ),
    "trace-t-not-increasing": Case(
        UPLINK_TRACE,
        files={"up.csv": "t_s,mbps\n0,20\n5,10\n5,30\n"},
        expect=("up.csv", "line 4", "t_s must increase strictly"),
    ),
    "trace-non-positive-mbps": Case(
        UPLINK_TRACE,
        files={"up.csv": "t_s,mbps\n0,20\n5,-2\n"},
        expect=("up.csv", "line 3", "mbps must be in [1e-06, 1e+06]", "-2"),
    ),
    "trace-not-utf8": Case(
        UPLINK_TRACE, files={"up.csv": b"\xff\xfet_s,mbps\n"}, expect=("up.csv", "not a CSV")
    ),
    # uplink jitter samples
    "jitter-missing": Case(
        JITTER, expect=("scenario.toml", "link.uplink_jitter: jitter file 'jitter.csv' not found")
    ),
    "jitter-bad-header": Case(
        JITTER,
        files={"jitter.csv": "delay\n0.001\n"},
        expect=("jitter.csv", "header", "uplink jitter needs a column jitter_s"),
    ),
    "jitter-not-a-number": Case(
        JITTER,
        files={"jitter.csv": "jitter_s\n0.001\nfast\n"},
        expect=("jitter.csv", "line 3", "jitter_s must be a number"),
    ),
    "jitter-not-finite": Case(
        JITTER,
        files={"jitter.csv": "jitter_s\n0.001\ninf\n"},
        expect=("jitter.csv", "line 3", "jitter_s must be in [-60, 60]", "inf"),
    ),
    "jitter-no-rows": Case(
        JITTER, files={"jitter.csv": "jitter_s\n"}, expect=("jitter.csv", "holds no rows")
    ),
    # replayed acceptance traces
    "replay-missing": Case(REPLAY, expect=("scenario.toml", "acceptance.trace", "'replay.csv'")),
    "replay-missing-columns": Case(
        REPLAY,
        files={"replay.csv": "sequence,position\n0,0\n"},
        expect=("replay.csv", "header", "missing columns ['accepted', 'confidence']"),
    ),
    "replay-short-row": Case(
        REPLAY,
        files={"replay.csv": GOOD_REPLAY + "0,2\n"},
        expect=("replay.csv", "line 4", "not numbers"),
    ),
    "replay-bad-accepted": Case(
        REPLAY,
        files={"replay.csv": GOOD_REPLAY + "0,2,0.5,maybe\n"},
        expect=("replay.csv", "line 4", "accepted must be one of 1, true", "'maybe'"),
    ),
    # --set, --sweep, [sweep], --policies
    "set-without-equals": Case(
        args=("--set", "link.uplink_mbps"), expect=("--set", "link.uplink_mbps", "key=value")
    ),
    "set-unknown-label": Case(
        args=("--set", "policies.nope.r1=0.3"),
        expect=("--set", "policies.nope.r1", "'nope'", "allowed: vanilla, pipesd"),
    ),
    "set-invalid-value": Case(
        args=("--set", "link.uplink_mbps=-3"),
        expect=("--set", "link.uplink_mbps", "greater than or equal to 0.000001", "-3"),
    ),
    "set-unknown-field": Case(
        args=("--set", "link.foo=3"),
        expect=("--set", "link.foo: unknown field", "allowed: burst_bytes"),
    ),
    "sweep-flag-empty": Case(
        args=("--sweep", "link.uplink_mbps="),
        expect=("--sweep", "link.uplink_mbps", "at least one value"),
    ),
    "sweep-flag-invalid-value": Case(
        args=("--sweep", "link.uplink_mbps=10,-1"),
        expect=("--sweep", "link.uplink_mbps", "greater than or equal to 0.000001", "-1"),
    ),
    "sweep-axis-not-a-list": Case(
        BASE + '\n[sweep]\n"link.uplink_mbps" = 10\n',
        expect=("scenario.toml", "sweep.link.uplink_mbps", "non-empty list"),
    ),
    "sweep-value-invalid": Case(
        BASE.replace("[[policies]]", '[sweep]\n"link.uplink_mbps" = [10, -1]\n\n[[policies]]', 1),
        expect=(
            "scenario.toml",
            "sweep.link.uplink_mbps",
            "greater than or equal to 0.000001",
            "-1",
        ),
    ),
    "sweep-policy-value-invalid": Case(
        BASE.replace("[[policies]]", '[sweep]\n"policies.pipesd.r1" = [0.3, 0]\n\n[[policies]]', 1),
        expect=("scenario.toml", "sweep.policies.pipesd.r1", "greater than 0"),
    ),
    "policies-unknown-label": Case(
        args=("--policies", "nope"), expect=("--policies", "'nope'", "allowed: pipesd, vanilla")
    ),
    "policies-no-label": Case(args=("--policies", ","), expect=("--policies", "no label given")),
    "out-is-a-file": Case(args=("--out", "profile.json"), expect=("--out", "'profile.json'")),
    # issue 17: non-finite and absurd numbers, strict profile types, nesting, flags
    "nan-in-a-policy-parameter": Case(
        edit("autotune = false", "autotune = false\ninitial_alpha_s = nan"),
        expect=("scenario.toml", "policies[1].initial_alpha_s", "must be a finite number"),
    ),
    "latency-above-a-day": Case(
        edit("downlink_mbps = 200.0", "downlink_mbps = 200.0\none_way_latency_s = 1e308"),
        expect=("link.one_way_latency_s", "less than or equal to 86400"),
    ),
    "scenario-nested-too-deep": Case(
        BASE + "\n[deep]\nv = " + "[" * 5000 + "]" * 5000 + "\n",
        expect=("scenario.toml", "nested more than 32 levels deep"),
    ),
    "probe-sizes-empty": Case(
        edit("autotune = false", "autotune = false\nprobe_sizes = []"),
        expect=("policies.pipesd.probe_sizes", "at least 1 item"),
    ),
    "profile-string-for-number": Case(
        files={"profile.json": profile_with(_set("link.uplink_mbps", "20"))},
        expect=("profile.json", "link.uplink_mbps", "valid number", "'20'"),
    ),
    "profile-bool-for-number": Case(
        files={"profile.json": profile_with(_set("draft_latency.decode_base_s", True))},
        expect=("profile.json", "draft_latency.decode_base_s", "valid number", "True"),
    ),
    "profile-nan-anywhere": Case(
        files={"profile.json": profile_with(_set("provenance.notes", {"x": float("nan")}))},
        expect=("profile.json", "provenance.notes.x", "must be a finite number (got nan)"),
    ),
    "trace-bandwidth-absurd": Case(
        UPLINK_TRACE,
        files={"up.csv": "t_s,mbps\n0,1e308\n"},
        expect=("up.csv", "line 2", "mbps must be in [1e-06, 1e+06]", "1e+308"),
    ),
    "set-inf": Case(
        args=("--set", "policies.pipesd.initial_alpha_s=inf"),
        expect=("--set", "policies.pipesd.initial_alpha_s", "must be a finite number (got inf)"),
    ),
    "set-sibling-field-blames-the-flag": Case(
        args=("--set", 'acceptance.kind="replay"'),
        expect=("--set", "acceptance.kind", "acceptance.trace: required field is missing"),
    ),
    "sweep-too-many-points": Case(
        args=(
            "--sweep",
            "seeds=" + ",".join(f"[{i}]" for i in range(101)),
            "--sweep",
            "link.uplink_mbps=" + ",".join(str(i + 1) for i in range(100)),
        ),
        expect=("10100 sweep points", "at most 10000"),
    ),
    "out-holds-user-files": Case(
        files={"mine/parts/keep.json": "{}"},
        args=("--out", "mine", "--force"),
        expect=("--out", "'mine' is not empty and is not a run folder"),
    ),
}


def make_case(root: Path, case: Case) -> Path:
    """Write the case's scenario, the default profile and its files; return the scenario path."""
    (root / "profile.json").write_text(DEFAULT_PROFILE.read_text())
    scenario = root / "scenario.toml"
    scenario.write_text(case.scenario)
    for name, content in case.files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return scenario


def cli_args(root: Path, scenario: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """`run SCENARIO --out OUT --quiet` plus extra flags (a later --out wins)."""
    return ["run", str(scenario), "--out", str(root / "out"), "--quiet", *extra]


def assert_one_error_line(stderr: str, expect: tuple[str, ...]) -> None:
    """stderr is exactly one `pipesd: error:` line holding every expected piece of text."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pipesd: error: "), stderr
    assert "Traceback" not in stderr
    for text in expect:
        assert text in lines[0], f"{text!r} missing from {lines[0]!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    scenario = make_case(tmp_path, case)
    monkeypatch.chdir(tmp_path)  # so `--out profile.json` means the profile copy here
    code = main(cli_args(tmp_path, scenario, case.args))
    captured = capsys.readouterr()
    assert code == 2
    assert_one_error_line(captured.err, case.expect)
    assert not (tmp_path / "out").exists(), "bad input must fail before anything is written"


def test_missing_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    code = main(cli_args(tmp_path, missing))
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, (str(missing), "cannot read scenario"))


def test_usage_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = make_case(tmp_path, Case())
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(scenario)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "pipesd run: error: the following arguments are required: --out (see pipesd run --help)"
    ]


@pytest.mark.parametrize(
    ("case", "scenario_arg"),
    [
        pytest.param(
            Case(expect=("missing.toml", "cannot read scenario")),
            "missing.toml",
            id="missing-scenario",
        ),
        pytest.param(CASES["trace-non-positive-mbps"], "scenario.toml", id="bad-trace"),
        pytest.param(CASES["sweep-value-invalid"], "scenario.toml", id="bad-sweep-value"),
        pytest.param(CASES["toml-not-utf8"], "scenario.toml", id="scenario-not-utf8"),
    ],
)
def test_subprocess_exit_code_and_no_traceback(
    case: Case, scenario_arg: str, tmp_path: Path
) -> None:
    make_case(tmp_path, case)
    result = subprocess.run(
        [sys.executable, "-m", "pipesd.cli", "run", scenario_arg, "--out", "out", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert_one_error_line(result.stderr, case.expect)
    assert result.stdout == ""


def _summary_tpt(out: Path) -> dict[str, float]:
    with (out / "summary.csv").open(newline="") as handle:
        return {row["policy"]: float(row["tpt_ms"]) for row in csv.DictReader(handle)}


def test_valid_set_changes_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = make_case(tmp_path, Case())
    base_out, slow_out = tmp_path / "base", tmp_path / "slow"
    assert main(["run", str(scenario), "--out", str(base_out), "--quiet"]) == 0
    args = ["run", str(scenario), "--out", str(slow_out), "--quiet"]
    assert main([*args, "--set", "link.uplink_mbps=10"]) == 0
    assert capsys.readouterr().err == ""
    base, slow = _summary_tpt(base_out), _summary_tpt(slow_out)
    assert set(base) == set(slow) == {"vanilla", "pipesd"}
    for label in base:
        assert slow[label] > base[label], label  # half the uplink: slower tokens
    manifest = json.loads((slow_out / "manifest.json").read_text())
    assert manifest["scenario"]["resolved"]["link"]["uplink_mbps"] == 10


def test_trace_and_replay_files_that_are_fine_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checks above reject only bad files: good traces and replays still run."""
    scenario_text = UPLINK_TRACE + '\n[acceptance]\nkind = "replay"\ntrace = "replay.csv"\n'
    case = Case(scenario_text, files={"up.csv": GOOD_TRACE, "replay.csv": GOOD_REPLAY})
    scenario = make_case(tmp_path, case)
    assert main(cli_args(tmp_path, scenario)) == 0
    assert capsys.readouterr().err == ""
    assert set(_summary_tpt(tmp_path / "out")) == {"vanilla", "pipesd"}


def test_run_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--set", "--sweep", "--out"):
        assert flag in out
