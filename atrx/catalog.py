"""The DuckDB catalog: what every stage took, made and refused.

Tables: ``runs``, ``scans`` (one row per study version), ``scan_sources``, ``clinical``,
``labels``, ``quarantine``, ``lineage`` (filled by the features stage). Only the driver process
writes it (DuckDB has one writer); workers return plain data. Patient ids here are pseudonyms.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import duckdb

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
"""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_run_id(stage: str) -> str:
    return f"{stage}-{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class Catalog:
    """A connection to ``catalog.duckdb`` with the schema in place. Use as a context manager."""

    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        if not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        elif not Path(path).exists():
            raise FileNotFoundError(f"no catalog at {path}; run `atrx ingest` first (or check --home)")
        self.con = duckdb.connect(path, read_only=read_only)
        if not read_only:
            self.con.execute(_DDL)
            self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    # runs -------------------------------------------------------------------------------------
    def start_run(self, stage: str, center: str | None, config_hash: str | None, params_hash: str | None,
                  versions: dict[str, str]) -> str:
        run_id = new_run_id(stage)
        self.con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, NULL, 'running', ?, ?, ?, NULL)",
            [run_id, stage, center, now(), config_hash, params_hash, json.dumps(versions)],
        )
        return run_id

    def finish_run(self, run_id: str, status: str, counts: dict[str, Any]) -> None:
        self.con.execute("UPDATE runs SET finished_at = ?, status = ?, counts = ? WHERE run_id = ?",
                         [now(), status, json.dumps(counts), run_id])

    # scans ------------------------------------------------------------------------------------
    def latest_scans(self, center: str) -> dict[str, tuple[int, str]]:
        """study_id -> (latest version, its source hash) for one center."""
        rows = self.con.execute(
            "SELECT study_id, version, source_hash FROM scans WHERE center = ? "
            "QUALIFY row_number() OVER (PARTITION BY study_id ORDER BY version DESC) = 1",
            [center],
        ).fetchall()
        return {r[0]: (int(r[1]), r[2]) for r in rows}

    def record_scan(self, center: str, run_id: str, outcome: dict[str, Any], params_hash: str,
                    preprocess_version: str) -> None:
        """One study version and its sources, in one transaction."""
        o = outcome
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(
                "INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [o["patient_id"], center, o["study_id"], o["version"], o["scan_date"], o["zarr_path"],
                 o["source_hash"], o["content_hash"], params_hash, preprocess_version, json.dumps(o["shape"]),
                 json.dumps(o["roi_voxels"]), run_id, now()],
            )
            for role, src in o["sources"].items():
                self.con.execute(
                    "INSERT OR REPLACE INTO scan_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [o["patient_id"], o["study_id"], o["version"], role, src["kind"], src.get("label"),
                     src["n_files"], src["sha256"], src.get("space"), json.dumps(src.get("labels"))],
                )
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    # clinical and labels ----------------------------------------------------------------------
    def upsert_clinical(self, center: str, run_id: str, rows: list[dict[str, Any]]) -> int:
        """Insert or update clinical values and labels; returns how many rows changed."""
        changed = 0
        for r in rows:
            old = self.con.execute("SELECT row_hash FROM clinical WHERE patient_id = ?", [r["patient_id"]]).fetchone()
            if old and old[0] == r["row_hash"]:
                continue
            changed += 1
            self.con.execute(
                "INSERT OR REPLACE INTO clinical VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [r["patient_id"], center, r["age"], r["sex"], r["who_grade"], r["vasari_score"], r["row_hash"],
                 now(), run_id],
            )
            self.con.execute(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                [r["patient_id"], center, r["atrx_status"], int(r["atrx_status"] == "mutant"),
                 r["pathology_date"], now(), run_id],
            )
        return changed

    # quarantine -------------------------------------------------------------------------------
    def quarantine(self, run_id: str, center: str, patient_id: str | None, study_id: str | None, stage: str,
                   reason: str, fix: str | None, file: str | None, blocking: bool = True) -> None:
        self.con.execute(
            "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, center, patient_id, study_id, stage, reason, fix, file, blocking, now()],
        )

    def quarantined(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.con.execute(
            "SELECT patient_id, study_id, stage, reason, fix, file, blocking FROM quarantine WHERE run_id = ? "
            "ORDER BY patient_id", [run_id])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()
