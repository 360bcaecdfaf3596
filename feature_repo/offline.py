"""Writing and reading the Parquet offline store, and the point-in-time join done directly in DuckDB.

Feast only reads these files; everything that writes them goes through :func:`write_offline`, which
checks the column contract of :mod:`feature_repo.layout` so a bad frame fails here, naming the view
and column, instead of as a NULL-filled training matrix later. Nothing here imports Feast.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from atrx.workspace import Workspace
from feature_repo.layout import (
    ATRX_STATUS_VALUES,
    CLINICAL,
    CLINICAL_FEATURES,
    CREATED_TIMESTAMP,
    EVENT_TIMESTAMP,
    FEATURE_VERSION,
    IMAGING_EXTRA_COLUMNS,
    JOIN_KEY,
    KEY_COLUMNS,
    LABEL_FEATURES,
    LABELS,
    PART_PREFIX,
    PART_SUFFIX,
    SCAN_VERSION,
    SEX_VALUES,
    STUDY_ID,
    check_version,
    check_view,
    imaging_spec,
    part_files,
    parts_glob,
    version_dir,
)

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "string": pa.string(),
}
#: default version folder of the clinical and labels exports
TABULAR_VERSION = "v1"


class OfflineSchemaError(ValueError):
    """A frame or file does not follow the offline store's column contract."""


def write_offline(
    ws: Workspace,
    view: str,
    feature_version: str,
    frame: pd.DataFrame,
    feature_names: Sequence[str] | None = None,
) -> Path:
    """Validate ``frame`` and add it to ``offline/{view}/{feature_version}/`` as one new part file.

    The file appears complete or not at all (temporary file in the same folder, then
    ``os.replace``), so a concurrent Feast or DuckDB read never sees half a file. ``feature_names``,
    if given, must be exactly the frame's feature columns. A frame whose columns differ from the
    parts already in the folder is refused: a different feature set is a different version.
    """
    table = _to_table(view, feature_version, frame, feature_names)
    folder = version_dir(ws, view, feature_version)
    folder.mkdir(parents=True, exist_ok=True)
    _check_matches_existing(ws, view, feature_version, table.schema)
    return _commit(folder, table)


def read_offline(ws: Workspace, view: str, feature_version: str) -> pd.DataFrame:
    """Every row of every part file of one version folder (all extractions, not deduplicated)."""
    parts = part_files(ws, view, feature_version)
    if not parts:
        raise FileNotFoundError(
            f"no part files in {version_dir(ws, view, feature_version)}; write them with "
            "feature_repo.offline.write_offline or check feature_repo.layout.available_versions"
        )
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    return table.to_pandas()


def export_clinical_and_labels(
    ws: Workspace,
    clinical: pd.DataFrame,
    labels: pd.DataFrame,
    created_at: datetime,
    feature_version: str = TABULAR_VERSION,
) -> None:
    """Write the ``clinical`` and ``labels`` views, replacing the previous export of that version.

    ``clinical``: patient_id, age, sex, who_grade, vasari_score, event_timestamp (earliest scan
    date). ``labels``: patient_id, atrx_status ('mutant'/'wildtype'), pathology_date. Both frames are
    validated before either is written. The new part lands before the old ones are removed; a
    reader in that instant sees both, and for an unchanged event the newer ``created_timestamp``
    wins.
    """
    created = pd.Timestamp(created_at)
    created = created.tz_localize("UTC") if created.tzinfo is None else created.tz_convert("UTC")
    _require(CLINICAL, clinical, [JOIN_KEY, *CLINICAL_FEATURES, EVENT_TIMESTAMP])
    _require(LABELS, labels, [JOIN_KEY, "atrx_status", "pathology_date"])
    for view, frame in ((CLINICAL, clinical), (LABELS, labels)):
        dup = frame[JOIN_KEY][frame[JOIN_KEY].duplicated()].unique()
        if len(dup):
            raise OfflineSchemaError(
                f"{view}: patients {list(dup[:5])} appear more than once; export one row per patient"
            )
    clinical_out = clinical[[JOIN_KEY, EVENT_TIMESTAMP, *CLINICAL_FEATURES]].assign(
        **{CREATED_TIMESTAMP: created, FEATURE_VERSION: feature_version}
    )
    status = labels["atrx_status"]
    labels_out = pd.DataFrame(
        {
            JOIN_KEY: labels[JOIN_KEY].reset_index(drop=True),
            EVENT_TIMESTAMP: _utc(LABELS, "pathology_date", labels["pathology_date"]).reset_index(
                drop=True
            ),
            CREATED_TIMESTAMP: created,
            FEATURE_VERSION: feature_version,
            "atrx_mutant": (status == "mutant").astype("int64").reset_index(drop=True),
            "atrx_status": status.reset_index(drop=True),
        }
    )
    tables = {
        CLINICAL: _to_table(CLINICAL, feature_version, clinical_out, None),
        LABELS: _to_table(LABELS, feature_version, labels_out, None),
    }
    for view, table in tables.items():
        folder = version_dir(ws, view, feature_version)
        folder.mkdir(parents=True, exist_ok=True)
        previous = part_files(ws, view, feature_version)
        _commit(folder, table)
        for old in previous:
            old.unlink(missing_ok=True)


def direct_point_in_time(
    ws: Workspace,
    entity_df: pd.DataFrame,
    view: str,
    feature_version: str,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The architecture's point-in-time join in one DuckDB query over the same Parquet files.

    For each entity row (patient_id, event_timestamp): the feature row of that patient with the
    latest ``event_timestamp <= `` the entity's; among extractions of that event, the newest
    ``created_timestamp``. No look-back limit. Returns ``entity_df``'s columns, in its row order,
    then ``features`` (default: every feature column of the folder). The reference Feast is
    tested and benchmarked against.
    """
    parts = part_files(ws, view, feature_version)
    if not parts:
        raise FileNotFoundError(f"no part files in {version_dir(ws, view, feature_version)}")
    available = [
        c
        for c in pq.read_schema(parts[-1]).names
        if c not in (*KEY_COLUMNS, *IMAGING_EXTRA_COLUMNS)
    ]
    wanted = list(features) if features is not None else available
    missing = [f for f in wanted if f not in available]
    if missing:
        raise OfflineSchemaError(
            f"{view}/{feature_version}: no feature columns {missing[:5]} in {parts[-1].name}"
        )
    _require("entity_df", entity_df, [JOIN_KEY, EVENT_TIMESTAMP])
    entity = pd.DataFrame(
        {
            "_row": np.arange(len(entity_df), dtype="int64"),
            JOIN_KEY: entity_df[JOIN_KEY].to_numpy(),
            EVENT_TIMESTAMP: _utc(
                "entity_df", EVENT_TIMESTAMP, entity_df[EVENT_TIMESTAMP]
            ).reset_index(drop=True),
        }
    )
    glob = parts_glob(ws, view, feature_version).replace("'", "''")
    src = f"read_parquet('{glob}', filename = true, file_row_number = true)"
    # pick the winning row on the narrow key columns, then fetch only those rows' features:
    # an ASOF join carrying 1,000 columns is several times slower
    sql = f"""
        WITH keys AS (
            SELECT {_q(JOIN_KEY)}, {_q(EVENT_TIMESTAMP)}, filename, file_row_number
            FROM {src}
            QUALIFY row_number() OVER (
                PARTITION BY {_q(JOIN_KEY)}, {_q(EVENT_TIMESTAMP)}
                ORDER BY {_q(CREATED_TIMESTAMP)} DESC, filename DESC, file_row_number DESC) = 1
        ), hit AS (
            SELECT e._row, k.filename, k.file_row_number
            FROM entity e ASOF LEFT JOIN keys k
              ON e.{_q(JOIN_KEY)} = k.{_q(JOIN_KEY)}
             AND e.{_q(EVENT_TIMESTAMP)} >= k.{_q(EVENT_TIMESTAMP)}
        )
        SELECT {", ".join(f"f.{_q(c)}" for c in wanted)}
        FROM hit h LEFT JOIN {src} f
          ON h.filename = f.filename AND h.file_row_number = f.file_row_number
        ORDER BY h._row
    """
    con = duckdb.connect()
    try:
        con.register("entity", entity)
        joined = con.sql(sql).to_arrow_table().to_pandas()
    finally:
        con.close()
    base = entity_df.reset_index(drop=True)
    clash = [c for c in wanted if c in base.columns]
    if clash:
        raise ValueError(f"entity_df already has columns {clash}; drop them or do not request them")
    return pd.concat([base, joined], axis=1)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _require(view: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{view}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise OfflineSchemaError(
            f"{view}: frame lacks required column(s) {missing}; it needs {list(columns)}"
        )


def _utc(view: str, column: str, values: pd.Series) -> pd.Series:
    """Timestamps as UTC; naive values (and plain dates) are taken to be UTC already."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise OfflineSchemaError(
            f"{view}: column {column!r} must hold timestamps or dates, got dtype {values.dtype}"
        )
    try:
        out = pd.to_datetime(values, utc=True)
    except (TypeError, ValueError) as exc:
        raise OfflineSchemaError(
            f"{view}: column {column!r} must hold timestamps or dates ({exc})"
        ) from exc
    if out.isna().any():
        raise OfflineSchemaError(
            f"{view}: column {column!r} has {int(out.isna().sum())} missing value(s); every row "
            "needs one"
        )
    return out


def _strings(view: str, column: str, values: pd.Series, nullable: bool) -> pa.Array:
    nulls = values.isna()
    if not nullable and nulls.any():
        raise OfflineSchemaError(f"{view}: column {column!r} has missing values")
    if not values[~nulls].map(lambda v: isinstance(v, str)).all():
        raise OfflineSchemaError(f"{view}: column {column!r} must hold strings")
    return pa.array(values.astype(object).where(~nulls, None), type=pa.string())


def _numbers(view: str, column: str, values: pd.Series, dtype: str) -> pa.Array:
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise OfflineSchemaError(
            f"{view}: column {column!r} must be numeric ({dtype}), got dtype {values.dtype}"
        )
    if dtype == "int64":
        present = values.dropna()
        if not pd.api.types.is_integer_dtype(values) and not (present == np.round(present)).all():
            raise OfflineSchemaError(f"{view}: column {column!r} must hold whole numbers (int64)")
        return pa.array(values.astype("Int64"), type=pa.int64(), from_pandas=True)
    return pa.array(values.astype(dtype), type=_ARROW_TYPES[dtype], from_pandas=True)


def _feature_columns(
    view: str, frame: pd.DataFrame, fixed: Sequence[str], feature_names: Sequence[str] | None
) -> list[str]:
    spec = imaging_spec(view)
    rest = [c for c in frame.columns if c not in fixed]
    if spec is None:
        expected = list(CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES)
        if feature_names is not None and list(feature_names) != expected:
            raise OfflineSchemaError(f"{view}: its features are fixed: {expected}")
    else:
        bad = [c for c in rest if not isinstance(c, str) or not c.startswith(f"{view}__")]
        if bad:
            raise OfflineSchemaError(
                f"{view}: unexpected column(s) {bad[:5]}; imaging feature columns are canonical "
                f"names starting with '{view}__' (atrx.names), other columns are not stored"
            )
        expected = list(feature_names) if feature_names is not None else rest
        if not expected:
            raise OfflineSchemaError(f"{view}: frame has no feature columns ('{view}__...')")
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in rest if c not in expected]
    if missing or extra:
        raise OfflineSchemaError(
            f"{view}: feature columns do not match: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    return expected


def _to_table(
    view: str, feature_version: str, frame: pd.DataFrame, feature_names: Sequence[str] | None
) -> pa.Table:
    check_view(view)
    check_version(feature_version)
    imaging = imaging_spec(view) is not None
    fixed = [*KEY_COLUMNS, *(IMAGING_EXTRA_COLUMNS if imaging else ())]
    _require(view, frame, [c for c in fixed if c != FEATURE_VERSION])
    frame = frame.reset_index(drop=True)
    features = _feature_columns(view, frame, fixed, feature_names)

    if FEATURE_VERSION in frame.columns:
        other = sorted(set(frame[FEATURE_VERSION].dropna().astype(str)) - {feature_version})
        if other or frame[FEATURE_VERSION].isna().any():
            raise OfflineSchemaError(
                f"{view}: column {FEATURE_VERSION!r} holds {other or ['<missing>']} but the frame is "
                f"being written to version folder {feature_version!r}"
            )
    columns: dict[str, pa.Array] = {
        JOIN_KEY: _strings(view, JOIN_KEY, frame[JOIN_KEY], nullable=False),
        EVENT_TIMESTAMP: pa.array(_utc(view, EVENT_TIMESTAMP, frame[EVENT_TIMESTAMP])).cast(
            _TIMESTAMP, safe=False
        ),
        CREATED_TIMESTAMP: pa.array(_utc(view, CREATED_TIMESTAMP, frame[CREATED_TIMESTAMP])).cast(
            _TIMESTAMP, safe=False
        ),
        FEATURE_VERSION: pa.array([feature_version] * len(frame), type=pa.string()),
    }
    if imaging:
        columns[STUDY_ID] = _strings(view, STUDY_ID, frame[STUDY_ID], nullable=False)
        scan_version = frame[SCAN_VERSION]
        if scan_version.isna().any():
            raise OfflineSchemaError(f"{view}: column {SCAN_VERSION!r} has missing values")
        columns[SCAN_VERSION] = _numbers(view, SCAN_VERSION, scan_version, "int64")
        for name in features:
            columns[name] = _numbers(view, name, frame[name], "float32")
    else:
        dtypes = CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES
        for name in features:
            values = frame[name]
            if dtypes[name] == "string":
                columns[name] = _strings(view, name, values, nullable=view == CLINICAL)
            else:
                columns[name] = _numbers(view, name, values, dtypes[name])
        _check_tabular_values(view, frame)

    keys = frame[[JOIN_KEY]].assign(
        _e=columns[EVENT_TIMESTAMP].to_pandas(), _c=columns[CREATED_TIMESTAMP].to_pandas()
    )
    dup = keys.duplicated()
    if dup.any():
        raise OfflineSchemaError(
            f"{view}: {int(dup.sum())} row(s) repeat a (patient_id, event_timestamp, "
            f"created_timestamp) triple, e.g. patient {keys[JOIN_KEY][dup].iloc[0]!r}; "
            "which one is current would be arbitrary"
        )
    return pa.table(columns)


def _check_tabular_values(view: str, frame: pd.DataFrame) -> None:
    if view == CLINICAL:
        sex = frame["sex"].dropna()
        bad = sorted(set(sex) - SEX_VALUES)
        if bad:
            raise OfflineSchemaError(
                f"{view}: column 'sex' has {bad}; expected {sorted(SEX_VALUES)}"
            )
        return
    status = frame["atrx_status"]
    bad = sorted(set(status) - ATRX_STATUS_VALUES)
    if bad:
        raise OfflineSchemaError(
            f"{view}: column 'atrx_status' has {bad}; expected {sorted(ATRX_STATUS_VALUES)}"
        )
    mutant = frame["atrx_mutant"]
    if mutant.isna().any() or not mutant.isin([0, 1]).all():
        raise OfflineSchemaError(f"{view}: column 'atrx_mutant' must be 0 or 1 in every row")
    if ((status == "mutant").astype("int64") != mutant.astype("int64")).any():
        raise OfflineSchemaError(
            f"{view}: 'atrx_mutant' disagrees with 'atrx_status' (1 means 'mutant')"
        )


def _check_matches_existing(
    ws: Workspace, view: str, feature_version: str, schema: pa.Schema
) -> None:
    parts = part_files(ws, view, feature_version)
    if not parts:
        return
    existing = pq.read_schema(parts[-1]).remove_metadata()
    if existing.equals(schema.remove_metadata()):
        return
    missing = [n for n in existing.names if n not in schema.names]
    extra = [n for n in schema.names if n not in existing.names]
    raise OfflineSchemaError(
        f"{view}/{feature_version}: columns differ from {parts[-1]} (missing {missing[:5]}, "
        f"unexpected {extra[:5]}, or types/order differ); a different feature set is a different "
        "feature_version: write it to a new version folder"
    )


def _commit(folder: Path, table: pa.Table) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    final = folder / f"{PART_PREFIX}{stamp}-{uuid.uuid4().hex}{PART_SUFFIX}"
    # the leading dot keeps the temporary file out of the part-*.parquet glob readers use
    tmp = folder / f".tmp-{final.name}"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final
