"""The DuckDB catalog: what every stage took, made and refused.

Tables: ``runs``, ``scans`` (one row per study version), ``scan_sources``, ``clinical``,
``labels``, ``quarantine``, ``lineage`` (filled by the features stage), ``deid_keys`` (per center
the fingerprint of the key its patients were pseudonymised with, never the key). Only driver processes
write it, never workers (they return plain data), and each holds the file only for one short
transaction, retried while another process holds it (DuckDB allows one writer or many readers at a
time), so commands run side by side. Patient ids here are pseudonyms.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import duckdb
import pandas as pd

from atrx.dbfile import connect
from atrx.errors import NotFoundError

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, stage VARCHAR, center VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    status VARCHAR, config_hash VARCHAR, params_hash VARCHAR, versions JSON, counts JSON
);
CREATE TABLE IF NOT EXISTS scans (
    patient_id VARCHAR, center VARCHAR, study_id VARCHAR, version INTEGER, scan_date DATE,
    zarr_path VARCHAR, source_hash VARCHAR, content_hash VARCHAR, params_hash VARCHAR,
    preprocess_version VARCHAR, shape JSON, roi_voxels JSON, run_id VARCHAR, ingested_at TIMESTAMP,
    PRIMARY KEY (patient_id, study_id, version)
);
CREATE TABLE IF NOT EXISTS scan_sources (
    patient_id VARCHAR, study_id VARCHAR, version INTEGER, role VARCHAR, kind VARCHAR, label VARCHAR,
    n_files INTEGER, sha256 VARCHAR, mask_space VARCHAR, mask_labels JSON,
    PRIMARY KEY (patient_id, study_id, version, role)
);
CREATE TABLE IF NOT EXISTS clinical (
    patient_id VARCHAR PRIMARY KEY, center VARCHAR, age DOUBLE, sex VARCHAR, who_grade INTEGER,
    vasari_score DOUBLE, row_hash VARCHAR, updated_at TIMESTAMP, run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS labels (
    patient_id VARCHAR PRIMARY KEY, center VARCHAR, atrx_status VARCHAR, atrx_mutant INTEGER,
    pathology_date DATE, updated_at TIMESTAMP, run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id VARCHAR, center VARCHAR, patient_id VARCHAR, study_id VARCHAR, stage VARCHAR,
    reason VARCHAR, fix VARCHAR, file VARCHAR, blocking BOOLEAN, recorded_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS lineage (
    patient_id VARCHAR, study_id VARCHAR, scan_version INTEGER, feature_view VARCHAR,
    feature_version VARCHAR, params_hash VARCHAR, versions JSON, status VARCHAR, reason VARCHAR,
    run_id VARCHAR, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS deid_keys (
    center VARCHAR PRIMARY KEY, fingerprint VARCHAR, run_id VARCHAR, recorded_at TIMESTAMP
);
"""


#: a ROI's lineage status: ``ok`` features written; ``failed`` the data cannot give features (not
#: retried for the same feature version); ``error`` something around it broke (retried next run)
LineageStatus = Literal["ok", "failed", "error"]
#: statuses that settle a (study version, view, feature version): it is not computed again
SETTLED: Final[tuple[str, ...]] = ("ok", "failed")
RunStatus = Literal["running", "ok", "failed", "interrupted", "partial"]


@dataclass(frozen=True)
class StudyVersion:
    """The latest version of one study, as the features stage plans from it."""

    patient_id: str
    center: str
    study_id: str
    version: int
    scan_date: dt.date | None
    zarr_path: str


@dataclass(frozen=True)
class LineageRow:
    """One ROI's outcome for one feature version: what made it, and whether it gave features."""

    patient_id: str
    study_id: str
    scan_version: int
    feature_view: str
    feature_version: str
    params_hash: str | None
    versions: str | None  # JSON of the library (and weights) versions
    status: LineageStatus
    reason: str | None
    run_id: str
    created_at: dt.datetime


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``."""

    run_id: str
    stage: str
    status: str
    started_at: dt.datetime
    counts: dict[str, Any]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_run_id(stage: str) -> str:
    return f"{stage}-{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class CatalogNotFoundError(NotFoundError, FileNotFoundError):
    """The workspace has no catalog yet."""


class Catalog:
    """The catalog of a workspace, with the schema in place. Use as a context manager.

    It holds the DuckDB file only while one of its methods runs (one short transaction each), so
    other commands can read and write it while a long job keeps this object; :meth:`batch` keeps
    one connection for several calls. ``read_only`` catalogs never write.
    """

    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        if not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        elif not Path(path).exists():
            raise CatalogNotFoundError(f"no catalog at {path}",
                                       fix="run `atrx ingest` first, or check --home / $ATRX_HOME")
        if not read_only:
            with self.batch() as con:
                con.execute(_DDL)
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open between calls; kept for the context-manager habit."""
        if self._con is not None:
            self._con.close()
            self._con = None

    @contextmanager
    def batch(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection for the calls inside the block (the file is held until it ends)."""
        if self._con is not None:
            yield self._con
            return
        self._con = connect(self.path, self.read_only)
        try:
            yield self._con
        finally:
            self._con.close()
            self._con = None

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Several statements as one: all or none."""
        with self.batch() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        with self.batch() as con:
            return con.execute(sql, params or []).fetchone()

    def _all(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.batch() as con:
            return con.execute(sql, params or []).fetchall()

    def _run(self, sql: str, params: list[Any] | None = None) -> None:
        with self.batch() as con:
            con.execute(sql, params or [])

    def frame(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """The rows of one query, as a frame."""
        with self.batch() as con:
            return con.execute(sql, params or []).df()

    # runs -------------------------------------------------------------------------------------
    def start_run(self, stage: str, center: str | None, config_hash: str | None, params_hash: str | None,
                  versions: dict[str, str]) -> str:
        run_id = new_run_id(stage)
        self._run("INSERT INTO runs VALUES (?, ?, ?, ?, NULL, 'running', ?, ?, ?, NULL)",
                  [run_id, stage, center, now(), config_hash, params_hash, json.dumps(versions)])
        return run_id

    def finish_run(self, run_id: str, status: str, counts: dict[str, Any]) -> None:
        self._run("UPDATE runs SET finished_at = ?, status = ?, counts = ? WHERE run_id = ?",
                  [now(), status, json.dumps(counts), run_id])

    def last_run(self, stage: str, exclude: str | None = None) -> RunRecord | None:
        """The most recent run of ``stage`` (other than ``exclude``), or None."""
        row = self._one("SELECT run_id, stage, status, started_at, counts FROM runs WHERE stage = ? AND run_id <> ? "
                        "ORDER BY started_at DESC LIMIT 1", [stage, exclude or ""])
        if row is None:
            return None
        return RunRecord(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else {})

    def last_ok_run_started(self, stage: str, flag: str | None = None) -> dt.datetime | None:
        """Start of the last ``ok`` run of ``stage`` (whose counts have ``flag`` true, if given)."""
        sql = "SELECT max(started_at) FROM runs WHERE stage = ? AND status = 'ok'"
        params: list[Any] = [stage]
        if flag is not None:
            sql += " AND json_extract(counts, '$.' || ?)::BOOLEAN"
            params.append(flag)
        return self._one(sql, params)[0]

    # scans ------------------------------------------------------------------------------------
    def latest_scans(self, center: str) -> dict[str, tuple[int, str]]:
        """study_id -> (latest version, its source hash) for one center."""
        rows = self._all("SELECT study_id, version, source_hash FROM scans WHERE center = ? "
                         "QUALIFY row_number() OVER (PARTITION BY study_id ORDER BY version DESC) = 1", [center])
        return {r[0]: (int(r[1]), r[2]) for r in rows}

    def record_scan(self, center: str, run_id: str, outcome: dict[str, Any], params_hash: str,
                    preprocess_version: str) -> None:
        """One study version and its sources, in one transaction."""
        o = outcome
        with self._transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [o["patient_id"], center, o["study_id"], o["version"], o["scan_date"], o["zarr_path"],
                 o["source_hash"], o["content_hash"], params_hash, preprocess_version, json.dumps(o["shape"]),
                 json.dumps(o["roi_voxels"]), run_id, now()],
            )
            for role, src in o["sources"].items():
                con.execute(
                    "INSERT OR REPLACE INTO scan_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [o["patient_id"], o["study_id"], o["version"], role, src["kind"], src.get("label"),
                     src["n_files"], src["sha256"], src.get("space"), json.dumps(src.get("labels"))],
                )

    def latest_study_versions(self) -> list[StudyVersion]:
        """The latest version of every study of every center, ordered by patient and study.

        The catalog records a version only after its group was written and marked complete.
        """
        rows = self._all(
            "SELECT patient_id, center, study_id, version, scan_date, zarr_path FROM scans "
            "QUALIFY row_number() OVER (PARTITION BY patient_id, study_id ORDER BY version DESC) = 1 "
            "ORDER BY patient_id, study_id")
        return [StudyVersion(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

    def scanned_patients(self) -> set[str]:
        """Pseudonyms of every patient with at least one ingested scan."""
        return {r[0] for r in self._all("SELECT DISTINCT patient_id FROM scans")}

    # lineage ----------------------------------------------------------------------------------
    def settled_lineage(self) -> set[tuple[str, str, int, str, str]]:
        """(patient, study, scan version, view, feature version) of every settled ROI."""
        marks = ", ".join("?" for _ in SETTLED)
        rows = self._all("SELECT DISTINCT patient_id, study_id, scan_version, feature_view, feature_version "
                         f"FROM lineage WHERE status IN ({marks})", list(SETTLED))
        return {(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows}

    def record_lineage(self, rows: Iterable[LineageRow]) -> int:
        """Append lineage rows in one transaction (all or none); returns how many."""
        values = [astuple(r) for r in rows]
        if not values:
            return 0
        with self._transaction() as con:
            con.executemany("INSERT INTO lineage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return len(values)

    def lineage_ok_scans(self, view: str, feature_version: str) -> int:
        """How many study versions have features of ``view`` at ``feature_version``."""
        return int(self._one(
            "SELECT count(*) FROM (SELECT DISTINCT patient_id, study_id, scan_version FROM lineage "
            "WHERE feature_view = ? AND feature_version = ? AND status = 'ok')", [view, feature_version])[0])

    def latest_feature_versions(self) -> dict[str, str]:
        """view -> the feature version of its most recent ``ok`` lineage row."""
        rows = self._all("SELECT feature_view, feature_version FROM lineage WHERE status = 'ok' "
                         "QUALIFY row_number() OVER (PARTITION BY feature_view ORDER BY created_at DESC) = 1")
        return {r[0]: r[1] for r in rows}

    def lineage(self, run_id: str | None = None) -> pd.DataFrame:
        """Lineage rows (of one run, or all), as a frame."""
        sql = "SELECT * FROM lineage"
        params: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params.append(run_id)
        return self.frame(sql + " ORDER BY patient_id, feature_view", params)

    # clinical and labels ----------------------------------------------------------------------
    def upsert_clinical(self, center: str, run_id: str, rows: list[dict[str, Any]]) -> int:
        """Insert or update clinical values and labels in one transaction; returns how many rows changed."""
        changed = 0
        with self._transaction() as con:
            for r in rows:
                old = con.execute("SELECT row_hash FROM clinical WHERE patient_id = ?", [r["patient_id"]]).fetchone()
                if old and old[0] == r["row_hash"]:
                    continue
                changed += 1
                con.execute(
                    "INSERT OR REPLACE INTO clinical VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [r["patient_id"], center, r["age"], r["sex"], r["who_grade"], r["vasari_score"], r["row_hash"],
                     now(), run_id],
                )
                con.execute(
                    "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [r["patient_id"], center, r["atrx_status"], int(r["atrx_status"] == "mutant"),
                     r["pathology_date"], now(), run_id],
                )
        return changed

    def clinical_frame(self) -> pd.DataFrame:
        """Clinical rows of scanned patients, with the earliest scan date as ``event_timestamp`` (UTC).

        The values describe the patient at diagnosis; patients without a scan have nothing to join.
        """
        frame = self.frame(
            "SELECT c.*, s.first_scan AS event_timestamp FROM clinical c "
            "JOIN (SELECT patient_id, min(scan_date) AS first_scan FROM scans GROUP BY patient_id) s "
            "USING (patient_id) ORDER BY patient_id")
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"]).dt.tz_localize("UTC")
        return frame

    def labels_frame(self) -> pd.DataFrame:
        """Every label row (``atrx_status``, ``atrx_mutant``, ``pathology_date``, ...)."""
        return self.frame("SELECT * FROM labels ORDER BY patient_id")

    def clinical_updated_at(self) -> dt.datetime | None:
        """When a clinical or label row last changed, or None when there are none."""
        return self._one("SELECT max(u) FROM (SELECT max(updated_at) u FROM clinical "
                         "UNION ALL SELECT max(updated_at) FROM labels)")[0]

    def labelled_scanned_patients(self, limit: int | None = None) -> list[str]:
        """Patients with a label and a scan, last center first (the demo asks for a few)."""
        sql = ("SELECT patient_id FROM labels WHERE patient_id IN (SELECT patient_id FROM scans) "
               "ORDER BY center DESC, patient_id")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [r[0] for r in self._all(sql)]

    # pseudonymisation keys ------------------------------------------------------------------
    def key_fingerprint(self, center: str) -> str | None:
        """The recorded fingerprint of ``center``'s key (``ingest.deid.key_fingerprint``), or None."""
        row = self._one("SELECT fingerprint FROM deid_keys WHERE center = ?", [center])
        return row[0] if row else None

    def record_key_fingerprint(self, center: str, fingerprint: str, run_id: str | None) -> None:
        """Record (or replace) ``center``'s key fingerprint; the caller checked it may."""
        self._run("INSERT OR REPLACE INTO deid_keys VALUES (?, ?, ?, ?)", [center, fingerprint, run_id, now()])

    def center_patients(self, center: str) -> int:
        """How many pseudonymised patients of ``center`` the catalog holds (scans or clinical rows)."""
        return int(self._one("SELECT count(*) FROM (SELECT patient_id FROM scans WHERE center = ? "
                             "UNION SELECT patient_id FROM clinical WHERE center = ?)", [center, center])[0])

    # quarantine -------------------------------------------------------------------------------
    def quarantine(self, run_id: str, center: str, patient_id: str | None, study_id: str | None, stage: str,
                   reason: str, fix: str | None, file: str | None, blocking: bool = True) -> None:
        self._run("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [run_id, center, patient_id, study_id, stage, reason, fix, file, blocking, now()])

    def quarantined(self, run_id: str) -> list[dict[str, Any]]:
        with self.batch() as con:
            cur = con.execute("SELECT patient_id, study_id, stage, reason, fix, file, blocking FROM quarantine "
                              "WHERE run_id = ? ORDER BY patient_id", [run_id])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self._all(sql, params)
