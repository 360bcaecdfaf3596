"""Ingest one patient: hash, read, preprocess, write. Knows nothing of Dask.

The driver maps :func:`ingest_patient` over a cluster; the function returns outcomes (plain data)
and the driver records them in the catalog. Nothing here logs or returns a raw id: errors are
redacted before they leave.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from atrx import __version__ as atrx_version
from atrx.config.center import CenterConfig
from atrx.imagestore import read_attrs, version_path, write_version
from ingest.deid import redact_path, redact_text
from ingest.discover import PatientPlan, SourceRef, StudyPlan
from ingest.preprocess import (
    PREPROCESS_VERSION,
    PreprocessError,
    PreprocessParams,
    preprocess_study,
)
from ingest.readers import ReadError, read_image, read_mask

DEBUG_ENV = "ATRX_DEBUG"


@dataclass
class StudyOutcome:
    """What happened to one study; ``status`` is ingested, unchanged, recovered or quarantined."""

    patient_id: str
    study_id: str
    status: str
    version: int | None = None
    scan_date: dt.date | None = None
    zarr_path: str | None = None
    source_hash: str | None = None
    content_hash: str | None = None
    shape: list[int] | None = None
    roi_voxels: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None
    fix: str | None = None
    file: str | None = None
    stage: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KnownScan:
    """The catalog's latest version of a study, passed to the worker so unchanged input does no work."""

    version: int
    source_hash: str


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(study: StudyPlan, params_digest: str, cfg: CenterConfig) -> tuple[str, dict[str, dict[str, Any]]]:
    """Hash of every input byte of a study plus what turns them into arrays (labels, parameters)."""
    total = hashlib.sha256(f"params:{params_digest}".encode())
    sources: dict[str, dict[str, Any]] = {}
    for role in ("t1c", "t2f", "lesion", "tumor"):
        ref: SourceRef = getattr(study, role)
        h = hashlib.sha256()
        for f in sorted(ref.files):
            h.update(_file_sha256(f).encode())
        digest = h.hexdigest()
        extra = {}
        if role in ("lesion", "tumor"):
            rule = getattr(cfg.masks, role)
            extra = {"space": rule.space, "labels": rule.labels}
        sources[role] = {"sha256": digest, "n_files": len(ref.files), "kind": ref.kind, **extra}
        total.update(f"{role}:{digest}:{extra}".encode())
    return total.hexdigest(), sources


def library_versions() -> dict[str, str]:
    import zarr

    return {"atrx": atrx_version, "preprocess": PREPROCESS_VERSION, "SimpleITK": sitk.Version_VersionString(),
            "numpy": np.__version__, "zarr": zarr.__version__}


def _ingest_study(plan: PatientPlan, study: StudyPlan, cfg: CenterConfig, images_root: str,
                  params: PreprocessParams, known: KnownScan | None) -> StudyOutcome:
    t0 = time.perf_counter()
    out = StudyOutcome(plan.patient_id, study.study_id, "quarantined", scan_date=study.scan_date)
    digest, sources = source_digest(study, params.digest(), cfg)
    for role, src in sources.items():
        src["label"] = redact_text(getattr(study, role).label, plan.raw_id, plan.patient_id)
    out.source_hash, out.sources = digest, sources
    if known is not None and known.source_hash == digest:
        attrs = read_attrs(images_root, version_path(cfg.center, plan.patient_id, study.study_id, known.version))
        if attrs and attrs.get("complete") and attrs.get("source_hash") == digest:
            out.status, out.version = "unchanged", known.version
            out.zarr_path = version_path(cfg.center, plan.patient_id, study.study_id, known.version)
            out.seconds = time.perf_counter() - t0
            return out
    version = (known.version + 1) if known is not None and known.source_hash != digest else (
        known.version if known is not None else 1)
    path = version_path(cfg.center, plan.patient_id, study.study_id, version)
    attrs = read_attrs(images_root, path)
    if attrs and attrs.get("complete") and attrs.get("source_hash") == digest:
        # written completely by a run that was killed before the catalog heard of it
        out.status, out.version, out.zarr_path = "recovered", version, path
        out.content_hash, out.shape = attrs.get("content_hash"), attrs.get("shape")
        out.roi_voxels = attrs.get("roi_voxels", {})
        out.seconds = time.perf_counter() - t0
        return out

    stage = "read"
    current: SourceRef = study.t1c
    try:
        current = study.t1c
        t1c = read_image(study.t1c)
        current = study.t2f
        t2f = read_image(study.t2f)
        current = study.lesion
        lesion = read_mask(study.lesion, cfg.masks.lesion.labels)
        current = study.tumor
        tumor = read_mask(study.tumor, cfg.masks.tumor.labels)
        stage = "preprocess"
        result = preprocess_study(t1c, t2f, lesion, cfg.masks.lesion.space, tumor, cfg.masks.tumor.space, params)
    except (ReadError, PreprocessError) as e:
        out.stage, out.reason = stage, redact_text(str(e), plan.raw_id, plan.patient_id)
        out.file = redact_path(current.files[0], cfg.source_path, plan.raw_id, plan.patient_id) if stage == "read" else None
        out.fix = ("re-export the file; it could not be read" if stage == "read" else
                   "check the masks and images of this study (see the reason)")
        out.seconds = time.perf_counter() - t0
        return out

    stage = "write"
    arrays = result.arrays
    shape = list(arrays["t1c"].shape)
    roi_voxels = {k: int(arrays[k].sum()) for k in ("lesion", "tumor", "edema", "overall")}
    attrs = {
        "center": cfg.center, "patient_id": plan.patient_id, "study_id": study.study_id, "version": version,
        "scan_date": study.scan_date.isoformat() if study.scan_date else None,
        "source_hash": digest, "sources": sources, "params": params.model_dump(mode="json"),
        "params_hash": params.digest(), "steps": result.steps, "geometry": result.geometry, "shape": shape,
        "roi_voxels": roi_voxels, "versions": library_versions(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "axes": "zyx",
    }
    out.content_hash = write_version(images_root, path, arrays, attrs)
    out.status, out.version, out.zarr_path, out.shape, out.roi_voxels = "ingested", version, path, shape, roi_voxels
    out.seconds = time.perf_counter() - t0
    return out


def ingest_patient(plan: PatientPlan, cfg: CenterConfig, images_root: str, params: PreprocessParams,
                   known: dict[str, KnownScan]) -> list[StudyOutcome]:
    """Ingest every planned study of one patient; a failure quarantines that study, never raises."""
    outcomes = []
    for study in plan.studies:
        try:
            outcomes.append(_ingest_study(plan, study, cfg, images_root, params, known.get(study.study_id)))
        except Exception as e:  # the task boundary: wrap with patient and study, redact, keep going
            if os.environ.get(DEBUG_ENV):
                raise
            detail = redact_text(f"{type(e).__name__}: {e}", plan.raw_id, plan.patient_id)
            where = redact_text(traceback.format_exc(limit=-1).strip().splitlines()[-2].strip()[:200],
                                plan.raw_id, plan.patient_id)
            outcomes.append(StudyOutcome(
                plan.patient_id, study.study_id, "quarantined", scan_date=study.scan_date, stage="internal",
                reason=f"unexpected error: {detail[:400]} (at {where})",
                fix=f"report it with this message; set {DEBUG_ENV}=1 to see the full traceback"))
    return outcomes


def redacted_folder(plan: PatientPlan, cfg: CenterConfig) -> str:
    return redact_path(Path(plan.folder), cfg.source_path, plan.raw_id, plan.patient_id)
