"""The online side of serving: the Feast store, its registered versions, one lookup per request.

Versions. Online rows carry no version of their own: ``feature_repo.store.apply`` deletes a view
whose version changes (dropping its online table) and registers it anew, so the version of every
online row of a view is the version its registered view is tagged with. :func:`require_versions`
is the start-up refusal when a view the model reads is registered with another version; per
request, :class:`OnlineLookup` re-reads the registry when its file changes, and a view that
changed under a running server makes its features "stale" (HTTP 422) rather than silently
feeding the model numbers of another recipe.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from atrx.workspace import Workspace
from feature_repo.layout import FEATURE_VERSION, JOIN_KEY
from serving.errors import FeaturesUnavailable, ServingSetupError, UnknownPatient
from serving.model import ServedModel

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = [
    "FEAST_CONFIG_ENV",
    "REGISTRY_RECHECK_SECONDS",
    "OnlineLookup",
    "OnlineRows",
    "open_feature_store",
    "require_versions",
    "store_versions",
    "version_mismatches",
]

#: path of a ``feature_store.yaml`` to serve from instead of the workspace's SQLite store
FEAST_CONFIG_ENV: Final[str] = "ATRX_FEAST_CONFIG"
#: registries that are not a local file are re-read at most this often (seconds)
REGISTRY_RECHECK_SECONDS: Final[float] = 30.0
_STATUS_PRESENT: Final[int] = 1


def open_feature_store(ws: Workspace) -> FeatureStore:
    """``$ATRX_FEAST_CONFIG`` (a production ``feature_store.yaml``) or the workspace's store."""
    config = os.environ.get(FEAST_CONFIG_ENV)
    if config:
        from feast import FeatureStore

        path = Path(config)
        if not path.is_file():
            raise ServingSetupError(f"{FEAST_CONFIG_ENV}={config!r} is not a file",
                                    fix=f"point {FEAST_CONFIG_ENV} at a feature_store.yaml")
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


class OnlineLookup:
    """Exactly the served model's features from the online store; thread-safe (one lookup at a
    time), with the registered versions re-checked when the registry changes."""

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

    def lookup(self, patient_ids: Sequence[str]) -> OnlineRows:
        """ONE online lookup of exactly the model's features for ``patient_ids``.

        Raises :class:`UnknownPatient` (404) for ids without one present value of the model's
        features (no online row in any view), then
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
        # a patient without any online row: SQLite answers NOT_FOUND, Redis (an absent key)
        # PRESENT with empty values, so "unknown" is "not one value of the model's features"
        valued = (statuses == _STATUS_PRESENT) & ~np.array(
            [[_is_null(values[f][i]) for f in required] for i in range(len(ids))], dtype=bool
        ).reshape(statuses.shape)
        unknown = [i for i, row in enumerate(valued) if not row.any()]
        if unknown:  # the message names positions only: unknown ids are neither echoed nor logged
            raise UnknownPatient(list(dict.fromkeys(ids[i] for i in unknown)), unknown)
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


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
