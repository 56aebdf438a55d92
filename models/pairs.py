"""Same-tokenizer draft/target pairs built from one GGUF model by a recorded recipe.

A recipe is one or more steps joined by "+", applied in order to the target's file:

- `skip:10-19` drops the listed transformer blocks (ranges inclusive), `keep:0-9,25-29` keeps
  only the listed ones (`models.layer_skip`: kept blocks renumbered, final norm and head shared);
- `quant:Q4_0` re-quantises every weight with llama.cpp's quantiser (`models.quantize`).

e.g. `quant:Q4_0`, `skip:8-21`, `skip:10-19+quant:Q4_0`. `build_pair` writes the draft into the
models folder (`models.registry.models_dir`) as `<target stem>.<slug>.gguf`, with the recipe,
the source's SHA-256 and the command in its GGUF metadata (`pipesd.*` keys) and a JSON file
beside it (`<file>.json`: recipe, steps, sizes, checksums, versions, command). A file already
there is kept when its JSON records the same recipe and source; anything else at that path is
never overwritten (ValueError).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from models.layer_skip import parse_blocks, skip_layers_gguf, stamp_gguf
from models.quantize import FILE_TYPES, quantize_gguf
from simulator.provenance import package_versions

STEP_KINDS = ("skip", "keep", "quant")
"""Recipe step kinds."""


@dataclass(frozen=True, slots=True)
class Step:
    """One recipe step: its kind (`STEP_KINDS`) and argument (blocks or a file type)."""

    kind: str
    argument: str

    def slug(self) -> str:
        """A file-name-safe form of the step (e.g. "skip10-19", "q4_0")."""
        if self.kind == "quant":
            return self.argument.lower()
        return self.kind + self.argument.replace(",", "_")


def _bad(message: str) -> ValueError:
    return ValueError(f"pair recipe: {message}")


def parse_recipe(text: str) -> list[Step]:
    """The steps of a recipe string (module docstring); ValueError naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(f"empty recipe (e.g. quant:Q4_0, skip:10-19+quant:Q4_0; got {text!r})")
    steps = []
    for part in text.strip().split("+"):
        kind, sep, argument = part.strip().partition(":")
        if not sep or kind not in STEP_KINDS or not argument:
            raise _bad(
                f"step {part.strip()!r} must be <kind>:<argument> with kind one of "
                f"{', '.join(STEP_KINDS)} (e.g. skip:10-19, quant:Q4_0)"
            )
        if kind == "quant" and argument not in FILE_TYPES:
            raise _bad(f"unknown file type {argument!r} (allowed: {', '.join(FILE_TYPES)})")
        if kind != "quant":
            try:
                argument = _ranges(parse_blocks(argument))
            except ValueError as exc:
                raise _bad(str(exc).removeprefix("skip_layers_gguf: ")) from None
        steps.append(Step(kind, argument))
    return steps


def _ranges(blocks: list[int]) -> str:
    """Sorted block indices as "0-9,20-29" (canonical form of a recipe's blocks)."""
    runs: list[list[int]] = []
    for block in blocks:
        if runs and block == runs[-1][1] + 1:
            runs[-1][1] = block
        else:
            runs.append([block, block])
    return ",".join(f"{a}-{b}" if b != a else f"{a}" for a, b in runs)


def recipe_text(steps: list[Step]) -> str:
    """The canonical recipe string of parsed steps."""
    return "+".join(f"{s.kind}:{s.argument}" for s in steps)


def draft_path(target: Path, steps: list[Step], folder: Path) -> Path:
    """Where `build_pair` writes the draft of this recipe."""
    return Path(folder) / f"{Path(target).stem}.{'.'.join(s.slug() for s in steps)}.gguf"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kept_blocks(step: Step, count: int) -> list[int]:
    blocks = parse_blocks(step.argument, count)
    return blocks if step.kind == "keep" else [b for b in range(count) if b not in blocks]


@dataclass(frozen=True)
class BuiltPair:
    """A built draft: its file, the JSON beside it, and whether it was already there."""

    draft: Path
    info: Path
    reused: bool
    record: dict


def build_pair(
    target: Path, recipe: str, folder: Path, command: str, threads: int = 1
) -> BuiltPair:
    """Build the draft of `recipe` from `target` into `folder` (module docstring)."""
    steps = parse_recipe(recipe)
    target = Path(target)
    out = draft_path(target, steps, folder)
    info = out.with_suffix(out.suffix + ".json")
    source_sha = sha256(target)
    canonical = recipe_text(steps)
    if out.exists() or info.exists():
        try:
            old = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        same = old.get("recipe") == canonical and old.get("source_sha256") == source_sha
        if same and out.is_file() and sha256(out) == old.get("sha256"):
            return BuiltPair(out, info, True, old)
        raise _bad(
            f"{out} or {info.name} exists and was not built by recipe {canonical!r} from this "
            f"target; move it away first (files are never overwritten)"
        )
    began = time.perf_counter()
    done: list[dict] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "pipesd.recipe": canonical,
        "pipesd.source": target.name,
        "pipesd.source_sha256": source_sha,
        "pipesd.command": command,
    }
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        current = target
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            nxt = out if last and step.kind != "quant" else Path(tmp) / f"step{i}.gguf"
            if step.kind == "quant":
                quantize_gguf(current, nxt, step.argument, threads=threads)
                done.append({"step": f"quant:{step.argument}", "tool": "llama_model_quantize"})
                if last:
                    blocks = stamp_gguf(nxt, out, metadata)
            else:
                seen: dict[str, list[int]] = {}

                def choose(count: int, step: Step = step, seen: dict = seen) -> list[int]:
                    seen["kept"] = _kept_blocks(step, count)
                    seen["of"] = [count]
                    return seen["kept"]

                blocks = skip_layers_gguf(current, nxt, choose, metadata if last else None)
                done.append(
                    {
                        "step": f"{step.kind}:{step.argument}",
                        "kept_blocks": seen["kept"],
                        "of": seen["of"][0],
                    }
                )
            current = nxt
    record = {
        "recipe": canonical,
        "steps": done,
        "source": str(target),
        "source_sha256": source_sha,
        "draft": str(out),
        "sha256": sha256(out),
        "bytes": out.stat().st_size,
        "source_bytes": target.stat().st_size,
        "block_count": blocks,
        "seconds": round(time.perf_counter() - began, 2),
        "command": command,
        "versions": package_versions(["llama-cpp-python", "gguf"]),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    info.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return BuiltPair(out, info, False, record)


__all__ = [
    "STEP_KINDS",
    "BuiltPair",
    "Step",
    "build_pair",
    "draft_path",
    "parse_recipe",
    "recipe_text",
    "sha256",
]
