"""Feature versions: one short id per recipe, so features made differently are never mixed.

A feature version names a directory of the offline store (``offline/{view}/{version}/``) and a
key of the lineage table. It changes whenever anything that changes the numbers changes:

* radiomics: the parameter file (its canonical hash), the engine that computes it (the
  PyRadiomics release, or ``atrx`` and :data:`features.engine.ENGINE_VERSION`), and
  :data:`RADIOMICS_RECIPE` (how the driver turns a store version into the engine's input); a
  file run by PyRadiomics keeps the version it had before the engine existed;
* deep: the weights (their sha256, not their spec: ``random:0`` on two machines is the same
  version, two different ``model.pth`` files are not) and :data:`DEEP_RECIPE` (the crop).

Bump a recipe constant when the code around the library changes the numbers; the next
``atrx features`` then recomputes everything into a new version directory and the old one stays
readable for runs trained on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from atrx.versions import FEATURES_LIBRARIES, library_versions
from features.radiomics import engine_of, params_hash

#: how a stored study version becomes PyRadiomics input (see features.tasks.radiomics_task)
RADIOMICS_RECIPE: Final[str] = (
    "rad-recipe-1: z-scored float32 sequence and one binary uint8 ROI mask read from the image "
    "store, grid from the group's geometry attrs, no resampling or normalisation in PyRadiomics"
)
#: how a stored study version becomes CNN input (see features.deep)
DEEP_RECIPE: Final[str] = (
    "dl-recipe-1: largest axial ROI slice (lowest z on ties), ROI bounding-box crop, min-max to "
    "[0,1], bilinear 224x224, 3 channels, ImageNet normalisation, ResNet34 eval, 1000 logits"
)


def pyradiomics_version() -> str:
    """The installed PyRadiomics release (imported lazily: importing it touches logging)."""
    import radiomics

    return str(radiomics.__version__)


def engine_label(params: Mapping[str, Any]) -> str:
    """Name and version of the engine ``params`` choose, as feature versions record them.

    PyRadiomics keeps the label versions always had (its release, ``v3.0.1``), so a file run by it
    keeps its pre-engine version."""
    if engine_of(params) == "pyradiomics":
        return pyradiomics_version()
    from features.engine import ENGINE_NAME, ENGINE_VERSION

    return f"{ENGINE_NAME} {ENGINE_VERSION}"


def features_library_versions() -> dict[str, str]:
    """Versions of the libraries that make the numbers: recorded in lineage and runs, and run on
    every worker so a worker with other versions is refused.

    ``pyradiomics`` is the release PyRadiomics reports itself (``v3.0.1``; its package metadata says
    ``3.0.1``), the value this key always had; ``torch`` keeps its build label (``2.14.1+cu130``,
    not the metadata's ``2.14.1``), so a worker with a CPU build is told apart from a CUDA build.
    """
    import torch

    return {**library_versions(FEATURES_LIBRARIES), "pyradiomics": pyradiomics_version(),
            "torch": str(torch.__version__)}


def radiomics_params_hash(params: Mapping[str, Any]) -> str:
    """Full sha256 behind :func:`radiomics_version` (recorded in lineage and runs)."""
    return _sha256(params_hash(params), engine_label(params), RADIOMICS_RECIPE)


def radiomics_version(params: Mapping[str, Any]) -> str:
    """``rad-`` + 12 hex digits of sha256(params hash, engine and its version, recipe)."""
    return "rad-" + radiomics_params_hash(params)[:12]


def deep_params_hash(weights_id: str) -> str:
    """Full sha256 behind :func:`deep_version` (recorded in lineage and runs)."""
    if not weights_id:
        raise ValueError("weights_id is empty; load the weights first (features.deep.load_resnet34)")
    return _sha256(weights_id, DEEP_RECIPE)


def deep_version(weights_id: str) -> str:
    """``dl-`` + 12 hex digits of sha256(weights sha256, crop recipe)."""
    return "dl-" + deep_params_hash(weights_id)[:12]


def _sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") must differ
    return h.hexdigest()
