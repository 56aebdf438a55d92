"""`pipesd revalidate`: a finished validation's real run (SOURCE/real) compared again with the
current simulator, from its manifest (scenario, overrides, profile); no testbed, no models."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calibrate.acceptance_check_cli import load_model
from calibrate.assemble import write_profile
from realrun.testbed import COMPUTE_FILES
from simulator.acceptance import ReplayTraces
from simulator.errors import ConfigError
from simulator.outdir import read_manifest
from simulator.profile import Profile, load_profile
from simulator.scenario import SweepPoint
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


def swapped_acceptance_profile(
    profile_path: Path,
    out_dir: Path,
    trace: Path | None,
    model: Path | None,
    order: str = "request",
) -> Path:
    """A copy of the profile at `profile_path` (OUT/profile.json) with its acceptance replaced.

    `trace`: replayed in request order (request r, sequence r); with the trace of the very
    prompts a real-acceptance run used, in its order, the comparison isolates the timing model
    from the acceptance model. With `order` "random", each request replays a random sequence
    (another prompt set, e.g. a model's fitting traces: the model-free prediction). `model`:
    an `acceptance-fit` model JSON, so any fitted model can be judged against a recorded
    testbed run. Files are named relative to the copy, so the folder can move with the
    repository."""
    loaded = load_profile(profile_path)
    data = loaded.profile.model_dump(mode="json")
    out_path = out_dir / "profile.json"
    rest = f"everything else as in {profile_path} (sha256 {loaded.sha256[:12]})"
    if trace is not None:
        if not trace.is_file():
            raise ConfigError("--replay-acceptance", str(trace), "trace file not found")
        relative = os.path.relpath(trace.resolve(), out_dir.resolve())
        data["acceptance"] = {"kind": "replay", "trace": relative, "order": order}
        note = (
            f"{trace} replayed in request order (request r, sequence r): the acceptance of the "
            f"run's own prompts, a diagnostic of the timing model, not a prediction; {rest}"
            if order == "request"
            else f"{trace} replayed, each request a random sequence; {rest}"
        )
        ReplayTraces.load(out_dir / relative)  # a bad trace: one line now, not mid-simulation
    else:
        assert model is not None
        data["acceptance"] = load_model(model).model_dump(mode="json")
        note = f"the fitted model {model} (sha256 {sha256(model)[:12]}); {rest}"
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
    validation = source / "validation.csv"
    origin = {
        "revalidated_from": {
            "path": str(source),
            "validation_sha256": sha256(validation) if validation.is_file() else None,
        }
    }
    draws = int(read_manifest(source / "manifest.json").get("acceptance_draws", 1))  # as SOURCE
    return simulate_and_compare(scenario, profile, points, out_dir, command, skipped, origin, draws)
