"""The file side of a plan: globs, image headers, one study per NIfTI/NRRD patient, mask checks.

Masks are files in every format (DICOM centers too), so the check that reads them is here: it is
the one place a plan reads voxels, to refuse an empty mask or one drawn on another grid.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from atrx.config.center import CenterConfig, MaskRule, SequenceRule
from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.deid import pseudonymise_study
from ingest.discover.plan import Geometry, PatientPlan, SourceRef, StudyPlan, relative

__all__ = ["check_masks", "file_geometry", "glob_files", "mask_fits", "plan_file_patient"]


def file_geometry(path: str) -> Geometry:
    """The grid of an image file from its header alone; anything but 3-D is a ValueError."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) != 3:
        raise ValueError(f"expected a 3D image, found {len(size)}D")
    return Geometry(tuple(size), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def glob_files(folder: Path, pattern: str, what: str, plan: PatientPlan, root: Path) -> list[Path]:
    """Files under ``folder`` matching ``pattern``, sorted; none is a problem naming ``what``."""
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not found:
        plan.refuse(f"missing {what}: nothing matches {pattern!r} in the patient's folder",
                    f"add the file or fix the glob of {what} in the center file", relative(folder, root))
    return found


def mask_fits(mask: Path, geo: Geometry | None) -> bool:
    """Whether a mask file has the size of a series (how a mask is paired with its study)."""
    if geo is None:
        return False
    try:
        return file_geometry(str(mask)).size == geo.size
    except (RuntimeError, ValueError):
        return False


def plan_file_patient(cfg: CenterConfig, plan: PatientPlan, folder: Path, key: str) -> None:
    """Add the one study of a NIfTI/NRRD patient folder: one file per sequence and per mask."""
    root = cfg.source_path
    chosen: dict[str, Path] = {}
    for seq in SEQUENCES:
        rule: SequenceRule = getattr(cfg.sequences, seq)
        assert rule.glob is not None
        found = glob_files(folder, rule.glob, f"sequences.{seq}", plan, root)
        if len(found) > 1:
            plan.refuse(f"{len(found)} files match sequences.{seq}: {[relative(f, root) for f in found]}",
                        f"tighten sequences.{seq}.glob")
        elif found:
            chosen[seq] = found[0]
    for name in SOURCE_MASKS:
        found = glob_files(folder, getattr(cfg.masks, name).glob, f"masks.{name}", plan, root)
        if len(found) > 1:
            plan.refuse(f"{len(found)} files match masks.{name}: {[relative(f, root) for f in found]}",
                        f"tighten masks.{name}.glob")
        elif found:
            chosen[name] = found[0]
    plan.n_series = sum(1 for s in SEQUENCES if s in chosen)
    if len(chosen) < 4:
        return
    geo: dict[str, Geometry | None] = {}
    for seq in SEQUENCES:
        try:
            geo[seq] = file_geometry(str(chosen[seq]))
        except (RuntimeError, ValueError) as e:
            plan.refuse(f"unreadable image file ({str(e).splitlines()[0][:160]})",
                        "re-export the file (it may be truncated or not NIfTI/NRRD)", relative(chosen[seq], root))
    if len(geo) < 2:
        return
    scan_date = plan.clinical.scan_date if plan.clinical else None
    if cfg.patients.scan_date_regex:
        m = re.search(cfg.patients.scan_date_regex, relative(chosen["t1c"], folder))
        if m:
            scan_date = dt.datetime.strptime(m["date"], "%Y%m%d").date()
    plan.studies.append(StudyPlan(
        study_id=pseudonymise_study(cfg.center, plan.raw_id, f"date:{scan_date}", key),
        scan_date=scan_date,
        t1c=SourceRef("file", (str(chosen["t1c"]),), relative(chosen["t1c"], folder)),
        t2f=SourceRef("file", (str(chosen["t2f"]),), relative(chosen["t2f"], folder)),
        lesion=SourceRef("file", (str(chosen["lesion"]),), relative(chosen["lesion"], folder)),
        tumor=SourceRef("file", (str(chosen["tumor"]),), relative(chosen["tumor"], folder)),
        geometry=geo,
    ))



def check_masks(cfg: CenterConfig, plan: PatientPlan) -> None:
    """Read each planned mask: its geometry must equal its sequence's, and its labels must be present."""
    root = cfg.source_path
    for study in plan.studies:
        for name in SOURCE_MASKS:
            rule: MaskRule = getattr(cfg.masks, name)
            ref: SourceRef = getattr(study, name)
            path = ref.files[0]
            try:
                image = sitk.ReadImage(path)
            except RuntimeError as e:
                plan.refuse(f"unreadable mask ({str(e).splitlines()[0][:160]})",
                            "re-export the mask as NIfTI or NRRD", relative(path, root))
                continue
            expected = study.geometry.get(rule.space)
            found = Geometry(tuple(image.GetSize()), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
            if expected is not None:
                diffs = found.differences(expected)
                if diffs:
                    plan.refuse(
                        f"mask {name} does not match the geometry of {rule.space} ({'; '.join(diffs)})",
                        f"check masks.{name}.space (drawn on t1c or t2f?) or re-export the mask on the "
                        f"{rule.space} series", relative(path, root))
                    continue
            values = np.unique(sitk.GetArrayViewFromImage(image))
            present = sorted(int(v) for v in values if v != 0)
            if not set(rule.labels) & set(present):
                what = "empty mask" if not present else f"mask has labels {present}, none of {rule.labels}"
                plan.refuse(f"{what} ({name})",
                            f"re-draw the {name} mask or set masks.{name}.labels", relative(path, root))
