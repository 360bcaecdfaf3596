"""Ingest one patient: hash, read, preprocess, write. Knows nothing of Dask.

The driver maps :func:`ingest_patient` over a cluster; the function returns outcomes (plain data)
and the driver records them in the catalog. Nothing here logs or returns a raw id or name: paths,
labels and errors go through the patient's :class:`~ingest.deid.Redactor` before they leave.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from atrx.config.center import CenterConfig
from atrx.errors import DEBUG_ENV, debug_enabled
from atrx.imagestore import read_attrs, version_path, write_version
from atrx.names import SEQUENCES, SOURCE_MASKS
from atrx.versions import INGEST_LIBRARIES, library_versions
from ingest.deid import Redactor
from ingest.discover import PatientPlan, SourceKind, SourceRef, StudyPlan
from ingest.discover.files import file_sha256
from ingest.discover.redact import center_redactor, patient_redactor
from ingest.preprocess import (
    PREPROCESS_VERSION,
    PreprocessedStudy,
    PreprocessError,
    PreprocessParams,
    preprocess_study,
)
from ingest.readers import ReadError, read_image, read_mask

__all__ = [
    "KnownScan",
    "OutcomeStage",
    "SourceDigest",
    "StudyOutcome",
    "StudyStatus",
    "ingest_patient",
    "ingest_versions",
    "redacted_folder",
    "redactor_of",
    "source_digest",
]

#: ``ingested`` written now; ``unchanged`` same input as the catalog's latest version, no work;
#: ``recovered`` written completely by a run killed before the catalog heard of it;
#: ``quarantined`` not ingested, ``reason`` and ``fix`` say why
StudyStatus = Literal["ingested", "unchanged", "recovered", "quarantined"]
#: where a quarantined study failed: reading its files, preprocessing, an unexpected error in
#: the task (``internal``), or the worker process itself (``worker``, set by the driver)
OutcomeStage = Literal["read", "preprocess", "internal", "worker"]
#: the roles of a study's sources, in the order their hashes are combined
ROLES: tuple[str, ...] = (*SEQUENCES, *SOURCE_MASKS)
#: the ROIs whose voxel counts are recorded with every study version
ROI_ARRAYS: tuple[str, ...] = ("lesion", "tumor", "edema", "overall")


class SourceDigest(TypedDict):
    """What one source (a sequence or a mask) contributed: its bytes' hash and how it was read."""

    sha256: str
    n_files: int
    kind: SourceKind
    space: NotRequired[str]  # masks: the sequence it was drawn on
    labels: NotRequired[list[int]]  # masks: the label values that count as inside
    segment: NotRequired[str | int]  # masks: the Slicer segment chosen (name or label value), if any
    label: NotRequired[str]  # a file's path (keyed tokens, pseudonym) or a series description's token


@dataclass
class StudyOutcome:
    """What happened to one study; what the driver records in the catalog."""

    patient_id: str
    study_id: str
    status: StudyStatus
    version: int | None = None
    scan_date: dt.date | None = None
    zarr_path: str | None = None
    source_hash: str | None = None
    content_hash: str | None = None
    shape: list[int] | None = None
    roi_voxels: dict[str, int] = field(default_factory=dict)
    sources: dict[str, SourceDigest] = field(default_factory=dict)
    reason: str | None = None
    fix: str | None = None
    file: str | None = None
    stage: OutcomeStage | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the form :meth:`atrx.catalog.Catalog.record_scan` takes)."""
        return asdict(self)


@dataclass(frozen=True)
class KnownScan:
    """The catalog's latest version of a study, passed to the worker so unchanged input does no work."""

    version: int
    source_hash: str


def source_digest(study: StudyPlan, params_digest: str, cfg: CenterConfig) -> tuple[str, dict[str, SourceDigest]]:
    """Hash of every input byte of a study plus what turns them into arrays (labels, parameters)."""
    total = hashlib.sha256(f"params:{params_digest}".encode())
    sources: dict[str, SourceDigest] = {}
    for role in ROLES:
        ref: SourceRef = getattr(study, role)
        h = hashlib.sha256()
        for f in sorted(ref.files):
            h.update(file_sha256(f).encode())
        digest = h.hexdigest()
        extra = {}
        if role in SOURCE_MASKS:
            rule = getattr(cfg.masks, role)
            extra = {"space": rule.space, "labels": rule.labels}
            if getattr(rule, "segment", None) is not None:  # only then: hashes without it stay as they were
                extra["segment"] = rule.segment
        sources[role] = {"sha256": digest, "n_files": len(ref.files), "kind": ref.kind, **extra}
        total.update(f"{role}:{digest}:{extra}".encode())
    return total.hexdigest(), sources


def ingest_versions() -> dict[str, str]:
    """The versions written with every ingest run and study version (atrx, preprocess, libraries)."""
    versions = library_versions(INGEST_LIBRARIES, atrx=True)
    return {"atrx": versions.pop("atrx"), "preprocess": PREPROCESS_VERSION, **versions}


def _stored(images_root: str, path: str, digest: str) -> dict[str, Any] | None:
    """The attributes at ``path`` when they hold a complete version of exactly this input."""
    attrs = read_attrs(images_root, path)
    if attrs and attrs.get("complete") and attrs.get("source_hash") == digest:
        return attrs
    return None


def _preprocess(plan: PatientPlan, study: StudyPlan, cfg: CenterConfig, params: PreprocessParams,
                out: StudyOutcome) -> PreprocessedStudy | None:
    """Read and preprocess one study; a bad file or degenerate data quarantines ``out``."""
    stage: OutcomeStage = "read"
    current: SourceRef = study.t1c
    try:
        t1c = read_image(study.t1c)
        current = study.t2f
        t2f = read_image(study.t2f)
        images = {"t1c": t1c, "t2f": t2f}
        current = study.lesion
        lesion = read_mask(study.lesion, cfg.masks.lesion, images[cfg.masks.lesion.space], "lesion")
        current = study.tumor
        tumor = read_mask(study.tumor, cfg.masks.tumor, images[cfg.masks.tumor.space], "tumor")
        stage = "preprocess"
        return preprocess_study(t1c, t2f, lesion, cfg.masks.lesion.space, tumor, cfg.masks.tumor.space,
                                params)
    except (ReadError, PreprocessError) as e:
        red = redactor_of(plan, cfg)
        out.stage, out.reason = stage, red.text(str(e))
        out.file = red.path(current.files[0]) if stage == "read" else None
        default = ("re-export the file; it could not be read" if stage == "read" else
                   "check the masks and images of this study (see the reason)")
        out.fix = red.text(e.fix) if e.fix else default
        return None


def _ingest_study(plan: PatientPlan, study: StudyPlan, cfg: CenterConfig, images_root: str,
                  params: PreprocessParams, known: KnownScan | None) -> StudyOutcome:
    t0 = time.perf_counter()
    out = StudyOutcome(plan.patient_id, study.study_id, "quarantined", scan_date=study.scan_date)
    digest, sources = source_digest(study, params.digest(), cfg)
    red = redactor_of(plan, cfg)
    for role, src in sources.items():
        ref: SourceRef = getattr(study, role)
        src["label"] = red.source_label(ref.kind, ref.label)
    out.source_hash, out.sources = digest, sources
    if known is not None and known.source_hash == digest:
        path = version_path(cfg.center, plan.patient_id, study.study_id, known.version)
        if _stored(images_root, path, digest):
            out.status, out.version, out.zarr_path = "unchanged", known.version, path
            out.seconds = time.perf_counter() - t0
            return out
    version = (known.version + 1) if known is not None and known.source_hash != digest else (
        known.version if known is not None else 1)
    path = version_path(cfg.center, plan.patient_id, study.study_id, version)
    attrs = _stored(images_root, path, digest)
    if attrs:
        # written completely by a run that was killed before the catalog heard of it
        out.status, out.version, out.zarr_path = "recovered", version, path
        out.content_hash, out.shape = attrs.get("content_hash"), attrs.get("shape")
        out.roi_voxels = attrs.get("roi_voxels", {})
        out.seconds = time.perf_counter() - t0
        return out

    result = _preprocess(plan, study, cfg, params, out)
    if result is None:
        out.seconds = time.perf_counter() - t0
        return out
    arrays = result.arrays
    shape = list(arrays["t1c"].shape)
    roi_voxels = {k: int(arrays[k].sum()) for k in ROI_ARRAYS}
    attrs = {
        "center": cfg.center, "patient_id": plan.patient_id, "study_id": study.study_id, "version": version,
        "scan_date": study.scan_date.isoformat() if study.scan_date else None,
        "source_hash": digest, "sources": sources, "params": params.model_dump(mode="json"),
        "params_hash": params.digest(), "steps": result.steps, "geometry": result.geometry, "shape": shape,
        "roi_voxels": roi_voxels, "versions": ingest_versions(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "axes": "zyx",
    }
    out.content_hash = write_version(images_root, path, arrays, attrs)
    out.status, out.version, out.zarr_path, out.shape, out.roi_voxels = "ingested", version, path, shape, roi_voxels
    out.seconds = time.perf_counter() - t0
    return out


def ingest_patient(plan: PatientPlan, cfg: CenterConfig, images_root: str, params: PreprocessParams,
                   known: dict[str, KnownScan]) -> list[StudyOutcome]:
    """Ingest every planned study of one patient; a failure quarantines that study, never raises.

    Unreadable files and degenerate data are verdicts on the data (stage ``read`` or
    ``preprocess``). Anything else is a bug: wrapped with patient and study into an ``internal``
    quarantine row, or, with ``ATRX_DEBUG=1``, raised as it is so its own traceback is seen.
    """
    outcomes = []
    for study in plan.studies:
        try:
            outcomes.append(_ingest_study(plan, study, cfg, images_root, params, known.get(study.study_id)))
        except Exception as e:  # the task boundary: wrap with patient and study, redact, keep going
            if debug_enabled():
                raise
            red = redactor_of(plan, cfg)
            detail = red.text(f"{type(e).__name__}: {e}")
            where = red.text(traceback.format_exc(limit=-1).strip().splitlines()[-2].strip())[:200]
            outcomes.append(StudyOutcome(
                plan.patient_id, study.study_id, "quarantined", scan_date=study.scan_date, stage="internal",
                reason=f"unexpected error: {detail[:400]} (at {where})",
                fix=f"report it with this message; set {DEBUG_ENV}=1 to see the full traceback"))
    return outcomes


def redacted_folder(plan: PatientPlan, cfg: CenterConfig) -> str:
    """The patient's folder as recorded: its pseudonym, under the export's folders' tokens."""
    return redactor_of(plan, cfg).path(plan.folder)


def redactor_of(plan: PatientPlan, cfg: CenterConfig) -> Redactor:
    """The plan's redactor; one built here for a plan made by hand (tests), from the center's key."""
    if plan.redactor is None:
        center = center_redactor(cfg, cfg.deid.resolve_key(), {plan.raw_id: [Path(plan.folder)]}, [])
        plan.redactor = patient_redactor(center, cfg, plan)
    return plan.redactor
