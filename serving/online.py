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
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type

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
    """One online lookup: the model's features as one array per column (``required_features``
    order) and the event time of each view's row."""

    patient_ids: list[str]
    columns: dict[str, np.ndarray]
    timestamps: list[dict[str, datetime]]


class OnlineLookup:
    """Exactly the served model's features from the online store; thread-safe (one lookup at a
    time), with the registered versions re-checked when the registry changes."""

    def __init__(self, served: ServedModel, store: FeatureStore) -> None:
        self.served = served
        self.store = store
        self._lock = threading.Lock()
        self._tables_cache: dict[str, Any] = {}
        self._tables_for: object = None
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

    def _tables(self) -> dict[str, Any]:
        """The registered feature view objects the model reads (call under the lock).

        Fetched again whenever the registry was re-read (:meth:`_current_versions`), so a
        re-applied view is read through its new object.
        """
        if self._tables_for is not self._versions:
            self._tables_cache = {
                view: self.store.get_feature_view(view, allow_registry_cache=True)
                for view in self.served.views
            }
            self._tables_for = self._versions
        return self._tables_cache

    def _read(self, ids: list[str]
              ) -> tuple[dict[str, str], dict[str, list[tuple[datetime | None, dict[str, Any] | None]]]]:
        """The registered versions and, per view, the online store's rows of the model's features.

        Why not ``FeatureStore.get_online_features``: for one patient it spends about 1 ms
        preparing entity frames and assembling a protobuf response around the store's
        ``online_read``, which is all a lookup needs (same rows, same values). The store is
        whatever ``feature_store.yaml`` configures (SQLite, Redis), through Feast's provider.
        """
        keys = [EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=p)])
                for p in ids]
        with self._lock:
            versions = self._current_versions()
            tables = self._tables()
            provider = self.store._get_provider()  # noqa: SLF001 - Feast's own read path
            rows = {view: provider.online_read(self.store.config, tables[view], keys, list(names))
                    for view, names in self.served.views.items()}
        return versions, rows

    def lookup(self, patient_ids: Sequence[str]) -> OnlineRows:
        """ONE online lookup of exactly the model's features for ``patient_ids``.

        Raises :class:`UnknownPatient` (404) for ids without one present value of the model's
        features (no online row in any view), then
        :class:`FeaturesUnavailable` (422) for stale views or missing/null values.
        """
        ids = [str(p) for p in patient_ids]
        versions, read = self._read(ids)
        required = self.served.required_features
        values: dict[str, list[Any]] = {f: [None] * len(ids) for f in required}
        stamps: list[dict[str, datetime | None]] = [{} for _ in ids]
        for view, rows in read.items():
            for i, (stamp, row) in enumerate(rows):
                stamps[i][view] = stamp
                for name, proto in (row or {}).items():
                    if name in values:
                        values[name][i] = feast_value_type_to_python_type(proto)
        # a patient without any online row: SQLite answers (None, None), Redis (an absent key)
        # empty values, so "unknown" is "not one value of the model's features"
        valued = np.array([[not _is_null(values[f][i]) for f in required] for i in range(len(ids))],
                          dtype=bool).reshape(len(ids), len(required))
        unknown = [i for i, row in enumerate(valued) if not row.any()]
        if unknown:  # the message names positions only: unknown ids are neither echoed nor logged
            raise UnknownPatient(list(dict.fromkeys(ids[i] for i in unknown)), unknown)
        stale = version_mismatches(self.served.feature_versions, versions)
        if stale:
            raise FeaturesUnavailable(
                stale=stale,
                stale_features=[f for f in required if self._view_of[f] in stale],
            )
        missing = {f"patient {pid!r}": [f for j, f in enumerate(required) if not valued[i, j]]
                   for i, pid in enumerate(ids) if not valued[i].all()}
        if missing:
            raise FeaturesUnavailable(missing=missing)
        timestamps = [{view: _whole_seconds(stamp) for view, stamp in row.items()} for row in stamps]
        return OnlineRows(ids, {f: np.asarray(values[f]) for f in required}, timestamps)


def _whole_seconds(stamp: datetime | None) -> datetime:
    """The event time to the second, in UTC, as Feast's response protobuf carries it."""
    if stamp is None:  # a view without a row for a patient the checks let through: not served
        raise ValueError("an online row without an event time")
    return datetime.fromtimestamp(math.floor(stamp.timestamp()), UTC)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
