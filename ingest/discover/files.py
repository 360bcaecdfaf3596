"""The file side of a plan: globs, image headers, one study per NIfTI/NRRD patient, mask checks.

Masks are files in every format (DICOM centers too), so the check that reads them is here: it is
the one place a plan reads voxels, to refuse an empty mask or one drawn on another grid.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from atrx.config.base import PLACEHOLDER_RE, split_source
from atrx.config.center import CenterConfig, MaskRule, SequenceRule
from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.deid import pseudonymise_study
from ingest.discover.plan import Geometry, PatientPlan, SourceRef, StudyPlan, relative, source_label
from ingest.masks import check_mask, itk_reason

__all__ = ["check_masks", "expand_glob", "file_geometry", "glob_files", "inside_source", "mask_fits",
           "plan_file_patient"]



def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (source hashes, duplicate detection)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def file_geometry(path: str) -> Geometry:
    """The grid of an image file from its header alone; anything but 3-D is a ValueError."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) != 3:
        raise ValueError(f"expected a 3D image, found {len(size)}D")
    return Geometry(tuple(size), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _globs(pattern: str | Sequence[str] | None) -> tuple[str, ...]:
    return () if pattern is None else (pattern,) if isinstance(pattern, str) else tuple(pattern)


def expand_glob(pattern: str, raw_id: str, folder: Path, root: Path, literal: bool = True) -> tuple[Path, str]:
    """``(base folder, glob under it)`` for one patient: ``{source}/`` starts at the export root.

    ``{patient}`` and ``{folder}`` are escaped (``literal``), so an id like ``P[1]`` matches
    itself and not ``P1``; ``literal`` False gives the text a message shows.
    """
    anchored, rest = split_source(pattern)
    names = {"patient": raw_id, "folder": folder.name}
    text = PLACEHOLDER_RE.sub(lambda m: glob.escape(names[m[1]]) if literal else names[m[1]], rest)
    return (root if anchored else folder), text


def inside_source(path: Path, root: Path) -> bool:
    """Whether ``path``, links resolved, lies under the resolved ``root`` (links out are not followed)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def glob_files(folder: Path, pattern: str | Sequence[str], what: str, plan: PatientPlan, root: Path) -> list[Path]:
    """Files matching ``pattern`` (a glob or a list of them, unioned) for this patient, sorted.

    Globs are relative to ``folder`` unless they start with ``{source}/``; none matching is a
    problem naming ``what``, and a match that leads outside ``source`` (a link) is refused, not read.
    """
    found: set[Path] = set()
    shown: list[str] = []
    for pat in _globs(pattern):
        base, rel = expand_glob(pat, plan.raw_id, folder, root)
        found.update(p for p in base.glob(rel) if p.is_file())
        text = expand_glob(pat, plan.raw_id, folder, root, literal=False)[1]
        shown.append(f"{text!r} under source" if base == root else f"{text!r} in the patient's folder")
    inside = []
    for p in sorted(found):
        if inside_source(p, root):
            inside.append(p)
        else:
            plan.refuse(f"{what}: {relative(p, root)} leads outside source (a link to {_target(p)}); not followed",
                        "copy the file into the export, or point source at a folder that holds it",
                        relative(p, root))
    if not found:
        plan.refuse(f"missing {what}: nothing matches {' or '.join(shown)}",
                    f"add the file or fix the glob of {what} in the center file", relative(folder, root))
    return inside


def _target(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return "a link loop"


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
            g = file_geometry(str(chosen[seq]))
        except (RuntimeError, ValueError) as e:
            plan.refuse(f"unreadable image file ({itk_reason(e, paths=[chosen[seq]])})",
                        "re-export the file (it may be truncated, not NIfTI/NRRD, or have a singular orientation "
                        "matrix)", relative(chosen[seq], root))
            continue
        if why := g.problem():
            plan.refuse(f"{seq} image: {why}", "re-export the file with a valid orientation (affine) and spacing",
                        relative(chosen[seq], root))
        else:
            geo[seq] = g
    if len(geo) < 2:
        return
    labels = {role: source_label(chosen[role], folder, root) for role in chosen}
    scan_date = _scan_date(cfg, plan, labels["t1c"])
    refs = {role: SourceRef("file", (str(chosen[role]),), labels[role]) for role in chosen}
    plan.studies.append(StudyPlan(
        study_id=pseudonymise_study(cfg.center, plan.raw_id, f"date:{scan_date}", key), scan_date=scan_date,
        t1c=refs["t1c"], t2f=refs["t2f"], lesion=refs["lesion"], tumor=refs["tumor"], geometry=geo,
    ))


def _scan_date(cfg: CenterConfig, plan: PatientPlan, label: str) -> dt.date | None:
    """The date ``patients.scan_date_regex`` finds in the T1c's path, else the clinical sheet's."""
    scan_date = plan.clinical.scan_date if plan.clinical else None
    m = re.search(cfg.patients.scan_date_regex, label) if cfg.patients.scan_date_regex else None
    if m is None or m["date"] is None:
        return scan_date
    text = m["date"]
    try:
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        plan.refuse(f"malformed scan date: patients.scan_date_regex takes {text!r} from {label!r}, which is not a "
                    "date (YYYYMMDD, e.g. 20200131)",
                    "fix the folder or file name, or make the regex's date group take the eight digits of the "
                    r"date, e.g. ses-(?P<date>\d{8})")
        return None


def check_masks(cfg: CenterConfig, plan: PatientPlan) -> None:
    """Read each planned mask: on its sequence's grid (or cropped from it, Slicer-style), its ROI present.

    The checks are :func:`ingest.masks.check_mask`, the code the ingest reads masks with.
    """
    root = cfg.source_path
    for study in plan.studies:
        for name in SOURCE_MASKS:
            rule: MaskRule = getattr(cfg.masks, name)
            path = getattr(study, name).files[0]
            for f in check_mask(path, rule, study.geometry.get(rule.space), name, plan.raw_id):
                plan.refuse(f.what, f.fix, relative(path, root), blocking=f.blocking)
