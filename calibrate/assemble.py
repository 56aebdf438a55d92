"""Calibration parts and the profile assembled from them.

Each `pipesd calibrate <part>` writes a part file: the fitted section of the profile (draft
latency, target latency, power, link or acceptance), its fit reports, the raw samples, and
where it was measured. `assemble` merges parts into a complete, validated profile; sections no
part measured are taken from a base profile and say so in the provenance notes.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from calibrate.fit_report import FitReport
from calibrate.noise import noise_notes
from simulator.errors import ConfigError, from_validation_error
from simulator.inputs import load_json
from simulator.profile import SCHEMA_VERSION, LoadedProfile, Profile, dump_profile
from simulator.results import write_atomic, write_json

PART_KINDS = ("draft", "target", "power", "link", "acceptance", "payload")
"""The parts a profile is calibrated from."""


class Part(BaseModel):
    """One measured part of a profile (the JSON a calibrate subcommand writes)."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    values: dict[str, Any]
    """Profile fields this part sets, by dotted path: {"draft_latency": {...},
    "payload.vocab_size": 49152, "models.draft": {...}}."""
    notes: dict[str, str]
    """Provenance note per dotted field, including each fit's report line."""
    reports: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    machine: dict[str, str] = {}
    versions: dict[str, str] = {}
    command: str = ""
    created: str = ""


def machine_info() -> dict[str, str]:
    """What the measurement ran on: CPU model, cores, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or 0),
        "os": platform.platform(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def report_dict(report: FitReport) -> dict[str, Any]:
    """A fit report as JSON-ready data (NaN as None)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(report).items()}


def new_part(
    kind: str,
    values: dict[str, Any],
    notes: dict[str, str],
    reports: dict[str, FitReport],
    samples: dict[str, list[dict[str, Any]]],
    versions: dict[str, str],
    command: str,
) -> Part:
    """A part stamped with this machine and the current time."""
    if kind not in PART_KINDS:
        raise ValueError(f"part kind must be one of {', '.join(PART_KINDS)} (got {kind!r})")
    all_notes = dict(notes)
    for name, report in reports.items():
        all_notes[f"{kind}.fit.{name}"] = report.note()
    all_notes.update(noise_notes(kind, samples))  # beside each fit: its measurement noise
    return Part(
        kind=kind,
        values=values,
        notes=all_notes,
        reports={name: report_dict(r) for name, r in reports.items()},
        samples=samples,
        machine=machine_info(),
        versions=versions,
        command=command,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def save_part(part: Part, path: Path) -> None:
    """Write a part file atomically."""
    write_json(path, part.model_dump(mode="json"))


def load_part(path: Path) -> Part:
    """Read a part file; bad input raises ConfigError."""
    data, _ = load_json(path, "calibration part", finite=False)  # regular, bounded file
    try:
        part = Part.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(path, exc, Part) from None
    if part.kind not in PART_KINDS:
        raise ConfigError(path, "kind", f"unknown part {part.kind!r} (allowed: {PART_KINDS})")
    return part


def assemble(name: str, parts: list[Part], base: LoadedProfile, command: str) -> Profile:
    """A profile from measured parts, the rest from `base` (noted as such)."""
    data = base.profile.model_dump(mode="json")
    base_notes = data["provenance"]["notes"]
    notes: dict[str, str] = {}
    measured: list[str] = []
    machines: dict[str, str] = {}
    versions: dict[str, str] = {}
    for part in parts:
        for dotted, value in part.values.items():
            *parents, last = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[last] = value
            measured.append(dotted)
        notes.update(part.notes)
        for key, value in part.machine.items():
            machines[f"{part.kind}.{key}"] = value
        versions.update(part.versions)
    sections = {m.split(".")[0] for m in measured}
    for field in ("draft_latency", "target_latency", "power", "link", "acceptance", "payload"):
        if field not in sections:
            notes[field] = f"NOT MEASURED: taken from base profile {base.path.name}"
    for key, note in base_notes.items():
        covered = any(key == m or key.startswith(m + ".") for m in measured)
        if not covered and key not in notes:
            notes[key] = f"NOT MEASURED, from {base.path.name}: {note}"
    data["name"] = name
    data["schema_version"] = SCHEMA_VERSION
    data["provenance"] = {
        "source": (
            f"measured: {', '.join(measured) or 'nothing'}; "
            f"from base profile {base.path.name}: the rest (see notes)"
        ),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machines,
        "versions": versions,
        "notes": notes,
    }
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(name, exc, Profile) from None


def write_profile(profile: Profile, path: Path) -> None:
    """Write a profile atomically, in the canonical form `load_profile` reads back."""
    write_atomic(path, dump_profile(profile))
