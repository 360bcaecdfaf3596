"""Plan a center's ingest from its config: patients, studies, chosen series, masks, clinical rows.

Only headers are read here (DICOM without pixels, NIfTI/NRRD image information), so the same
plan serves the dry run (``atrx center validate``) and the ingest. Every refusal is a
:class:`Problem` that names the patient, the file and the fix; blocking problems quarantine the
patient, the others are notes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from atrx.config.center import CenterConfig, MaskRule, SequenceRule
from ingest.clinical import ClinicalRecord, ClinicalSheetError, ClinicalSheetResult, parse_clinical
from ingest.deid import pseudonymise_patient, pseudonymise_study

NON_DICOM_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".json", ".txt", ".csv",
                      ".xlsx", ".md", ".yaml", ".yml", ".png", ".jpg")
HEADER_TAGS = ["SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription", "ProtocolName", "SequenceName",
               "ImageType", "ContrastBolusAgent", "SeriesNumber", "StudyDate", "SeriesDate", "AcquisitionDate",
               "PatientID", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
               "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Modality"]


@dataclass(frozen=True)
class Problem:
    """One refusal or note. ``patient`` is the raw id: plans are shown only to the local engineer."""

    patient: str | None
    what: str
    fix: str
    file: str | None = None
    blocking: bool = True
    stage: str = "discover"


@dataclass
class Geometry:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def differences(self, other: Geometry, tol: float = 1e-2) -> list[str]:
        """What differs beyond ``tol`` (mm for spacing and origin, cosines for direction)."""
        out = []
        if self.size != other.size:
            out.append(f"size {self.size} vs {other.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or np.max(np.abs(a - b)) > tol:
                out.append(f"{name} {tuple(np.round(a, 3))} vs {tuple(np.round(b, 3))}")
        return out


@dataclass
class SeriesInfo:
    series_uid: str
    study_uid: str
    tags: dict[str, str]
    files: list[str] = field(default_factory=list)
    positions: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.tags.get("SeriesDescription") or self.tags.get("ProtocolName") or self.series_uid[-8:]

    def geometry(self) -> Geometry | None:
        """Geometry from headers alone, as SimpleITK will build it (slices sorted along the normal)."""
        try:
            iop = [float(x) for x in self.tags["ImageOrientationPatient"].split("\\")]
            ps = [float(x) for x in self.tags["PixelSpacing"].split("\\")]
        except (KeyError, ValueError):
            return None
        row, col = np.array(iop[:3]), np.array(iop[3:])
        normal = np.cross(row, col)
        pos = np.array(self.positions, dtype=float)
        if len(pos) == 0:
            return None
        order = np.argsort(pos @ normal)
        pos = pos[order]
        dz = float(np.median(np.diff(pos @ normal))) if len(pos) > 1 else 1.0
        direction = tuple(np.column_stack([row, col, normal]).ravel().tolist())
        return Geometry(
            size=(int(self.tags["Columns"]), int(self.tags["Rows"]), len(pos)),
            spacing=(ps[1], ps[0], abs(dz)),
            origin=tuple(pos[0].tolist()),
            direction=direction,
        )

    def slice_gaps(self) -> str | None:
        """A description of missing or duplicated slices, or None when spacing is uniform."""
        geo_iop = self.tags.get("ImageOrientationPatient")
        if not geo_iop or len(self.positions) < 3:
            return None
        iop = np.array([float(x) for x in geo_iop.split("\\")])
        normal = np.cross(iop[:3], iop[3:])
        z = np.sort(np.array(self.positions, dtype=float) @ normal)
        d = np.diff(z)
        step = float(np.median(d))
        if step <= 0 or np.any(d < 1e-3):
            return "two slices share one position (a duplicated or mixed series)"
        bad = np.where(np.abs(d - step) > 0.1 * step)[0]
        if len(bad):
            return f"slice spacing jumps from {step:.2f} mm to {d[bad[0]]:.2f} mm after slice {bad[0] + 1} (a missing slice)"
        return None


@dataclass(frozen=True)
class SourceRef:
    """The files of one sequence or mask; ``label`` is what the engineer recognises (description, name)."""

    kind: str  # "dicom" | "file"
    files: tuple[str, ...]
    label: str
    series_uid: str | None = None


@dataclass
class StudyPlan:
    study_id: str
    scan_date: dt.date | None
    t1c: SourceRef
    t2f: SourceRef
    lesion: SourceRef
    tumor: SourceRef
    geometry: dict[str, Geometry | None] = field(default_factory=dict)


@dataclass
class PatientPlan:
    raw_id: str
    patient_id: str
    folder: str
    studies: list[StudyPlan] = field(default_factory=list)
    clinical: ClinicalRecord | None = None
    problems: list[Problem] = field(default_factory=list)
    n_series: int = 0

    @property
    def ok(self) -> bool:
        return not any(p.blocking for p in self.problems)

    def refuse(self, what: str, fix: str, file: str | None = None, blocking: bool = True) -> None:
        self.problems.append(Problem(self.raw_id, what, fix, file, blocking))


@dataclass
class CenterPlan:
    config: CenterConfig
    patients: list[PatientPlan]
    problems: list[Problem]
    clinical: ClinicalSheetResult | None

    @property
    def blocking(self) -> list[Problem]:
        return [p for p in self.all_problems() if p.blocking]

    def all_problems(self) -> list[Problem]:
        return self.problems + [p for pp in self.patients for p in pp.problems]

    def counts(self) -> dict[str, int]:
        ok = [p for p in self.patients if p.ok]
        return {
            "patients": len(self.patients),
            "patients_ready": len(ok),
            "patients_refused": len(self.patients) - len(ok),
            "studies": sum(len(p.studies) for p in ok),
            "series_seen": sum(p.n_series for p in self.patients),
            "series_matched": sum(2 * len(p.studies) for p in self.patients),
            "masks": sum(2 * len(p.studies) for p in self.patients),
            "clinical_rows": self.clinical.n_rows if self.clinical else 0,
            "clinical_rows_usable": len(self.clinical.records) if self.clinical else 0,
        }


def _rel(path: str | Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _tag_text(ds: pydicom.Dataset, key: str) -> str:
    value = ds.get(key)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    try:
        return (int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
                * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return 0


def scan_dicom_folder(folder: Path, skip: set[Path], plan: PatientPlan, root: Path) -> list[SeriesInfo]:
    """Group every DICOM file under ``folder`` by SeriesInstanceUID; unreadable files are problems."""
    series: dict[str, SeriesInfo] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path in skip or path.name.startswith(".") or path.name.lower().endswith(NON_DICOM_SUFFIXES):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            plan.refuse(f"unreadable DICOM file ({type(e).__name__})",
                        "re-export the file or remove it from the patient's folder", _rel(path, root))
            continue
        uid = _tag_text(ds, "SeriesInstanceUID")
        if not uid:
            plan.refuse("DICOM file without SeriesInstanceUID", "re-export the series", _rel(path, root))
            continue
        expected = _expected_pixel_bytes(ds)
        if expected and path.stat().st_size < expected:
            plan.refuse(f"truncated DICOM file ({path.stat().st_size} bytes, pixel data alone needs {expected})",
                        "re-export the series; the copy was cut short", _rel(path, root))
            continue
        info = series.get(uid)
        if info is None:
            tags = {k: _tag_text(ds, k) for k in HEADER_TAGS}
            info = series[uid] = SeriesInfo(uid, tags["StudyInstanceUID"], tags)
        info.files.append(str(path))
        ipp = ds.get("ImagePositionPatient")
        if ipp is not None and len(ipp) == 3:
            info.positions.append(tuple(float(x) for x in ipp))
    return list(series.values())


def _matches(rule: SequenceRule, s: SeriesInfo) -> bool:
    assert rule.dicom is not None
    if not all(re.search(rx, s.tags.get(k) or _lazy_tag(s, k)) for k, rx in rule.dicom.items()):
        return False
    return not any(re.search(rx, s.tags.get(k) or _lazy_tag(s, k)) for k, rx in (rule.exclude or {}).items())


def _lazy_tag(s: SeriesInfo, key: str) -> str:
    """A tag that is not in HEADER_TAGS is read from the series' first file on demand."""
    if key not in s.tags:
        ds = pydicom.dcmread(s.files[0], stop_before_pixels=True, specific_tags=[key])
        s.tags[key] = _tag_text(ds, key)
    return s.tags[key]


def _pick(rule: SequenceRule, found: list[SeriesInfo]) -> SeriesInfo | list[SeriesInfo]:
    if len(found) <= 1 or rule.on_multiple == "error":
        return found[0] if len(found) == 1 else found
    if rule.on_multiple == "most_slices":
        return max(found, key=lambda s: len(s.files))
    return max(found, key=lambda s: int(s.tags.get("SeriesNumber") or 0))


def _dicom_date(tags: dict[str, str]) -> dt.date | None:
    for key in ("StudyDate", "SeriesDate", "AcquisitionDate"):
        text = tags.get(key, "")
        if re.fullmatch(r"\d{8}", text):
            return dt.datetime.strptime(text, "%Y%m%d").date()
    return None


def file_geometry(path: str) -> Geometry:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) != 3:
        raise ValueError(f"expected a 3D image, found {len(size)}D")
    return Geometry(tuple(size), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _glob_one(folder: Path, pattern: str, what: str, plan: PatientPlan, root: Path) -> list[Path]:
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not found:
        plan.refuse(f"missing {what}: nothing matches {pattern!r} in the patient's folder",
                    f"add the file or fix the glob of {what} in the center file", _rel(folder, root))
    return found


def _plan_dicom(cfg: CenterConfig, plan: PatientPlan, folder: Path, key: str) -> None:
    root = cfg.source_path
    mask_files: dict[str, list[Path]] = {}
    for name in ("lesion", "tumor"):
        rule: MaskRule = getattr(cfg.masks, name)
        mask_files[name] = _glob_one(folder, rule.glob, f"masks.{name}", plan, root)
    skip = {p for files in mask_files.values() for p in files}
    series = scan_dicom_folder(folder, skip, plan, root)
    plan.n_series = len(series)
    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for s in series:
        by_study[s.study_uid].append(s)
    candidates: list[tuple[str, SeriesInfo, SeriesInfo]] = []
    misses: list[str] = []
    for study_uid, members in by_study.items():
        chosen: dict[str, SeriesInfo] = {}
        for seq in ("t1c", "t2f"):
            rule: SequenceRule = getattr(cfg.sequences, seq)
            picked = _pick(rule, [s for s in members if _matches(rule, s)])
            if isinstance(picked, list) and picked:
                plan.refuse(
                    f"{len(picked)} series match sequences.{seq}: {[s.label for s in picked]}",
                    f"tighten sequences.{seq}.dicom / exclude, or set sequences.{seq}.on_multiple",
                )
            elif isinstance(picked, SeriesInfo):
                chosen[seq] = picked
            else:
                misses.append(f"sequences.{seq} matches none of {sorted(s.label for s in members)}")
        if len(chosen) == 2:
            candidates.append((study_uid, chosen["t1c"], chosen["t2f"]))
    if not candidates:
        if not any("series match" in p.what for p in plan.problems):
            plan.refuse("missing sequence: " + "; ".join(misses or ["no DICOM series found"]),
                        "check the export, or widen the regexes under sequences in the center file")
        return
    for study_uid, t1c, t2f in candidates:
        for s, seq in ((t1c, "t1c"), (t2f, "t2f")):
            gap = s.slice_gaps()
            if gap:
                plan.refuse(f"series {s.label!r} ({seq}): {gap}", "re-export the complete series",
                            _rel(Path(s.files[0]).parent, root))
        geo = {"t1c": t1c.geometry(), "t2f": t2f.geometry()}
        masks: dict[str, Path] = {}
        for name in ("lesion", "tumor"):
            rule = getattr(cfg.masks, name)
            files = mask_files[name]
            if len(candidates) > 1 or len(files) > 1:
                files = [f for f in files if _geometry_fits(f, geo[rule.space])]
            if len(files) == 1:
                masks[name] = files[0]
            elif len(files) > 1:
                plan.refuse(f"{len(files)} files match masks.{name}: {[_rel(f, root) for f in files]}",
                            f"keep one {name} mask per study or tighten masks.{name}.glob")
        if len(masks) < 2:
            if len(candidates) > 1:
                plan.refuse("a study has no mask of its own geometry and is not ingested",
                            "add its masks, or ignore this note for follow-up scans", blocking=False)
            continue
        plan.studies.append(StudyPlan(
            study_id=pseudonymise_study(cfg.center, plan.raw_id, study_uid, key),
            scan_date=_dicom_date(t1c.tags),
            t1c=SourceRef("dicom", tuple(t1c.files), t1c.label, t1c.series_uid),
            t2f=SourceRef("dicom", tuple(t2f.files), t2f.label, t2f.series_uid),
            lesion=SourceRef("file", (str(masks["lesion"]),), _rel(masks["lesion"], folder)),
            tumor=SourceRef("file", (str(masks["tumor"]),), _rel(masks["tumor"], folder)),
            geometry=geo,
        ))


def _geometry_fits(mask: Path, geo: Geometry | None) -> bool:
    if geo is None:
        return False
    try:
        return file_geometry(str(mask)).size == geo.size
    except (RuntimeError, ValueError):
        return False


def _plan_files(cfg: CenterConfig, plan: PatientPlan, folder: Path, key: str) -> None:
    root = cfg.source_path
    chosen: dict[str, Path] = {}
    for seq in ("t1c", "t2f"):
        rule: SequenceRule = getattr(cfg.sequences, seq)
        assert rule.glob is not None
        found = _glob_one(folder, rule.glob, f"sequences.{seq}", plan, root)
        if len(found) > 1:
            plan.refuse(f"{len(found)} files match sequences.{seq}: {[_rel(f, root) for f in found]}",
                        f"tighten sequences.{seq}.glob")
        elif found:
            chosen[seq] = found[0]
    for name in ("lesion", "tumor"):
        found = _glob_one(folder, getattr(cfg.masks, name).glob, f"masks.{name}", plan, root)
        if len(found) > 1:
            plan.refuse(f"{len(found)} files match masks.{name}: {[_rel(f, root) for f in found]}",
                        f"tighten masks.{name}.glob")
        elif found:
            chosen[name] = found[0]
    plan.n_series = sum(1 for s in ("t1c", "t2f") if s in chosen)
    if len(chosen) < 4:
        return
    geo: dict[str, Geometry | None] = {}
    for seq in ("t1c", "t2f"):
        try:
            geo[seq] = file_geometry(str(chosen[seq]))
        except (RuntimeError, ValueError) as e:
            plan.refuse(f"unreadable image file ({str(e).splitlines()[0][:160]})",
                        "re-export the file (it may be truncated or not NIfTI/NRRD)", _rel(chosen[seq], root))
    if len(geo) < 2:
        return
    scan_date = plan.clinical.scan_date if plan.clinical else None
    if cfg.patients.scan_date_regex:
        m = re.search(cfg.patients.scan_date_regex, _rel(chosen["t1c"], folder))
        if m:
            scan_date = dt.datetime.strptime(m["date"], "%Y%m%d").date()
    plan.studies.append(StudyPlan(
        study_id=pseudonymise_study(cfg.center, plan.raw_id, f"date:{scan_date}", key),
        scan_date=scan_date,
        t1c=SourceRef("file", (str(chosen["t1c"]),), _rel(chosen["t1c"], folder)),
        t2f=SourceRef("file", (str(chosen["t2f"]),), _rel(chosen["t2f"], folder)),
        lesion=SourceRef("file", (str(chosen["lesion"]),), _rel(chosen["lesion"], folder)),
        tumor=SourceRef("file", (str(chosen["tumor"]),), _rel(chosen["tumor"], folder)),
        geometry=geo,
    ))


def check_masks(cfg: CenterConfig, plan: PatientPlan) -> None:
    """Read each planned mask: its geometry must equal its sequence's, and its labels must be present."""
    root = cfg.source_path
    for study in plan.studies:
        for name in ("lesion", "tumor"):
            rule: MaskRule = getattr(cfg.masks, name)
            ref: SourceRef = getattr(study, name)
            path = ref.files[0]
            try:
                image = sitk.ReadImage(path)
            except RuntimeError as e:
                plan.refuse(f"unreadable mask ({str(e).splitlines()[0][:160]})",
                            "re-export the mask as NIfTI or NRRD", _rel(path, root))
                continue
            expected = study.geometry.get(rule.space)
            found = Geometry(tuple(image.GetSize()), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
            if expected is not None:
                diffs = found.differences(expected)
                if diffs:
                    plan.refuse(
                        f"mask {name} does not match the geometry of {rule.space} ({'; '.join(diffs)})",
                        f"check masks.{name}.space (drawn on t1c or t2f?) or re-export the mask on the "
                        f"{rule.space} series", _rel(path, root))
                    continue
            values = np.unique(sitk.GetArrayViewFromImage(image))
            present = sorted(int(v) for v in values if v != 0)
            if not set(rule.labels) & set(present):
                what = "empty mask" if not present else f"mask has labels {present}, none of {rule.labels}"
                plan.refuse(f"{what} ({name})",
                            f"re-draw the {name} mask or set masks.{name}.labels", _rel(path, root))


def plan_center(cfg: CenterConfig, key: str, read_masks: bool = True) -> CenterPlan:
    """Find every patient of a center and decide what would be ingested, without writing anything."""
    problems: list[Problem] = []
    root = cfg.source_path
    clinical: ClinicalSheetResult | None = None
    cell_problems: dict[str | None, list[Problem]] = defaultdict(list)
    try:
        clinical = parse_clinical(cfg.clinical_path, cfg.clinical)
        for cp in clinical.problems:
            cell_problems[cp.raw_id].append(Problem(
                cp.raw_id, f"clinical row {cp.row}, column {cp.column!r}: {cp.message}", cp.fix,
                _rel(cfg.clinical_path, root), stage="clinical"))
    except ClinicalSheetError as e:
        problems.append(Problem(None, str(e), "fix the clinical sheet or the clinical section of the center file",
                                _rel(cfg.clinical_path, root), stage="clinical"))

    rx = re.compile(cfg.patients.id_regex)
    entries: dict[str, list[Path]] = defaultdict(list)
    for entry in sorted(root.glob(cfg.patients.glob)):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        m = rx.search(entry.name)
        if not m:
            problems.append(Problem(None, f"folder {entry.name!r} does not match patients.id_regex; skipped",
                                    "rename it or widen patients.id_regex", entry.name, blocking=False))
            continue
        entries[m["patient"]].append(entry)
    if not entries:
        problems.append(Problem(None, f"no patient folders match {cfg.patients.glob!r} under {root}",
                                "check source and patients.glob"))

    plans: list[PatientPlan] = []
    for raw_id, folders in entries.items():
        plan = PatientPlan(raw_id, pseudonymise_patient(cfg.center, raw_id, key), str(folders[0]))
        plans.append(plan)
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
                            f"({raw_id}; `atrx center validate` shows it)", _rel(cfg.clinical_path, root))
        else:
            plan.refuse("no clinical data (the sheet could not be read)", "fix the clinical sheet")
        if cfg.sequences.is_dicom:
            _plan_dicom(cfg, plan, folders[0], key)
        else:
            _plan_files(cfg, plan, folders[0], key)
        for study in plan.studies:
            if study.scan_date is None and (plan.clinical is not None or cfg.sequences.is_dicom):
                plan.refuse("no scan date", "map clinical.columns.scan_date or set patients.scan_date_regex "
                            "(DICOM: StudyDate is empty)")
            elif plan.clinical and study.scan_date > plan.clinical.pathology_date:
                plan.refuse(f"scan date {study.scan_date} is after the pathology date "
                            f"{plan.clinical.pathology_date}; this scan cannot inform that label",
                            "expected for follow-up scans; otherwise check the dates", blocking=False)
        if read_masks and plan.ok:
            check_masks(cfg, plan)

    _flag_duplicate_headers(plans)
    for leftovers in cell_problems.values():  # rows of patients without a folder: notes only
        problems.extend(Problem(p.patient, p.what, p.fix, p.file, blocking=False, stage=p.stage) for p in leftovers)
    if clinical is not None:
        for raw_id in sorted(set(clinical.records) - set(entries)):
            problems.append(Problem(raw_id, "clinical row without images", "check the export for this patient",
                                    _rel(cfg.clinical_path, root), blocking=False, stage="clinical"))
    return CenterPlan(cfg, plans, problems, clinical)


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
