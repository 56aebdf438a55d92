"""Versions of Python and of installed packages, as every result, manifest and part records them.

The one place that asks `importlib.metadata`: the simulator's manifests, the testbed's, the
calibration parts and the distilled draft's recipe all call `package_versions`.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

NOT_INSTALLED = "not installed"
"""The version recorded for a package that is absent."""


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """{"python": its version, name: installed version or "not installed"} for each
    distribution name (e.g. "llama-cpp-python", "torch"), in the order given."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


__all__ = ["NOT_INSTALLED", "package_versions"]
