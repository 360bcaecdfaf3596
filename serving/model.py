"""The model to serve, as serving sees it: loaded once from :mod:`atrx.registry`.

A registry model is trained on one ``feature_version`` per view (registry metadata
``feature_versions``) and needs exactly its ``required_features``. :class:`ServedModel` holds the
estimator with what it must be fed, grouped by the Feast view that holds each feature, so the
online lookup asks for those features and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from atrx import registry
from atrx.workspace import Workspace
from feature_repo.layout import CLINICAL, CLINICAL_FEATURES, IMAGING_VIEWS
from serving.errors import ServingSetupError

__all__ = [
    "MODEL_TAG_ENV",
    "ServedModel",
    "feature_views_of",
    "load_served_model",
    "needed_versions",
    "production_record",
]

#: pin a model tag instead of the production stage (e.g. a canary)
MODEL_TAG_ENV: Final[str] = "ATRX_MODEL_TAG"


def feature_views_of(features: Sequence[str]) -> dict[str, list[str]]:
    """Feature view -> the given features it holds, from the canonical names alone.

    Imaging features are ``{view}__...``; the clinical variables live in ``clinical``. Labels are
    never model inputs, so a name that maps to no servable view is an error.
    """
    out: dict[str, list[str]] = {}
    for name in features:
        prefix = name.split("__", 1)[0]
        if "__" in name and prefix in IMAGING_VIEWS:
            view = prefix
        elif name in CLINICAL_FEATURES:
            view = CLINICAL
        else:
            raise ServingSetupError(
                f"model feature {name!r} belongs to no servable feature view (imaging names "
                f"start with one of {list(IMAGING_VIEWS)} + '__'; clinical are "
                f"{list(CLINICAL_FEATURES)})"
            )
        out.setdefault(view, []).append(name)
    return out


@dataclass(frozen=True)
class ServedModel:
    """A registry model as serving sees it: the estimator and what it must be fed."""

    tag: str
    model: Any = field(repr=False)
    required_features: list[str]
    feature_versions: dict[str, str]  # view -> version the model was trained on (needed views)
    views: dict[str, list[str]]  # needed view -> its required features

    @property
    def imaging_features(self) -> list[str]:
        return [f for f in self.required_features if f not in CLINICAL_FEATURES]

    @property
    def clinical_features(self) -> list[str]:
        return [f for f in self.required_features if f in CLINICAL_FEATURES]


def needed_versions(metadata: Mapping[str, Any], required: Sequence[str]) -> dict[str, str]:
    """View -> trained feature version for exactly the views holding ``required`` features."""
    trained = dict(metadata.get("feature_versions") or {})
    views = feature_views_of(required)
    lacking = [v for v in views if not trained.get(v)]
    if lacking:
        raise ServingSetupError(
            f"the model's registry metadata has no feature_versions for views {lacking}; "
            "re-register it with `atrx train`"
        )
    return {v: str(trained[v]) for v in views}


def production_record(ws: Workspace, tag: str | None = None) -> registry.ModelRecord:
    """The registry record to serve (``tag``, ``$ATRX_MODEL_TAG`` or the production stage)."""
    wanted = tag or os.environ.get(MODEL_TAG_ENV) or "production"
    try:
        return registry.show(ws, wanted)
    except registry.RegistryError as exc:
        if wanted == "production":
            raise ServingSetupError(
                f"no production model in {Path(ws.bentoml_home) / 'models'}: run `atrx train` / "
                "`atrx retrain` first (or `atrx models promote TAG`)"
            ) from None
        raise ServingSetupError(str(exc), fix="list the models with `atrx models list`") from None


def load_served_model(ws: Workspace, tag: str | None = None) -> ServedModel:
    """Load the model to serve from the workspace's BentoML store, once."""
    record = production_record(ws, tag)
    model = registry.load_model(ws, record.tag)
    required = list(model.required_features)
    listed = list(record.metadata.get("required_features") or required)
    if listed != required:
        raise ServingSetupError(
            f"{record.tag}: registry metadata lists required features {listed} but the model "
            f"needs {required}; the registry entry is inconsistent",
            fix="re-register the model with `atrx train`",
        )
    versions = needed_versions(record.metadata, required)
    return ServedModel(record.tag, model, required, versions, feature_views_of(required))
