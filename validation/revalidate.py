"""`pipesd revalidate`: a finished validation's real run (SOURCE/real) compared again with the
current simulator, from its manifest (scenario, overrides, profile); no testbed, no models."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibrate.acceptance_check_cli import load_model, trace_sequences
from calibrate.acceptance_crossval import write_replay_csv
from calibrate.acceptance_folds import family_sequences
from calibrate.acceptance_hmm import Pair
from calibrate.acceptance_trace import read_provenance
from calibrate.assemble import write_profile
from models.prompts import family_prompts
from realrun.testbed import COMPUTE_FILES
from simulator.acceptance import ReplayTraces
from simulator.acceptance_spec import ByRequestAcceptance
from simulator.errors import ConfigError
from simulator.outdir import read_manifest
from simulator.profile import Profile, load_profile
from simulator.scenario import SweepPoint
from simulator.scenario_sections import PromptsSection
from validation.validate import sha256, simulate_and_compare

REAL_FILES = ("summary.csv", "results.csv", "speeds.csv", "manifest.json", *COMPUTE_FILES.values())
"""What `revalidate` reads of a validation's real side (speeds.csv only where it was timed,
the compute traces only where they were recorded)."""


def command_options(command: Sequence[str], flag: str) -> list[str]:
    """The values given to `flag` (`--set`, `--sweep`) in a recorded command line."""
    values = []
    for i, word in enumerate(command):
        if word == flag and i + 1 < len(command):
            values.append(command[i + 1])
        elif word.startswith(flag + "="):
            values.append(word[len(flag) + 1 :])
    return values


def validation_source(
    source: Path, scenario_file: Path | None = None
) -> tuple[dict[str, Any], Path, Path | None]:
    """A finished validation folder's manifest, the scenario its real run used and the profile
    it simulated (None where it is no longer where the manifest says); one-line ConfigError
    for a folder that is not one, or whose scenario changed since. `scenario_file`: the
    scenario at another path (a kept copy of a scenario edited since), with the same sha256."""
    manifest_path = source / "manifest.json"
    if not manifest_path.exists():
        raise ConfigError(str(source), "", "no manifest.json: not a validation folder")
    manifest = read_manifest(manifest_path)  # a regular, bounded JSON object, else one line
    try:
        scenario = Path(manifest["scenario"]["path"])
        scenario_hash = manifest["scenario"]["sha256"]
        profile_hash = manifest["profile"]["sha256"]
        if not isinstance(manifest["command"], list):
            raise TypeError("command is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(str(manifest_path), "", f"not a validation manifest ({exc})") from None
    missing = [f"real/{name}" for name in REAL_FILES[:2] if not (source / "real" / name).is_file()]
    if missing:
        raise ConfigError(str(source), "", f"missing {', '.join(missing)}")
    if scenario_file is not None:
        scenario = scenario_file
    if not scenario.is_file():
        where = "--scenario" if scenario_file is not None else "scenario.path"
        raise ConfigError(str(manifest_path), where, f"{str(scenario)!r} not found")
    if sha256(scenario) != scenario_hash:
        raise ConfigError(
            str(scenario), "", "differs from the scenario the validation ran (its sha256 is not "
            "the manifest's): the real run is no longer the scenario's (--scenario: a kept copy)"
        )  # fmt: skip
    candidates = [source / "calibration" / "profile.json", Path(manifest["profile"]["path"])]
    profile = next((p for p in candidates if p.is_file() and sha256(p) == profile_hash), None)
    return manifest, scenario, profile


@dataclass(frozen=True)
class FittedModel:
    """A fitted acceptance model given on the command line: its file and what it holds."""

    path: Path
    acceptance: Any


def load_run_model(model: Path, prompts: PromptsSection) -> FittedModel:
    """The model at `model` (`acceptance-fit`'s or `acceptance-folds`'), checked against the
    run: per-request models must name the run's prompts in its request order (request r ran
    the split's prompt r), ConfigError otherwise, so no request is predicted by a model that
    saw its prompt or was meant for another."""
    acceptance = load_model(model, by_request=True)
    if not isinstance(acceptance, ByRequestAcceptance) or acceptance.prompt_ids is None:
        return FittedModel(model, acceptance)
    ran = [p.id for p in family_prompts(prompts.family, prompts.split)]
    if acceptance.prompt_ids != ran:
        raise ConfigError(
            model, "acceptance.prompt_ids", f"not the run's prompts ({prompts.family}/"
            f"{prompts.split} in order, request r its prompt r): fit the folds with --family "
            f"{prompts.family} --split {prompts.split}"
        )  # fmt: skip
    return FittedModel(model, acceptance)


REPLAY_FILE = "acceptance-replay.csv.gz"
"""OUT's replay trace when the given traces had to be put in the run's order or joined."""


@dataclass(frozen=True)
class Replay:
    """What `--replay-acceptance` replays: the traces given, a file to replay as it is or the
    sequences to write to OUT first, the order, and how the sequences were put in it."""

    given: list[Path]
    trace: Path | None
    sequences: list[Pair]
    order: str
    how: str


def _prompt_ids(trace: Path) -> list[str] | None:
    """The prompt ids a `calibrate traces` file records in order; None for other traces (a
    plain replay CSV, or one written by `write_replay_csv`)."""
    if not trace.name.endswith(".gz"):
        return None
    try:
        ids = read_provenance(trace).get("prompt_ids")
    except ConfigError:
        return None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def plan_replay(traces: Sequence[Path], order: str, prompts: PromptsSection) -> Replay:
    """In request order, traces that record their prompt ids (`calibrate traces`) are put in
    the run's order (request r, the split's prompt r), several files joined, unless the one
    file is in that order already; a single trace without ids is taken as in the run's order.
    In random order the files' sequences are joined as they are. Checked before OUT exists:
    a missing file or prompt is one line."""
    given = list(traces)
    for trace in given:
        if not trace.is_file():
            raise ConfigError("--replay-acceptance", str(trace), "file not found")
    recorded = [_prompt_ids(t) for t in given]
    if order == "request" and all(ids is not None for ids in recorded):
        ids, sequences = family_sequences(given, prompts.family, prompts.split)
        if len(given) == 1 and recorded[0] == ids:
            return Replay(given, given[0], [], order, "in the run's prompt order as recorded")
        how = f"put in the run's prompt order ({prompts.family}/{prompts.split}) by prompt id"
        return Replay(given, None, sequences, order, how)
    if order == "request" and len(given) > 1:
        raise ConfigError(
            "--replay-acceptance", " ".join(map(str, given)), "several traces replay in "
            "request order only when each records its prompt ids (`pipesd calibrate traces`)"
        )  # fmt: skip
    if len(given) == 1:
        ReplayTraces.load(given[0])  # a bad trace: one line now, not mid-simulation
        return Replay(given, given[0], [], order, "in file order")
    return Replay(given, None, trace_sequences(given), order, "joined in file order")


def swapped_acceptance_profile(
    profile_path: Path,
    out_dir: Path,
    replay: Replay | None,
    model: FittedModel | None,
) -> Path:
    """A copy of the profile at `profile_path` (OUT/profile.json) with its acceptance replaced.

    `replay` (`plan_replay`): traces replayed in request order (request r, the run's prompt
    r); with the traces of the very prompts a real-acceptance run used, the comparison isolates
    the timing model from the acceptance model. In "random" order each request replays a
    random sequence (another prompt set, e.g. a model's fitting traces: the model-free
    prediction). `model` (`load_run_model`): an `acceptance-fit` model, so any fitted model
    can be judged against a recorded testbed run, or `acceptance-folds`' per-request K-fold
    models (request r predicted by the model fitted without prompt r). Files are named
    relative to the copy, so the folder can move with the repository."""
    loaded = load_profile(profile_path)
    data = loaded.profile.model_dump(mode="json")
    out_path = out_dir / "profile.json"
    rest = f"everything else as in {profile_path} (sha256 {loaded.sha256[:12]})"
    if replay is not None:
        trace = replay.trace or write_replay_csv(replay.sequences, out_dir / REPLAY_FILE)
        relative = os.path.relpath(trace.resolve(), out_dir.resolve())
        data["acceptance"] = {"kind": "replay", "trace": relative, "order": replay.order}
        given = " ".join(map(str, replay.given))
        note = (
            f"{given} replayed in request order (request r, sequence r; {replay.how}): the "
            f"acceptance of the run's own prompts, a diagnostic of the timing model, not a "
            f"prediction; {rest}"
            if replay.order == "request"
            else f"{given} replayed ({replay.how}), each request a random sequence; {rest}"
        )
    else:
        assert model is not None
        data["acceptance"] = model.acceptance.model_dump(mode="json")
        note = f"the fitted model {model.path} (sha256 {sha256(model.path)[:12]}); {rest}"
    data["provenance"]["notes"]["acceptance"] = note
    write_profile(Profile.model_validate(data), out_path)
    return out_path


def revalidate(
    source: Path,
    scenario: Path,
    profile: Path,
    points: Sequence[SweepPoint],
    out_dir: Path,
    command: Sequence[str],
    skipped: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compare a finished validation's real run (SOURCE/real, copied to OUT/real) with the
    current simulator on `points` (its scenario, with `profile`): OUT/sim, validation.csv and
    manifest.json, as `run_validation` writes them."""
    (out_dir / "validation.csv").unlink(missing_ok=True)
    real = out_dir / "real"
    real.mkdir(parents=True, exist_ok=True)
    for name in REAL_FILES:
        if (source / "real" / name).is_file():
            shutil.copyfile(source / "real" / name, real / name)
    timelines = source / "real" / "timelines"
    if timelines.is_dir():  # their upload reports: the uplink jitter replayed (replay_jitter)
        shutil.copytree(timelines, real / "timelines", dirs_exist_ok=True)
    validation = source / "validation.csv"
    origin = {
        "revalidated_from": {
            "path": str(source),
            "validation_sha256": sha256(validation) if validation.is_file() else None,
        }
    }
    draws = int(read_manifest(source / "manifest.json").get("acceptance_draws", 1))  # as SOURCE
    return simulate_and_compare(scenario, profile, points, out_dir, command, skipped, origin, draws)
