"""Output folders: a command writes only into a new or empty folder, or into one it wrote itself.

A run folder is recognised by its `manifest.json`, which names the command that wrote it
(`kind`: "run", "realrun local", "validate", ...; manifests older than that field are
recognised by their recorded command line). `claim_out_dir` is the one gate every command that
writes an --out folder goes through before it writes or clears anything:

- a missing folder is created, an empty one is taken;
- a non-empty folder that is not a run folder of this command is refused, with or without
  --force: nothing the command did not create is ever deleted or overwritten;
- a previous run folder of this command is replaced only with --force, or continued with
  --resume where the command supports it;
- an empty path, a path that is a file, or a folder that cannot be read or created is refused.

On success the folder holds a stub manifest of this kind (unless resumed), so even a run
interrupted before its first result is recognised as this command's folder afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError
from simulator.results import write_json

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""A manifest larger than this is not one of ours (run manifests are kilobytes)."""


def out_dir_arg(text: str) -> Path:
    """argparse `type=` for --out: refuses an empty path (it would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (give a folder to write into)")
    return Path(text)


def command_kind(command: Any) -> str | None:
    """The command kind of a recorded command line: `pipesd run ...` -> "run",
    `pipesd realrun local ...` -> "realrun local"; None when it is not a pipesd command."""
    if isinstance(command, str):
        words = command.split()
    elif isinstance(command, list) and all(isinstance(word, str) for word in command):
        words = command
    else:
        return None
    if len(words) < 2 or Path(words[0]).name != "pipesd":
        return None
    if words[1] in ("realrun", "calibrate") and len(words) > 2:
        return f"{words[1]} {words[2]}"
    return words[1]


def manifest_kind(data: Any) -> str | None:
    """The command kind a manifest says wrote its folder (None: not a run manifest)."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if isinstance(kind, str) and kind:
        return kind
    return command_kind(data.get("command"))


def read_manifest(path: Path) -> dict[str, Any]:
    """A run folder's manifest as a dict; one-line ConfigError naming the file when it is
    missing, not a regular file, too large, not JSON or not an object."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(path, "", "not a regular file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise ConfigError(path, "", f"larger than {MAX_MANIFEST_BYTES} bytes: not a manifest")
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(path, "", f"damaged: not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "damaged: not a JSON object")
    return data


def claim_out_dir(
    out: Path,
    kind: str,
    *,
    force: bool = False,
    resume: bool = False,
    command: Sequence[str] = (),
    flag: str = "--out",
    resumable: bool = False,
) -> bool:
    """Check that command `kind` may write into `out` (see the module docstring), create it,
    and mark it with a stub manifest. Bad paths raise a one-line ConfigError naming `flag`.
    Returns whether this call created the folder (see `release_out_dir`)."""
    if not str(out).strip():
        raise ConfigError(flag, "", "must not be empty (give a folder to write into)")
    shown = repr(str(out))
    try:
        info = out.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise ConfigError(flag, "", f"cannot use {shown} ({exc.strerror})") from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise ConfigError(flag, "", f"{shown} exists and is not a folder")
    if info is None or _is_empty(out, flag):
        if resume:
            raise ConfigError(flag, "", f"nothing to resume in {shown} (no {MANIFEST})")
    else:
        _check_previous_run(out, kind, force, resume, flag, resumable)
        if resume:
            return False
    created = info is None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(flag, "", f"cannot create folder {shown} ({exc.strerror})") from None
    stub = {
        "kind": kind,
        "status": "starting",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": list(command),
    }
    try:
        write_json(out / MANIFEST, stub)
    except OSError as exc:
        raise ConfigError(flag, "", f"cannot write into {shown} ({exc.strerror})") from None
    return created


def release_out_dir(out: Path, created: bool) -> None:
    """Undo `claim_out_dir` when the command failed before writing anything: remove the stub
    manifest (and the folder, if the claim created it) so the user's next try starts clean."""
    try:
        names = [entry.name for entry in os.scandir(out)]
        if names != [MANIFEST] or read_manifest(out / MANIFEST).get("status") != "starting":
            return
        (out / MANIFEST).unlink()
        if created:
            out.rmdir()
    except (OSError, ConfigError):
        return


def _is_empty(out: Path, flag: str) -> bool:
    try:
        with os.scandir(out) as entries:
            return next(entries, None) is None
    except OSError as exc:
        raise ConfigError(flag, "", f"cannot read folder {str(out)!r} ({exc.strerror})") from None


def _check_previous_run(
    out: Path, kind: str, force: bool, resume: bool, flag: str, resumable: bool
) -> None:
    """Refuse a non-empty `out` unless it is a run folder of `kind` and --force or --resume
    says what to do with it."""
    shown = repr(str(out))
    path = out / MANIFEST
    try:
        found = manifest_kind(read_manifest(path))
    except ConfigError as exc:
        if resume:
            raise ConfigError(
                path, "", f"{exc.problem}; cannot resume from it: start a fresh {flag}"
            ) from None
        found = None
    if found is None:
        raise ConfigError(
            flag,
            "",
            f"{shown} is not empty and is not a run folder (no {MANIFEST} of a pipesd "
            "command): choose a new or empty folder; nothing there was changed",
        )
    if found != kind:
        raise ConfigError(
            flag,
            "",
            f"{shown} holds the output of `pipesd {found}`, not `pipesd {kind}`: choose "
            "another folder; nothing there was changed",
        )
    if not (force or resume):
        raise ConfigError(
            flag,
            "",
            f"{shown} holds the results of an earlier `pipesd {kind}`: give --force to replace them"
            + (", --resume to continue that run" if resumable else "")
            + " or choose a new folder",
        )


def check_out_file(path: Path, flag: str = "--out") -> None:
    """Refuse an output file path of the wrong kind before anything is measured or written:
    empty, an existing folder, FIFO or device, or a path whose parent is a file."""
    if not str(path).strip():
        raise ConfigError(flag, "", "must not be empty (give a file to write)")
    shown = repr(str(path))
    for candidate in (path, *path.parents):
        try:
            info = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(flag, "", f"cannot use {shown} ({exc.strerror})") from None
        if candidate == path and not stat.S_ISREG(info.st_mode):
            raise ConfigError(flag, "", f"{shown} exists and is not a regular file")
        if candidate != path and not stat.S_ISDIR(info.st_mode):
            raise ConfigError(flag, "", f"{shown}: {str(candidate)!r} is not a folder")
        if candidate != path:
            return


def check_side_folder(folder: Path, names: Sequence[str], flag: str = "--out") -> None:
    """Refuse a folder a command fills beside its output file (`calibrate all`'s OUT.parts/)
    unless it is new, or holds nothing but files of `names` (what the command writes there)."""
    shown = repr(str(folder))
    try:
        info = folder.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(flag, "", f"cannot use {shown} ({exc.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(flag, "", f"{shown} exists and is not a folder")
    try:
        others = sorted(entry.name for entry in os.scandir(folder) if entry.name not in names)
    except OSError as exc:
        raise ConfigError(flag, "", f"cannot read folder {shown} ({exc.strerror})") from None
    if others:
        raise ConfigError(
            flag, "", f"{shown} holds files this command does not write ({others[0]!r}): choose "
            "another --out; nothing there was changed"
        )  # fmt: skip
