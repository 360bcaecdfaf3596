"""One ``library_versions()``: the versions written with every output so a result can be traced.

Each stage names the distributions that change its numbers; versions come from the installed
package metadata, so nothing heavy is imported to learn them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

from atrx import __version__

__all__ = ["INGEST_LIBRARIES", "FEATURES_LIBRARIES", "TRAINING_LIBRARIES", "library_versions"]

INGEST_LIBRARIES: tuple[str, ...] = ("SimpleITK", "numpy", "zarr")
FEATURES_LIBRARIES: tuple[str, ...] = ("pyradiomics", "torch", "torchvision", "SimpleITK", "numpy")
TRAINING_LIBRARIES: tuple[str, ...] = ("scikit-learn", "numpy", "scipy", "pandas", "statsmodels",
                                       "feast", "bentoml", "duckdb", "pyarrow")


def library_versions(names: Iterable[str], *, python: bool = False,
                     atrx: bool = False) -> dict[str, str]:
    """``{distribution: version}`` for ``names``; a missing one is ``"not installed"``."""
    out: dict[str, str] = {}
    if python:
        out["python"] = platform.python_version()
    if atrx:
        out["atrx"] = __version__
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
