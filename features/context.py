"""What one features run is: the recipe that makes the numbers, and the context every step shares.

:class:`Recipe` is settled before the catalog or a cluster is touched: the CNN weights are loaded
once here (a missing ImageNet file fails first) and the feature versions derived from them and the
radiomics parameters (:mod:`features.versioning`). :class:`FeaturesRun` adds the run id and how to
run; planning, computing, collecting and registering all take it instead of a dozen arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atrx.names import all_views, view_name
from atrx.workspace import Workspace
from features.deep import WeightsSpec, deep_feature_names, load_resnet34
from features.radiomics import check_params, load_params, params_hash, view_feature_names
from features.versioning import (
    deep_params_hash,
    deep_version,
    features_library_versions,
    radiomics_version,
)

__all__ = ["CHECKPOINT_SECONDS", "FeaturesRun", "ProgressFn", "Recipe", "load_recipe"]

#: ``progress(done, total, label)`` after each finished task
ProgressFn = Callable[[int, int, str], None]
#: how often finished results are stored while a run goes on (a checkpoint costs ~1 s per view)
CHECKPOINT_SECONDS = 300.0


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a run's numbers and how they are recorded.

    ``versions``: kind -> feature version; ``view_versions`` and ``schemas``: the run's views ->
    their feature version and feature columns (the offline store's and Feast's schema, in order);
    ``lineage_versions`` and ``lineage_hashes``: kind -> the ``versions`` JSON and ``params_hash``
    of its lineage rows.
    """

    kinds: tuple[str, ...]
    params: dict[str, Any]
    weights: str | None
    weights_id: str | None
    versions: dict[str, str]
    view_versions: dict[str, str]
    schemas: dict[str, list[str]]
    libraries: dict[str, str]
    lineage_versions: dict[str, str]
    lineage_hashes: dict[str, str | None]

    @property
    def run_params_hash(self) -> str | None:
        """The ``params_hash`` of the run's catalog row: the radiomics parameters, if computed."""
        return self.lineage_hashes["rad"]

    @property
    def run_versions(self) -> dict[str, str]:
        """The ``versions`` of the run's catalog row: feature versions, libraries, weights."""
        return {**{f"feature_version_{k}": v for k, v in self.versions.items()}, **self.libraries,
                **({"weights": self.weights, "weights_id": self.weights_id} if self.weights else {})}


@dataclass(frozen=True)
class FeaturesRun:
    """One run: its workspace and id, its recipe, and how its tasks are run and reported."""

    ws: Workspace
    run_id: str
    recipe: Recipe
    scheduler: str | None = None
    workers: int | None = None
    gpus: bool = False
    threads_per_gpu: int | None = None
    batch_size: int = 32
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    progress: ProgressFn | None = None


def load_recipe(kinds: tuple[str, ...], weights: str,
                radiomics_params: Mapping[str, Any] | None = None) -> Recipe:
    """Load the weights (``dl``) and the radiomics parameters; derive versions and schemas.

    ``radiomics_params`` replaces the repository's parameter file (it gets its own feature version).
    """
    spec: str | None = None
    weights_id: str | None = None
    if "dl" in kinds:
        spec = str(WeightsSpec.parse(weights))
        model, weights_id = load_resnet34(spec, "cpu")
        del model
    if radiomics_params is None:
        params = load_params()
    else:
        params = json.loads(json.dumps(dict(radiomics_params)))  # a private, JSON-clean copy
        check_params(params, source="radiomics_params")
    versions: dict[str, str] = {}
    if "rad" in kinds:
        versions["rad"] = radiomics_version(params)
    if weights_id is not None:
        versions["dl"] = deep_version(weights_id)
    libraries = features_library_versions()
    return Recipe(
        kinds=kinds,
        params=params,
        weights=spec,
        weights_id=weights_id,
        versions=versions,
        view_versions={view_name(k, r, s): versions[k] for k, r, s in all_views() if k in kinds},
        schemas=_schemas(params, kinds),
        libraries=libraries,
        lineage_versions=_lineage_versions(libraries, versions, spec, weights_id),
        lineage_hashes={"rad": params_hash(params) if "rad" in kinds else None,
                        "dl": deep_params_hash(weights_id) if weights_id else None},
    )


def _lineage_versions(libs: dict[str, str], versions: dict[str, str], spec: str | None,
                      weights_id: str | None) -> dict[str, str]:
    """kind -> versions JSON of its lineage rows: libraries, and for ``dl`` the weights."""
    out = {}
    for kind, version in versions.items():
        extra = {"weights": spec, "weights_id": weights_id} if kind == "dl" else {}
        out[kind] = json.dumps({"feature_version": version, **libs, **extra}, sort_keys=True)
    return out


def _schemas(params: Mapping[str, Any], kinds: tuple[str, ...]) -> dict[str, list[str]]:
    """view -> its feature columns, in order (the offline store's and Feast's schema)."""
    out = {}
    for kind, roi, seq in all_views():
        if kind in kinds:
            out[view_name(kind, roi, seq)] = (view_feature_names(roi, seq, params) if kind == "rad"
                                              else deep_feature_names(roi, seq))
    return out
