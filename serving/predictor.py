"""The serving core, without HTTP: the production model + a Feast online lookup -> predictions.

The BentoML service (:mod:`serving.service`) is a thin shell around :class:`FusionPredictor`; the
benchmark and the tests use the same object in-process, so "the server answers what the model
says" is checked against this code path and not a re-implementation.

Versions. A model is trained on one ``feature_version`` per view (registry metadata
``feature_versions``). Online rows carry no version of their own: ``feature_repo.store.apply``
deletes a view whose version changes (dropping its online table) and registers it anew, so the
version of every online row of a view is the version its registered view is tagged with.
:meth:`FusionPredictor.load` refuses to start when a view the model reads is registered with
another version; per request, the registry is re-read when its file changes, and a view that
changed under a running server makes its features "stale" (HTTP 422) rather than silently
feeding the model numbers of another recipe.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
from bentoml.exceptions import NotFound, UnprocessableEntity

from atrx.workspace import Workspace
from feature_repo.layout import (
    CLINICAL,
    CLINICAL_FEATURES,
    FEATURE_VERSION,
    IMAGING_VIEWS,
    JOIN_KEY,
)
from serving.schemas import ClinicalValues, ModelDescription, Prediction, finite

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("atrx.serving")

#: path of a ``feature_store.yaml`` to serve from instead of the workspace's SQLite store
FEAST_CONFIG_ENV: Final[str] = "ATRX_FEAST_CONFIG"
#: pin a model tag instead of the production stage (e.g. a canary)
MODEL_TAG_ENV: Final[str] = "ATRX_MODEL_TAG"
#: registries that are not a local file are re-read at most this often (seconds)
REGISTRY_RECHECK_SECONDS: Final[float] = 30.0
_NOT_POINTS: Final[frozenset[str]] = frozenset({"total_points", "linear_predictor", "probability"})
_STATUS_PRESENT: Final[int] = 1
_STATUS_NOT_FOUND: Final[int] = 3


class ServingSetupError(ValueError):
    """The service cannot serve: no production model, or features of another version online."""


class UnknownPatient(NotFound):
    """HTTP 404: no online row of any view the model reads for these patient ids."""

    def __init__(self, patient_ids: Sequence[str]) -> None:
        self.patient_ids = list(patient_ids)
        which = ", ".join(repr(p) for p in self.patient_ids)
        super().__init__(
            f"unknown patient id(s) {which}: no features in the online store; check the id, "
            "or run `atrx materialize` if the patient was added after the last run"
        )


class FeaturesUnavailable(UnprocessableEntity):
    """HTTP 422: features the model needs are missing (null/not materialized) or stale."""

    def __init__(
        self,
        missing: Mapping[str, Sequence[str]] | None = None,
        stale: Mapping[str, tuple[str, str | None]] | None = None,
        stale_features: Sequence[str] = (),
        unexpected: Sequence[str] = (),
    ) -> None:
        self.missing = {k: list(v) for k, v in (missing or {}).items()}
        self.stale = dict(stale or {})
        self.unexpected = list(unexpected)
        parts = []
        if self.stale:
            views = "; ".join(
                f"{v}: model {want!r}, online {got or 'unregistered'!r}"
                for v, (want, got) in self.stale.items()
            )
            parts.append(
                f"stale features {list(stale_features)} (feature version differs from the "
                f"model's: {views}); promote a model trained on these versions or re-apply "
                "the model's versions and run `atrx materialize`"
            )
        for who, names in self.missing.items():
            parts.append(f"{who}: missing features {names}")
        if self.unexpected:
            parts.append(f"unexpected features {self.unexpected} (not used by the model)")
        super().__init__("; ".join(parts))


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


def production_record(ws: Workspace, tag: str | None = None) -> Any:
    """The registry record to serve (``tag``, ``$ATRX_MODEL_TAG`` or the production stage)."""
    from atrx import registry

    wanted = tag or os.environ.get(MODEL_TAG_ENV) or "production"
    try:
        return registry.show(ws, wanted)
    except registry.RegistryError as exc:
        if wanted == "production":
            raise ServingSetupError(
                f"no production model in {Path(ws.bentoml_home) / 'models'}: run `atrx train` / "
                "`atrx retrain` first (or `atrx models promote TAG`)"
            ) from None
        raise ServingSetupError(str(exc)) from None


def load_served_model(ws: Workspace, tag: str | None = None) -> ServedModel:
    """Load the model to serve from the workspace's BentoML store, once."""
    from atrx import registry

    record = production_record(ws, tag)
    model = registry.load_model(ws, record.tag)
    required = list(model.required_features)
    listed = list(record.metadata.get("required_features") or required)
    if listed != required:
        raise ServingSetupError(
            f"{record.tag}: registry metadata lists required features {listed} but the model "
            f"needs {required}; the registry entry is inconsistent"
        )
    versions = needed_versions(record.metadata, required)
    return ServedModel(record.tag, model, required, versions, feature_views_of(required))


def open_feature_store(ws: Workspace) -> FeatureStore:
    """``$ATRX_FEAST_CONFIG`` (a production ``feature_store.yaml``) or the workspace's store."""
    config = os.environ.get(FEAST_CONFIG_ENV)
    if config:
        from feast import FeatureStore

        path = Path(config)
        if not path.is_file():
            raise ServingSetupError(f"{FEAST_CONFIG_ENV}={config!r} is not a file")
        return FeatureStore(fs_yaml_file=path)
    from feature_repo.store import open_store

    return open_store(ws)


def store_versions(store: FeatureStore, allow_cache: bool = False) -> dict[str, str]:
    """View -> ``feature_version`` tag, as ``feature_repo.store.registered_versions`` reads it."""
    return {
        fv.name: fv.tags.get(FEATURE_VERSION, "")
        for fv in store.list_feature_views(allow_cache=allow_cache)
    }


def version_mismatches(
    expected: Mapping[str, str], registered: Mapping[str, str]
) -> dict[str, tuple[str, str | None]]:
    """View -> (model's version, registered version or None) where they differ."""
    return {
        view: (want, registered.get(view))
        for view, want in expected.items()
        if registered.get(view) != want
    }


def require_versions(
    tag: str, expected: Mapping[str, str], registered: Mapping[str, str], action: str = "serve"
) -> None:
    """The start-up refusal: raise naming every view whose registered version differs."""
    bad = version_mismatches(expected, registered)
    if not bad:
        return
    lines = ", ".join(
        f"{v}: model trained on {want!r}, online store has {got or 'no such view'!r}"
        for v, (want, got) in bad.items()
    )
    raise ServingSetupError(
        f"refusing to {action} {tag}: the feature store's registered feature versions differ from "
        f"those the model was trained on ({lines}). Promote a model trained on the registered "
        "versions (`atrx retrain`), or re-apply the model's versions (`python -m feature_repo "
        "apply --version VIEW=VERSION`) and run `atrx materialize`"
    )


@dataclass
class OnlineRows:
    """One online lookup: a model-ready frame and the event time of each view's row."""

    patient_ids: list[str]
    frame: pd.DataFrame
    timestamps: list[dict[str, datetime]]


class FusionPredictor:
    """The served model and its online store; thread-safe (one lookup at a time)."""

    def __init__(self, served: ServedModel, store: FeatureStore) -> None:
        self.served = served
        self.store = store
        self._lock = threading.Lock()
        self._refs = [f"{view}:{name}" for view, names in served.views.items() for name in names]
        self._view_of = {name: view for view, names in served.views.items() for name in names}
        self._registry_file = self._local_registry_file(store)
        self._registry_sig: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._versions: dict[str, str] = {}

    # construction ------------------------------------------------------------------------------
    @classmethod
    def load(cls, ws: Workspace, tag: str | None = None) -> FusionPredictor:
        """Load the model and open the store; refuse when the registered versions differ."""
        served = load_served_model(ws, tag)
        store = open_feature_store(ws)
        predictor = cls(served, store)
        predictor.check_versions()
        return predictor

    def check_versions(self) -> None:
        """Raise :class:`ServingSetupError` if a needed view's registered version differs."""
        registered = store_versions(self.store, allow_cache=False)
        require_versions(self.served.tag, self.served.feature_versions, registered)
        missing = self._unregistered_features()
        if missing:
            raise ServingSetupError(
                f"refusing to serve {self.served.tag}: features {missing} are not registered in "
                "their feature views"
            )
        self._versions = registered
        self._registry_sig = self._signature()
        self._checked_at = time.monotonic()

    def _unregistered_features(self) -> list[str]:
        views = {fv.name: fv for fv in self.store.list_feature_views(allow_cache=True)}
        return [
            name
            for view, names in self.served.views.items()
            for name in names
            if name not in {f.name for f in views[view].features}
        ]

    @staticmethod
    def _local_registry_file(store: FeatureStore) -> Path | None:
        registry = store.config.registry
        path = getattr(registry, "path", None) if not isinstance(registry, str) else registry
        if not path or "://" in str(path):
            return None
        p = Path(path)
        if not p.is_absolute() and store.repo_path is not None:
            p = Path(store.repo_path) / p
        return p

    def _signature(self) -> tuple[int, int] | None:
        if self._registry_file is None:
            return None
        try:
            st = self._registry_file.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def _current_versions(self) -> dict[str, str]:
        """Registered versions, re-read when the registry file changed (call under the lock)."""
        sig = self._signature()
        now = time.monotonic()
        changed = sig != self._registry_sig if sig is not None else (
            now - self._checked_at > REGISTRY_RECHECK_SECONDS
        )
        if changed:
            self.store.refresh_registry()
            self._versions = store_versions(self.store, allow_cache=True)
            self._registry_sig, self._checked_at = sig, now
        return self._versions

    # lookup ------------------------------------------------------------------------------------
    def lookup(self, patient_ids: Sequence[str]) -> OnlineRows:
        """ONE online lookup of exactly the model's features for ``patient_ids``.

        Raises :class:`UnknownPatient` (404) for ids with no online row at all, then
        :class:`FeaturesUnavailable` (422) for stale views or missing/null values.
        """
        ids = [str(p) for p in patient_ids]
        with self._lock:
            versions = self._current_versions()
            response = self.store.get_online_features(
                features=self._refs, entity_rows=[{JOIN_KEY: p} for p in ids]
            )
        names = list(response.proto.metadata.feature_names.val)
        values = response.to_dict()
        results = dict(zip(names, response.proto.results, strict=True))
        required = self.served.required_features
        statuses = np.array([list(results[f].statuses) for f in required]).T  # (patients, features)
        unknown = [p for p, row in zip(ids, statuses, strict=True) if (row == _STATUS_NOT_FOUND).all()]
        if unknown:
            raise UnknownPatient(list(dict.fromkeys(unknown)))
        stale = version_mismatches(self.served.feature_versions, versions)
        if stale:
            raise FeaturesUnavailable(
                stale=stale,
                stale_features=[f for f in required if self._view_of[f] in stale],
            )
        missing: dict[str, list[str]] = {}
        for i, pid in enumerate(ids):
            gone = [
                f
                for j, f in enumerate(required)
                if statuses[i, j] != _STATUS_PRESENT or _is_null(values[f][i])
            ]
            if gone:
                missing[f"patient {pid!r}"] = gone
        if missing:
            raise FeaturesUnavailable(missing=missing)
        frame = pd.DataFrame({f: values[f] for f in required})
        timestamps = []
        for i in range(len(ids)):
            stamps = {}
            for view, feats in self.served.views.items():
                seconds = results[feats[0]].event_timestamps[i].seconds
                stamps[view] = datetime.fromtimestamp(seconds, UTC)
            timestamps.append(stamps)
        return OnlineRows(ids, frame, timestamps)

    # prediction --------------------------------------------------------------------------------
    def predict_frame(
        self,
        frame: pd.DataFrame,
        patient_ids: Sequence[str | None],
        timestamps: Sequence[Mapping[str, datetime]] | None = None,
    ) -> list[Prediction]:
        """Predictions for a model-ready frame (columns = ``required_features``)."""
        model = self.served.model
        prob = model.predict_proba(frame)[:, 1]
        score = model.imaging_score(frame)
        points = model.contributions(frame)
        groups = model.risk_group(prob)
        variables = [c for c in points.columns if c not in _NOT_POINTS]
        out = []
        for i, pid in enumerate(patient_ids):
            row = points.iloc[i]
            out.append(
                Prediction(
                    patient_id=pid,
                    probability=finite(prob[i]),
                    risk_group=str(groups[i]),
                    cutoff=float(model.cutoff_),
                    imaging_score=finite(score[i]),
                    contributions={v: finite(row[v]) for v in variables},
                    total_points=finite(row["total_points"]),
                    model_version=self.served.tag,
                    feature_timestamps=dict(timestamps[i]) if timestamps else {},
                )
            )
        return out

    def predict_ids(self, patient_ids: Sequence[str]) -> list[Prediction]:
        """Look the patients up (one lookup) and predict; errors carry their HTTP status."""
        t0 = time.perf_counter()
        rows = self.lookup(patient_ids)
        out = self.predict_frame(rows.frame, rows.patient_ids, rows.timestamps)
        # pseudonymous ids only: no feature values, no clinical data, no probabilities
        log.info(
            "predicted %d patient(s) %s with %s in %.1f ms",
            len(out), _ids_for_log(rows.patient_ids), self.served.tag,
            1000 * (time.perf_counter() - t0),
        )
        return out

    def predict_values(
        self,
        clinical: ClinicalValues,
        imaging: Mapping[str, float],
        patient_id: str | None = None,
    ) -> Prediction:
        """Predict from explicit values; the imaging names must be exactly the model's."""
        wanted = self.served.imaging_features
        missing = [f for f in wanted if f not in imaging]
        unexpected = sorted(set(imaging) - set(wanted))
        if missing or unexpected:
            raise FeaturesUnavailable(
                missing={"imaging": missing} if missing else None, unexpected=unexpected
            )
        row: dict[str, Any] = {f: float(imaging[f]) for f in wanted}
        given = clinical.model_dump()
        row.update({f: given[f] for f in self.served.clinical_features})
        frame = pd.DataFrame([row], columns=self.served.required_features)
        (prediction,) = self.predict_frame(frame, [patient_id])
        log.info("predicted explicit values for %s with %s", _ids_for_log([patient_id]),
                 self.served.tag)
        return prediction

    def describe(self) -> ModelDescription:
        """What is served and what it reads."""
        return ModelDescription(
            model_version=self.served.tag,
            required_features=self.served.required_features,
            imaging_features=self.served.imaging_features,
            clinical_features=self.served.clinical_features,
            feature_versions=self.served.feature_versions,
            cutoff=float(self.served.model.cutoff_),
        )


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _ids_for_log(ids: Sequence[str | None], limit: int = 5) -> str:
    shown = [p if p is not None else "-" for p in ids[:limit]]
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ",".join(shown) + more
