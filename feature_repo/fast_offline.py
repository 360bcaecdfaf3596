"""Feast's DuckDB offline store with a direct point-in-time join for plain Parquet views.

Feast 0.67's DuckDB store plans ``get_historical_features`` through ibis, and compiling that plan
in Python dominates: 12.5x the same join written as DuckDB SQL (docs/benchmarks.md, row (c)).
:class:`FastDuckDBOfflineStore` keeps Feast's API and everything else of the stock store, but
runs the join itself, one DuckDB query per view with one ASOF join on the key columns, returning
exactly the requested columns, whenever it can match the stock result; anything else (see
:class:`FastDuckDBOfflineStore`) goes to the stock implementation. Materialization is stock.

Named in a ``RepoConfig`` (and ``feature_store.yaml``) by its class path, :data:`OFFLINE_STORE_TYPE`:
Feast imports ``<Class>Config`` from the same module and builds the store from the config's class.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import duckdb
import ibis
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast.data_format import ParquetFormat
from feast.feature_view import FeatureView
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _write_data_source,
)
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pydantic import StrictStr

from atrx.errors import ServiceError
from feature_repo.errors import NoPartsError, OfflineSchemaError

__all__ = ["OFFLINE_STORE_TYPE", "FastDuckDBOfflineStore", "FastDuckDBOfflineStoreConfig"]

#: the offline store ``type`` of a RepoConfig that selects this store
OFFLINE_STORE_TYPE: Final[str] = "feature_repo.fast_offline.FastDuckDBOfflineStore"
_ROW: Final[str] = "__atrx_fast_row"
#: columns read_parquet adds; a source column of that name would clash with them
_READER_COLUMNS: Final[frozenset[str]] = frozenset({"filename", "file_row_number"})
#: from this many requested columns of a view on, read ``f.*`` (see :func:`_sql`)
_STAR_FROM: Final[int] = 64
_DB: duckdb.DuckDBPyConnection | None = None
_DB_PID: int | None = None
_DB_LOCK = threading.Lock()


class FastDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """The stock DuckDB config (a subclass, so Feast's isinstance checks still pass)."""

    type: StrictStr = OFFLINE_STORE_TYPE


@dataclass(frozen=True)
class _ViewPlan:
    """What the direct join needs of one feature view: where, on what, and which columns as what."""

    name: str
    glob: str
    join_keys: dict[str, str]  # source column -> entity_df column
    timestamp: str
    created: str | None
    ttl: timedelta | None
    columns: list[tuple[str, str]]  # (source column, output name)


class FastDuckDBOfflineStore(DuckDBOfflineStore):
    """DuckDBOfflineStore whose historical retrieval is a direct DuckDB join when it can be.

    The direct path takes: a pandas entity_df with a tz-aware (or string) event timestamp, and
    plain FeatureViews over local Parquet FileSources without field mapping, all requested refs
    belonging to them (so no on-demand views), no ``filter_by_created_timestamp`` and no staging
    location. Its result equals the stock store's (pinned by tests/test_fast_offline.py); rows
    come back in entity_df's order, which the stock store does not promise.
    """

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        """Feast's contract; the direct join where :func:`_plan` accepts the request."""
        plan = None
        if not filter_by_created_timestamp and not config.offline_store.staging_location:
            plan = _plan(feature_views, feature_refs, entity_df, full_feature_names)
        if plan is None:
            return DuckDBOfflineStore.get_historical_features(
                config=config,
                feature_views=feature_views,
                feature_refs=feature_refs,
                entity_df=entity_df,
                registry=registry,
                project=project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp,
            )
        views, entity, event_col = plan
        ts = entity[event_col]
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=list(set(entity.columns) - {event_col}),
            min_event_timestamp=ts.min().to_pydatetime(),
            max_event_timestamp=ts.max().to_pydatetime(),
        )
        return DirectRetrievalJob(
            entity, event_col, views, full_feature_names, metadata, str(config.repo_path)
        )


class DirectRetrievalJob(RetrievalJob):
    """A lazy point-in-time join: the query runs on ``to_df``/``to_arrow``, like the stock job's."""

    def __init__(
        self,
        entity_df: pd.DataFrame,
        event_col: str,
        views: list[_ViewPlan],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
        repo_path: str,
    ) -> None:
        super().__init__()
        self._entity_df = entity_df
        self._event_col = event_col
        self._views = views
        self._full_feature_names = full_feature_names
        self._metadata = metadata
        self._repo_path = repo_path

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def to_sql(self) -> str:
        """The queries, one per view, over a table ``entity_df`` (entity frame + row number)."""
        return ";\n".join(_sql(v, self._event_col, i == 0) for i, v in enumerate(self._views))

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        frame = self._entity_df.assign(**{_ROW: range(len(self._entity_df))})
        n_entity = len(self._entity_df.columns)
        columns: list[pa.ChunkedArray] = []
        names: list[str] = []
        con = _database().cursor()
        try:
            con.register("entity_df", frame)
            for i, view in enumerate(self._views):
                got = con.sql(_sql(view, self._event_col, i == 0)).to_arrow_table()
                at = n_entity if i == 0 else 0  # position of the row number
                # one row per entity row, unordered: sorting in Arrow beats ORDER BY on 1,000 columns
                order = _order(got.column(at))
                if i == 0:
                    columns += [_take(c, order) for c in got.columns[:at]]
                    names += got.column_names[:at]
                feats = pa.Table.from_arrays(got.columns[at + 1 :], got.column_names[at + 1 :])
                columns += [_take(c, order) for c in feats.select([c for c, _ in view.columns]).columns]
                names += [out for _, out in view.columns]
        except duckdb.Error as exc:
            raise _explain(con, self._views, exc) from exc
        finally:
            con.close()
        return pa.Table.from_arrays(columns, names)

    def persist(
        self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None
    ) -> None:
        """Write the result where a saved dataset says, with the stock store's writer."""
        _write_data_source(
            ibis.memtable(self._to_arrow_internal(timeout)),
            storage.to_data_source(),
            self._repo_path,
            "overwrite",
            allow_overwrite,
        )


def _plan(
    feature_views: Sequence[Any],
    feature_refs: Sequence[str],
    entity_df: pd.DataFrame | str,
    full_feature_names: bool,
) -> tuple[list[_ViewPlan], pd.DataFrame, str] | None:
    """The direct join's plan, or None where only the stock store is known to be right."""
    if (
        not isinstance(entity_df, pd.DataFrame)
        or not feature_views
        or _ROW in entity_df.columns
        or entity_df.columns.duplicated().any()
    ):
        return None
    try:
        event_col = infer_event_timestamp_from_entity_df(dict(entity_df.dtypes.items()))
        entity = entity_df.copy(deep=False)
        ts = entity[event_col].infer_objects()
        if pd.api.types.is_string_dtype(ts) or pd.api.types.is_object_dtype(ts):
            ts = pd.to_datetime(ts, utc=True)
    except Exception:
        return None  # the stock store raises its own error
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        return None
    entity[event_col] = ts
    views: list[_ViewPlan] = []
    claimed: set[str] = set()
    for fv in feature_views:
        view = _view_plan(fv, feature_refs, full_feature_names, entity.columns)
        if view is None:
            return None
        views.append(view)
        claimed.update(f"{fv.projection.name_to_use()}:{c}" for c, _ in view.columns)
    outputs = [out for v in views for _, out in v.columns]
    if (
        set(feature_refs) != claimed  # refs of on-demand (or unknown) views
        or len(set(outputs)) != len(outputs)
        or set(outputs) & set(entity.columns)
    ):
        return None
    return views, entity, event_col


def _view_plan(
    fv: Any, feature_refs: Sequence[str], full_feature_names: bool, entity_columns: Any
) -> _ViewPlan | None:
    if type(fv) is not FeatureView:
        return None
    src = fv.batch_source
    if (
        type(src) is not FileSource
        or src.field_mapping
        or src.connection_ref is not None
        or "://" in src.path
        or not (
            isinstance(src.file_format, ParquetFormat)
            or (src.file_format is None and src.path.endswith(".parquet"))
        )
        or not src.timestamp_field
    ):
        return None
    prefix = fv.projection.name_to_use()
    names = list(dict.fromkeys(r.split(":")[1] for r in feature_refs if r.startswith(f"{prefix}:")))
    if not names:
        return None
    base = fv.projection.name_alias or fv.name
    join_keys = dict(fv.projection.join_key_map or {e.name: e.name for e in fv.entity_columns})
    created = src.created_timestamp_column or None
    used = {*names, *join_keys, src.timestamp_field, *([created] if created else [])}
    if not join_keys or used & _READER_COLUMNS or not set(join_keys.values()) <= set(entity_columns):
        return None
    return _ViewPlan(
        name=fv.name,
        glob=src.path,
        join_keys=join_keys,
        timestamp=src.timestamp_field,
        created=created,
        ttl=fv.ttl or None,
        columns=[(n, f"{base}__{n}" if full_feature_names else n) for n in names],
    )


def _database() -> duckdb.DuckDBPyConnection:
    """This process's in-memory DuckDB; a job takes a cursor (its own connection and names).

    Opening and closing a database costs 20-25 ms, a fifth of a 1,000-column view's join. It holds
    no tables and caches no file data or metadata (DuckDB's defaults for local files), so a join
    always reads the files as they are now.
    """
    global _DB, _DB_PID
    with _DB_LOCK:
        if _DB is None or _DB_PID != os.getpid():  # a forked child must not share the parent's
            db = duckdb.connect()
            # timestamps without a zone are UTC, as the stock (ibis) store reads them
            db.execute("SET GLOBAL TimeZone = 'UTC'")
            _DB, _DB_PID = db, os.getpid()
        return _DB


def _sql(v: _ViewPlan, event_col: str, with_entity: bool) -> str:
    """One view's join: the winning row chosen on narrow key columns, then its features.

    Winner: the entity's patient row with the latest event timestamp ``<=`` the entity's (an ASOF
    join), among rows of that event the newest created timestamp, as Feast's dedup orders them;
    file name and row number only make exact ties deterministic. Carrying the feature columns
    through the ASOF join instead would be several times slower for 1,000-column views. A long
    column list is read as ``f.*`` and cut to the requested columns in Arrow: DuckDB binds each
    listed name in time linear in the file's width (75 ms for 1,065 of 1,071 columns vs 25 ms).
    """
    src = f"read_parquet({_lit(v.glob)}, filename = true, file_row_number = true)"
    keys = ", ".join(_q(k) for k in v.join_keys)
    newest = f"{_q(v.created)} DESC NULLS LAST, " if v.created else ""
    on = " AND ".join(f"e.{_q(ent)} = k.{_q(col)}" for col, ent in v.join_keys.items())
    not_null = " AND ".join(f"{_q(k)} IS NOT NULL" for k in (*v.join_keys, v.timestamp))
    event = f"CAST(e.{_q(event_col)} AS TIMESTAMPTZ)"
    ttl = ""
    if v.ttl:
        ttl = f" AND k.__ts >= {event} - to_microseconds({v.ttl // timedelta(microseconds=1)})"
    features = (
        "f.*" if len(v.columns) >= _STAR_FROM else ", ".join(f"f.{_q(c)}" for c, _ in v.columns)
    )
    return f"""
        WITH k AS (
            SELECT {keys}, CAST({_q(v.timestamp)} AS TIMESTAMPTZ) AS __ts, filename, file_row_number
            FROM {src} WHERE {not_null}
            QUALIFY row_number() OVER (
                PARTITION BY {keys}, {_q(v.timestamp)}
                ORDER BY {newest}filename DESC, file_row_number DESC) = 1
        )
        SELECT {"e.*" if with_entity else f"e.{_q(_ROW)}"}, {features}
        FROM entity_df e
        ASOF LEFT JOIN k ON {on} AND {event} >= k.__ts
        LEFT JOIN {src} f
          ON f.filename = k.filename AND f.file_row_number = k.file_row_number{ttl}"""


def _order(rows: pa.ChunkedArray) -> pa.Array | None:
    """The permutation that puts a result in entity order; None if it already is (the usual case)."""
    if pc.all(pc.equal(rows, pa.array(range(len(rows)), rows.type))).as_py() is not False:
        return None
    return pc.sort_indices(rows)


def _take(column: pa.ChunkedArray, order: pa.Array | None) -> pa.ChunkedArray:
    return column if order is None else column.take(order)


def _explain(con: duckdb.DuckDBPyConnection, views: Sequence[_ViewPlan], exc: Exception) -> Exception:
    """An atrx error naming the view whose files are missing or lack a column, if one is."""
    for v in views:
        try:
            names = set(con.sql(f"DESCRIBE SELECT * FROM read_parquet({_lit(v.glob)})").df()["column_name"])
        except duckdb.IOException:
            return NoPartsError(
                f"view {v.name!r}: no Parquet files match {v.glob}",
                fix="write them (`atrx features`), or re-apply the view's version",
            )
        except duckdb.Error:
            continue
        needed = [*v.join_keys, v.timestamp, *([v.created] if v.created else []), *(c for c, _ in v.columns)]
        missing = [c for c in needed if c not in names]
        if missing:
            return OfflineSchemaError(f"view {v.name!r}: columns {missing[:5]} are not in {v.glob}")
    return ServiceError(f"the DuckDB point-in-time join failed: {exc}")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
