"""Writing and reading the Parquet offline store, and the point-in-time join done directly in DuckDB.

Feast only reads these files; everything that writes them goes through :func:`write_offline` (or
the clinical export), which checks the column contract (:mod:`feature_repo.schema`) so a bad frame
fails here, naming the view and column, instead of as a NULL-filled training matrix later. Nothing
here imports Feast.
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

from atrx.errors import InputError
from atrx.workspace import Workspace
from feature_repo.errors import NoPartsError, OfflineSchemaError
from feature_repo.layout import (
    CLINICAL,
    CLINICAL_FEATURES,
    CREATED_TIMESTAMP,
    EVENT_TIMESTAMP,
    FEATURE_VERSION,
    IMAGING_EXTRA_COLUMNS,
    JOIN_KEY,
    KEY_COLUMNS,
    LABELS,
    PART_PREFIX,
    PART_SUFFIX,
    part_files,
    parts_glob,
    version_dir,
)
from feature_repo.schema import require_columns, to_table, utc_timestamps

__all__ = [
    "TABULAR_VERSION",
    "OfflineSchemaError",
    "direct_point_in_time",
    "export_clinical_and_labels",
    "read_offline",
    "write_offline",
]

#: default version folder of the clinical and labels exports
TABULAR_VERSION = "v1"


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
    table = to_table(view, feature_version, frame, feature_names)
    folder = version_dir(ws, view, feature_version)
    folder.mkdir(parents=True, exist_ok=True)
    _check_matches_existing(ws, view, feature_version, table.schema)
    return _commit(folder, table)


def read_offline(ws: Workspace, view: str, feature_version: str) -> pd.DataFrame:
    """Every row of every part file of one version folder (all extractions, not deduplicated)."""
    parts = part_files(ws, view, feature_version)
    if not parts:
        raise NoPartsError(
            f"no part files in {version_dir(ws, view, feature_version)}",
            fix="write them with feature_repo.offline.write_offline (`atrx features`), or pick a "
            "version that feature_repo.layout.available_versions lists",
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
    require_columns(CLINICAL, clinical, [JOIN_KEY, *CLINICAL_FEATURES, EVENT_TIMESTAMP])
    require_columns(LABELS, labels, [JOIN_KEY, "atrx_status", "pathology_date"])
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
            EVENT_TIMESTAMP: utc_timestamps(
                LABELS, "pathology_date", labels["pathology_date"]
            ).reset_index(drop=True),
            CREATED_TIMESTAMP: created,
            FEATURE_VERSION: feature_version,
            "atrx_mutant": (status == "mutant").astype("int64").reset_index(drop=True),
            "atrx_status": status.reset_index(drop=True),
        }
    )
    tables = {
        CLINICAL: to_table(CLINICAL, feature_version, clinical_out, None),
        LABELS: to_table(LABELS, feature_version, labels_out, None),
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
        raise NoPartsError(
            f"no part files in {version_dir(ws, view, feature_version)}",
            fix="run `atrx features` first, or pick a version that has files",
        )
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
    require_columns("entity_df", entity_df, [JOIN_KEY, EVENT_TIMESTAMP])
    entity = pd.DataFrame(
        {
            "_row": np.arange(len(entity_df), dtype="int64"),
            JOIN_KEY: entity_df[JOIN_KEY].to_numpy(),
            EVENT_TIMESTAMP: utc_timestamps(
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
        raise InputError(
            f"entity_df already has columns {clash}",
            fix="drop them from entity_df, or do not request them",
        )
    return pd.concat([base, joined], axis=1)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
