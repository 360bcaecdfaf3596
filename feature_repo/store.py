"""The Feast store of a workspace, built in code so every path is under ``<home>``.

``apply`` is ``feast apply`` through the SDK; ``historical_features`` is the point-in-time join the
training matrix comes from; ``materialize``/``online_features`` feed serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView, RepoConfig

from atrx.errors import InputError, ServiceError
from atrx.workspace import Workspace
from feature_repo.definitions import build_feature_views, patient_entity
from feature_repo.errors import FeatureViewError
from feature_repo.fast_offline import OFFLINE_STORE_TYPE
from feature_repo.fast_online import ONLINE_STORE_TYPE
from feature_repo.layout import (
    ALL_VIEWS,
    EVENT_TIMESTAMP,
    JOIN_KEY,
    PROJECT,
    part_files,
    version_dir,
)
from feature_repo.materialization import Materialized, materialize_views

#: seconds a FeatureStore trusts its in-memory registry copy (0 would mean "forever" in Feast)
REGISTRY_CACHE_TTL_SECONDS: Final[int] = 60
_ROW: Final[str] = "_atrx_entity_row"


class _FileRegistryFlagFilter(logging.Filter):
    """Drop Feast's warning that ``serve_features_while_materializing`` has no effect on a file
    registry: Feast 0.67's file registry reads the flag and its online read path honours it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`serve_features_while_materializing` is enabled but" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_FileRegistryFlagFilter())


def repo_config(ws: Workspace) -> RepoConfig:
    """The RepoConfig of ``feature_repo/feature_store.yaml``, with ``${ATRX_HOME}`` = ``ws.home``."""
    if not ws.is_local:
        raise InputError(
            f"the Feast registry, online and offline stores must be local, but home is {ws.home!r}",
            fix="use a local --home",
        )
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry={
            "registry_type": "file",
            "path": ws.feast_registry,
            "cache_ttl_seconds": REGISTRY_CACHE_TTL_SECONDS,
            # a server keeps its last values while `atrx materialize` runs (Feast flips the views
            # to MATERIALIZING in the registry, and a file registry honours this flag too)
            "serve_features_while_materializing": True,
        },
        online_store={"type": ONLINE_STORE_TYPE, "path": ws.online},
        offline_store={"type": OFFLINE_STORE_TYPE},
        entity_key_serialization_version=3,
        # repo_path is where Feast resolves relative paths and puts its own files: keep it in home
        repo_path=Path(ws.home),
    )


def open_store(ws: Workspace) -> FeatureStore:
    """A FeatureStore on the workspace (creates ``<home>`` so the registry and SQLite can be written)."""
    config = repo_config(ws)
    Path(ws.home).mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=config)


def apply(
    ws: Workspace,
    versions: Mapping[str, str],
    feature_names: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Register the patient entity and each view of ``versions`` whose version folder has files.

    Returns the views applied, in canonical order; views without files are skipped (and keep what
    was registered before). Re-applying the same versions changes nothing. A view switched to
    another version is deleted first (dropping its online table and materialization history) and
    registered anew: in Feast 0.67 an in-place re-apply would keep the old version's online rows
    and start the next incremental materialization after the old one's end, missing older scans.
    """
    ready = {view: version for view, version in versions.items() if part_files(ws, view, version)}
    views = build_feature_views(
        ws, ready, {v: n for v, n in (feature_names or {}).items() if v in ready}
    )
    for fv in views:
        _check_columns(ws, fv)
    store = open_store(ws)
    registered = {fv.name: fv for fv in store.list_feature_views(allow_cache=False)}
    switched = [
        registered[fv.name]
        for fv in views
        if fv.name in registered and _version_of(registered[fv.name]) != _version_of(fv)
    ]
    if switched:
        store.apply([], objects_to_delete=list(switched), partial=False)
    store.apply([patient_entity(), *views])
    return [fv.name for fv in views]


def registered_versions(ws: Workspace) -> dict[str, str]:
    """View name -> feature_version, read back from the registry's tags."""
    store = open_store(ws)
    return {
        fv.name: _version_of(fv) for fv in _in_order(store.list_feature_views(allow_cache=False))
    }


def historical_features(
    ws: Workspace,
    entity_df: pd.DataFrame,
    views: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Point-in-time features for each row of ``entity_df`` (patient_id, event_timestamp).

    ``views`` defaults to every registered view; ``features`` (canonical names or ``view:feature``
    references) to every feature of those views. Returns ``entity_df``'s columns in its row order,
    then one column per feature named by its canonical name.
    """
    store = open_store(ws)
    refs = _feature_refs(store, views, features)
    base = _entity_frame(entity_df)
    clash = [r.split(":", 1)[1] for r in refs if r.split(":", 1)[1] in entity_df.columns]
    if clash:
        raise InputError(
            f"entity_df already has columns {clash[:5]} that are also requested features",
            fix="drop them from entity_df, or do not request them",
        )
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        by_view.setdefault(ref.split(":", 1)[0], []).append(ref)
    # One Feast query per view: the joins are independent anyway, and Feast 0.67's ibis plan
    # grows faster than linearly with the total column count (234 patients, 14 full-width views:
    # 41-72 s in one query, 32-49 s per view; nearly all of it ibis compiling in Python).
    parts = [entity_df.reset_index(drop=True)]
    for view_refs in by_view.values():
        out = store.get_historical_features(
            entity_df=base, features=view_refs, full_feature_names=False
        ).to_df()
        if len(out) != len(base):
            raise ServiceError(
                f"Feast returned {len(out)} rows for {len(base)} entity rows of view "
                f"{view_refs[0].split(':')[0]!r}; expected one per row"
            )
        out = out.sort_values(_ROW).reset_index(drop=True)
        parts.append(out[[r.split(":", 1)[1] for r in view_refs]])
    return pd.concat(parts, axis=1)


def materialize(
    ws: Workspace,
    end_date: datetime | None = None,
    views: Sequence[str] | None = None,
    full: bool = False,
) -> Materialized:
    """Load the newest row per patient into SQLite, up to ``end_date`` (default now, UTC).

    :func:`feature_repo.materialization.materialize_views` decides per view: from 1970 when never
    materialized, with ``full=True``, or when rows arrived since the last run with older scan
    dates (a new center, a re-extracted scan); incremental otherwise. ``labels`` is offline-only
    and never materialized.
    """
    end = end_date or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    store = open_store(ws)
    online = {fv.name: fv for fv in store.list_feature_views(allow_cache=False) if fv.online}
    names = list(views) if views is not None else [v for v in ALL_VIEWS if v in online]
    unknown = [v for v in names if v not in online]
    if unknown:
        raise FeatureViewError(
            f"cannot materialize {unknown}: not registered online views (registered: "
            f"{sorted(online)}); labels are never served",
            fix="register them first (`atrx features`, or feature_repo.store.apply)",
        )
    return materialize_views(store, names, end, full, online)


def online_features(
    ws: Workspace, patient_ids: Sequence[str], features: Sequence[str]
) -> pd.DataFrame:
    """The materialized values of ``features`` for ``patient_ids``, one row each, in that order."""
    store = open_store(ws)
    refs = _feature_refs(store, None, features)
    response = store.get_online_features(
        features=refs, entity_rows=[{JOIN_KEY: str(p)} for p in patient_ids]
    )
    out = response.to_df()
    return out[[JOIN_KEY, *(r.split(":", 1)[1] for r in refs)]]


def _version_of(fv: FeatureView) -> str:
    return fv.tags.get("feature_version", "")


def _in_order(views: Sequence[FeatureView]) -> list[FeatureView]:
    rank = {name: i for i, name in enumerate(ALL_VIEWS)}
    return sorted(views, key=lambda fv: (rank.get(fv.name, len(rank)), fv.name))


def _check_columns(ws: Workspace, fv: FeatureView) -> None:
    """Fail at apply, not at the first join, if the folder lacks a registered feature."""
    version = _version_of(fv)
    newest = part_files(ws, fv.name, version)[-1]
    columns = set(pq.read_schema(newest).names)
    missing = [f.name for f in fv.features if f.name not in columns]
    if missing:
        raise FeatureViewError(
            f"view {fv.name!r}: {len(missing)} registered feature(s) are not columns of "
            f"{newest} (e.g. {missing[:3]}); pass the folder's names as feature_names, or write "
            f"the features to {version_dir(ws, fv.name, version)} under their canonical names"
        )


def _feature_refs(
    store: FeatureStore, views: Sequence[str] | None, features: Sequence[str] | None
) -> list[str]:
    registered = {fv.name: fv for fv in store.list_feature_views(allow_cache=True)}
    if views is None:
        chosen = [v for v in ALL_VIEWS if v in registered]
    else:
        chosen = list(views)
        unknown = [v for v in chosen if v not in registered]
        if unknown:
            raise FeatureViewError(
                f"views {unknown} are not registered (registered: {sorted(registered)})",
                fix="register them first (`atrx features`, or feature_repo.store.apply)",
            )
    owner = {f.name: v for v in chosen for f in registered[v].features}
    if features is None:
        return [f"{v}:{f.name}" for v in chosen for f in registered[v].features]
    refs = []
    for item in features:
        view, _, name = item.rpartition(":")
        if view:
            if view not in chosen or name not in {f.name for f in registered[view].features}:
                raise FeatureViewError(f"feature {item!r} is not in the registered views {chosen}")
        elif name not in owner:
            raise FeatureViewError(
                f"feature {name!r} is not a feature of the registered views {chosen}",
                fix="use a canonical name or 'view:feature'",
            )
        refs.append(f"{view or owner[name]}:{name}")
    return refs


def _entity_frame(entity_df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (JOIN_KEY, EVENT_TIMESTAMP) if c not in entity_df.columns]
    if missing:
        raise InputError(
            f"entity_df lacks column(s) {missing}; it needs patient_id and event_timestamp"
        )
    ts = pd.to_datetime(entity_df[EVENT_TIMESTAMP], utc=True)
    if ts.isna().any():
        raise InputError(f"entity_df has {int(ts.isna().sum())} row(s) without an event_timestamp")
    frame: dict[str, Any] = {
        JOIN_KEY: entity_df[JOIN_KEY].astype(str).to_numpy(),
        EVENT_TIMESTAMP: ts.reset_index(drop=True),
        _ROW: np.arange(len(entity_df), dtype="int64"),
    }
    return pd.DataFrame(frame)
