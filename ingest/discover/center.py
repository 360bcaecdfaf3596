"""Plan a center: find its patients, join the clinical sheet, plan each patient's studies.

The entry point of discovery (:func:`plan_center`); the DICOM and file sides plan each patient's
studies, and what no single patient shows (duplicates across folders, rows without images) is
checked here across the whole center.
"""

from __future__ import annotations

import re
import traceback
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from atrx.config.center import CenterConfig
from atrx.errors import DEBUG_ENV, debug_enabled
from atrx.names import SOURCE_MASKS
from ingest.clinical import ClinicalSheetError, ClinicalSheetResult, parse_clinical
from ingest.deid import pseudonymise_patient
from ingest.discover.dicom import drop_identical_copies, plan_dicom_patient
from ingest.discover.files import check_masks, plan_file_patient
from ingest.discover.plan import (
    CenterPlan,
    PatientPlan,
    Problem,
    StudyPlan,
    output_size,
    relative,
    source_label,
)
from ingest.discover.redact import center_redactor, patient_redactor

__all__ = ["plan_center"]


def plan_center(cfg: CenterConfig, key: str, read_masks: bool = True, spacing_mm: float = 1.0) -> CenterPlan:
    """Find every patient of a center and decide what would be ingested, without writing anything.

    ``read_masks`` False skips reading the mask files (headers only). ``spacing_mm`` is the
    preprocessing's output spacing, which sizes the grid checked against ``cfg.max_voxels``.
    """
    problems: list[Problem] = []
    root = cfg.source_path
    clinical: ClinicalSheetResult | None = None
    cell_problems: dict[str | None, list[Problem]] = defaultdict(list)
    try:
        clinical = parse_clinical(cfg.clinical_path, cfg.clinical)
        for cp in clinical.problems:
            cell_problems[cp.raw_id].append(Problem(
                cp.raw_id, f"clinical row {cp.row}, column {cp.column!r}: {cp.message}", cp.fix,
                relative(cfg.clinical_path, root), stage="clinical"))
        problems.extend(Problem(None, note, "nothing to do if these are the codes you meant; otherwise add exact "
                                "entries under clinical.values", relative(cfg.clinical_path, root),
                                blocking=False, stage="clinical") for note in clinical.notes)
    except ClinicalSheetError as e:
        problems.append(Problem(None, str(e), e.fix or "fix the clinical sheet or the clinical section of "
                                "the center file", relative(cfg.clinical_path, root), stage="clinical"))

    rx = re.compile(cfg.patients.id_regex)
    entries: dict[str, list[Path]] = defaultdict(list)
    unmatched: list[Path] = []
    for entry in sorted(root.glob(cfg.patients.glob)):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        m = rx.search(entry.name)
        if not m:
            unmatched.append(entry)
            problems.append(Problem(None, f"folder {entry.name!r} does not match patients.id_regex; skipped",
                                    "rename it or widen patients.id_regex", entry.name, blocking=False))
            continue
        entries[m["patient"]].append(entry)
    if not entries:
        problems.append(Problem(None, f"no patient folders match {cfg.patients.glob!r} under {root}",
                                "check source and patients.glob"))
    folders_seen = {raw: list(folders) for raw, folders in entries.items()}  # copies too, for the redactor
    clinical_ids = set(clinical.records) | clinical.rejected if clinical else set()
    # a byte-identical copy of a folder (``P013 - Copy``) is processed once, noted on the one kept
    copies = drop_identical_copies(entries, clinical_ids) if cfg.sequences.is_dicom else {}

    plans: list[PatientPlan] = []
    for raw_id, folders in entries.items():
        plan = PatientPlan(raw_id, pseudonymise_patient(cfg.center, raw_id, key), str(folders[0]))
        plans.append(plan)
        for note in copies.get(raw_id, []):
            plan.refuse(note, "none needed (byte-identical copies); remove the copy to silence this note",
                        blocking=False)
        if len(folders) > 1:
            plan.refuse(f"duplicate patient: id {raw_id!r} is in {len(folders)} folders "
                        f"{[f.name for f in folders]}", "keep one folder per patient (merge or remove the others)")
            continue
        if clinical is not None:
            if raw_id in clinical.records:
                plan.clinical = clinical.records[raw_id]
            elif raw_id in clinical.rejected:
                plan.problems.extend(cell_problems.pop(raw_id, []))
            else:
                plan.refuse("no row in the clinical sheet",
                            f"add a row whose {cfg.clinical.columns['patient_id']!r} is the patient's raw id "
                            f"({raw_id}; `atrx center validate` shows it)", relative(cfg.clinical_path, root))
        else:
            plan.refuse("no clinical data (the sheet could not be read)", "fix the clinical sheet")
        try:
            _plan_images(cfg, plan, folders[0], key, read_masks, spacing_mm)
        except Exception as e:  # one patient's odd headers never stop the center's plan
            if debug_enabled():
                raise
            where = traceback.format_exc(limit=-1).strip().splitlines()[-2].strip()[:200]
            plan.refuse(f"unexpected error while planning this patient: {type(e).__name__}: {e} "
                        f"(at {where})", f"report it with this message; set {DEBUG_ENV}=1 to see the full traceback")

    _flag_duplicate_headers(plans)
    for leftovers in cell_problems.values():  # rows of patients without a folder: notes only
        problems.extend(Problem(p.patient, p.what, p.fix, p.file, blocking=False, stage=p.stage) for p in leftovers)
    if clinical is not None:
        for raw_id in sorted(set(clinical.records) - set(entries)):
            problems.append(Problem(raw_id, "clinical row without images", "check the export for this patient",
                                    relative(cfg.clinical_path, root), blocking=False, stage="clinical"))
    center = center_redactor(cfg, key, folders_seen, unmatched, clinical_ids)
    for plan in plans:  # after every check: they name the files the redactor must know
        plan.redactor = patient_redactor(center, cfg, plan)
    return CenterPlan(cfg, plans, problems, clinical, center)


def _plan_images(cfg: CenterConfig, plan: PatientPlan, folder: Path, key: str, read_masks: bool,
                 spacing_mm: float) -> None:
    """A patient's studies: sources chosen, dates, output grid within budget, masks read."""
    if cfg.sequences.is_dicom:
        plan_dicom_patient(cfg, plan, folder, key)
    else:
        plan_file_patient(cfg, plan, folder, key)
    _label_masks_beside(plan, folder, cfg.source_path)
    dated = any(p.what.startswith("malformed scan date") for p in plan.problems)
    for study in plan.studies:
        if study.scan_date is None and (plan.clinical is not None or cfg.sequences.is_dicom):
            if not dated:
                plan.refuse("no scan date", "map clinical.columns.scan_date or set patients.scan_date_regex "
                            "(DICOM: StudyDate is empty)")
        elif plan.clinical and study.scan_date and study.scan_date > plan.clinical.pathology_date:
            plan.refuse(f"scan date {study.scan_date} is after the pathology date "
                        f"{plan.clinical.pathology_date}; this scan cannot inform that label",
                        "expected for follow-up scans; otherwise check the dates", blocking=False)
        _check_budget(cfg, plan, study, spacing_mm)
    if read_masks and plan.ok:
        check_masks(cfg, plan)


def _check_budget(cfg: CenterConfig, plan: PatientPlan, study: StudyPlan, spacing_mm: float) -> None:
    """Refuse a study whose output grid would not fit a worker (a header spacing off by 10x, say)."""
    geo = study.geometry.get("t1c")
    if geo is None:
        return
    size = output_size(geo, spacing_mm)
    n = size[0] * size[1] * size[2]
    if n > cfg.max_voxels:
        spacing = ", ".join(f"{s:g}" for s in geo.spacing)
        plan.refuse(f"the {spacing_mm:g} mm output grid over the T1c would be {' x '.join(map(str, size))} = {n:,} "
                    f"voxels, over the budget of {cfg.max_voxels:,} (max_voxels); the T1c is "
                    f"{' x '.join(map(str, geo.size))} voxels of {spacing} mm",
                    "check the T1c header's voxel spacing (DICOM PixelSpacing / slice positions, NIfTI pixdim): "
                    "a spacing in the wrong unit makes the grid huge; if the image really is that large, raise "
                    "max_voxels in the center file",
                    relative(Path(study.t1c.files[0]).parent if study.t1c.kind == "dicom" else study.t1c.files[0],
                             cfg.source_path))


def _label_masks_beside(plan: PatientPlan, folder: Path, root: Path) -> None:
    """A mask beside the patient folder (``{source}/masks/...``) is labelled by its path in the
    export, never by its absolute path: labels are recorded (redacted) with every version."""
    for study in plan.studies:
        for role in SOURCE_MASKS:
            ref = getattr(study, role)
            if ref.kind == "file" and Path(ref.label).is_absolute():
                setattr(study, role, replace(ref, label=source_label(ref.files[0], folder, root)))


def _flag_duplicate_headers(plans: list[PatientPlan]) -> None:
    """A patient exported twice under two folder names shares its series: refuse both copies."""
    owners: dict[str, list[PatientPlan]] = defaultdict(list)
    for plan in plans:
        for study in plan.studies:
            for ref in (study.t1c, study.t2f):
                if ref.series_uid:
                    owners[ref.series_uid].append(plan)
    for members in owners.values():
        unique = {id(p): p for p in members}
        if len(unique) > 1:
            names = sorted(p.raw_id for p in unique.values())
            for p in unique.values():
                if not any("duplicate patient" in q.what for q in p.problems):
                    p.refuse(f"duplicate patient: the same series is also exported under {names}",
                             "keep one copy of this patient")
