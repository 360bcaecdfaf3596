"""The DICOM side of a plan: group a patient's files into series and choose each study's series.

Headers only (``stop_before_pixels``): a series' geometry, slice gaps and tags come from its
files' headers, so planning a center does not read its pixels (one file of a compressed series
is decoded, to know the ingest can). Copies are processed once (:mod:`ingest.discover.copies`).
Stray files (``DICOMDIR``,
``LOCKFILE``, ``.DS_Store``, text) are noted, compressed pixel data is checked by its transfer
syntax, and broken orientation or date headers refuse the patient (:mod:`ingest.discover.dicom_input`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from atrx.config.center import CenterConfig, MaskRule, SequenceRule
from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.deid import pseudonymise_study
from ingest.discover.copies import (
    NON_DICOM_SUFFIXES,
    FolderCopy,
    Instances,
    drop_identical_copies,
    identical_folders,
    tag_text,
)
from ingest.discover.dicom_input import (
    DICOMDIR_UID,
    UNCOMPRESSED_FIX,
    decode_problem,
    dicom_date,
    is_stray,
    is_text,
    lossy,
    orientation_problem,
    pixel_problem,
    syntax_name,
    transfer_syntax,
)
from ingest.discover.files import glob_files, inside_source, mask_fits
from ingest.discover.plan import Geometry, PatientPlan, SourceRef, StudyPlan, relative
from ingest.masks import crop_fits

__all__ = ["HEADER_TAGS", "NON_DICOM_SUFFIXES", "FolderCopy", "SeriesInfo", "drop_identical_copies",
           "identical_folders", "plan_dicom_patient", "scan_dicom_folder"]

HEADER_TAGS = ["SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription", "ProtocolName", "SequenceName",
               "ImageType", "ContrastBolusAgent", "SeriesNumber", "StudyDate", "SeriesDate", "AcquisitionDate",
               "PatientID", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
               "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Modality", "SOPInstanceUID"]


@dataclass
class SeriesInfo:
    """One DICOM series as its headers describe it: tags of its first file, files, slice positions."""

    series_uid: str
    study_uid: str
    tags: dict[str, str]
    files: list[str] = field(default_factory=list)
    positions: list[tuple[float, float, float]] = field(default_factory=list)
    #: transfer syntax UID -> one of the series' files stored so
    syntaxes: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What the engineer recognises: the description, the protocol, or the UID's tail."""
        return self.tags.get("SeriesDescription") or self.tags.get("ProtocolName") or self.series_uid[-8:]

    def header_problem(self) -> str | None:
        """Why the headers cannot give this series a geometry (orientation, spacing, positions), or None."""
        why = orientation_problem(self.tags)
        if why is None and len(self.positions) != len(self.files):
            why = (f"{len(self.files) - len(self.positions)} of its {len(self.files)} files have no usable "
                   "ImagePositionPatient (three numbers)")
        return why

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



def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    try:
        return (int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
                * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return 0


def scan_dicom_folder(folder: Path, skip: set[Path], plan: PatientPlan, root: Path) -> list[SeriesInfo]:
    """Group every DICOM file under ``folder`` by SeriesInstanceUID; unreadable files are problems.

    An instance seen twice (same SOPInstanceUID) is used once: a byte-identical copy is a note,
    a different file a refusal.
    """
    series: dict[str, SeriesInfo] = {}
    instances = Instances()
    strays: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path in skip:
            continue
        if is_stray(path):
            strays.append(path)
            continue
        if not inside_source(path, root):
            plan.refuse(f"{relative(path, root)} leads outside source (a link); not followed",
                        "copy the file into the export, or point source at a folder that holds it",
                        relative(path, root))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except InvalidDicomError as e:
            if is_text(path):  # a lock file, a VERSION or a note without a suffix
                strays.append(path)
                continue
            plan.refuse(f"unreadable DICOM file ({type(e).__name__}: no DICM marker)",
                        "re-export the file, or remove it from the patient's folder if it is not an image",
                        relative(path, root))
            continue
        except (OSError, ValueError, EOFError) as e:
            plan.refuse(f"unreadable DICOM file ({type(e).__name__})",
                        "re-export the file or remove it from the patient's folder", relative(path, root))
            continue
        uid = tag_text(ds, "SeriesInstanceUID")
        if not uid and str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_UID:
            strays.append(path)  # a DICOMDIR under another name: an index, no image
            continue
        if not uid:
            plan.refuse("DICOM file without SeriesInstanceUID", "re-export the series", relative(path, root))
            continue
        bad = pixel_problem(path, ds, _expected_pixel_bytes(ds))
        if bad:
            plan.refuse(*bad, relative(path, root))
            continue
        sop = tag_text(ds, "SOPInstanceUID")
        if sop and instances.repeat(sop, path, plan, root):
            continue
        info = series.get(uid)
        if info is None:
            tags = {k: tag_text(ds, k) for k in HEADER_TAGS}
            info = series[uid] = SeriesInfo(uid, tags["StudyInstanceUID"], tags)
        info.files.append(str(path))
        info.syntaxes.setdefault(str(transfer_syntax(ds) or ""), str(path))
        ipp = ds.get("ImagePositionPatient")
        try:
            if ipp is not None and len(ipp) == 3:
                info.positions.append((float(ipp[0]), float(ipp[1]), float(ipp[2])))
        except (TypeError, ValueError):
            pass  # counted by SeriesInfo.header_problem
    instances.report(plan, root)
    _note_strays(strays, folder, plan, root)
    return list(series.values())


def _note_strays(strays: list[Path], folder: Path, plan: PatientPlan, root: Path, shown: int = 8) -> None:
    """One note naming the files that are not images of the export (they are ignored)."""
    if not strays:
        return
    names = [relative(p, folder) for p in strays]
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    plan.refuse(f"{len(names)} non-DICOM file{'s' if len(names) > 1 else ''} ignored: {listed}",
                "none needed (an index, lock or note file is not an image); remove them to silence this note",
                relative(folder, root), blocking=False)


def _matches(rule: SequenceRule, s: SeriesInfo) -> bool:
    assert rule.dicom is not None
    if not all(re.search(rx, s.tags.get(k) or _lazy_tag(s, k)) for k, rx in rule.dicom.items()):
        return False
    return not any(re.search(rx, s.tags.get(k) or _lazy_tag(s, k)) for k, rx in (rule.exclude or {}).items())


def _lazy_tag(s: SeriesInfo, key: str) -> str:
    """A tag that is not in HEADER_TAGS is read from the series' first file on demand."""
    if key not in s.tags:
        ds = pydicom.dcmread(s.files[0], stop_before_pixels=True, specific_tags=[key])
        s.tags[key] = tag_text(ds, key)
    return s.tags[key]


def _pick(rule: SequenceRule, found: list[SeriesInfo]) -> SeriesInfo | list[SeriesInfo]:
    if len(found) <= 1 or rule.on_multiple == "error":
        return found[0] if len(found) == 1 else found
    if rule.on_multiple == "most_slices":
        return max(found, key=lambda s: len(s.files))
    return max(found, key=lambda s: int(s.tags.get("SeriesNumber") or 0))


def _scan_date(s: SeriesInfo, plan: PatientPlan) -> dt.date | None:
    """The study's date from its T1c's headers; a malformed one is a refusal (or a note, if another is valid)."""
    date, bad = dicom_date(s.tags)
    if bad:
        plan.refuse(f"malformed scan date: {', '.join(bad)} of series {s.label!r} is not a date (YYYYMMDD)"
                    + (f"; {date} from the next date tag is used" if date else ""),
                    "fix the date in the export (the PACS or anonymiser wrote it)", blocking=date is None)
    return date


def _usable(s: SeriesInfo, seq: str, plan: PatientPlan, root: Path) -> bool:
    """Whether a chosen series' headers make a geometry and its pixel data can be decoded."""
    where = relative(Path(s.files[0]).parent, root)
    why = s.header_problem()
    if why:
        plan.refuse(f"series {s.label!r} ({seq}): {why}", "re-export the series; its geometry headers are broken",
                    where)
        return False
    for uid, path in s.syntaxes.items():
        if uid and UID(uid).is_compressed and (why := decode_problem(path, uid)):
            plan.refuse(f"series {s.label!r} ({seq}): {why}", UNCOMPRESSED_FIX, relative(path, root))
            return False
    lossy_ = sorted(syntax_name(u) for u in s.syntaxes if lossy(u))
    if lossy_:
        plan.refuse(f"series {s.label!r} ({seq}) is stored with possibly lossy compression ({', '.join(lossy_)}); "
                    "it is decoded and ingested", "none needed; texture features of lossy images may differ, so "
                    "export uncompressed if you can", where, blocking=False)
    return True


def plan_dicom_patient(cfg: CenterConfig, plan: PatientPlan, folder: Path, key: str) -> None:
    """Add each study of a DICOM patient folder to ``plan``: its T1c and T2f series and masks.

    Every series is grouped by study; a study needs one series per sequence rule and one mask
    file of each kind (matched by geometry when a patient has several studies).
    """
    root = cfg.source_path
    mask_files: dict[str, list[Path]] = {}
    for name in SOURCE_MASKS:
        rule: MaskRule = getattr(cfg.masks, name)
        mask_files[name] = glob_files(folder, rule.glob, f"masks.{name}", plan, root)
    skip = {p for files in mask_files.values() for p in files}
    series = scan_dicom_folder(folder, skip, plan, root)
    plan.n_series = len(series)
    plan.header_texts = sorted({s.label for s in series})  # quoted by messages: recorded as tokens
    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for s in series:
        by_study[s.study_uid].append(s)
    candidates: list[tuple[str, SeriesInfo, SeriesInfo]] = []
    misses: list[str] = []
    for study_uid, members in by_study.items():
        chosen: dict[str, SeriesInfo] = {}
        for seq in SEQUENCES:
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
        if not all([_usable(t1c, "t1c", plan, root), _usable(t2f, "t2f", plan, root)]):
            continue
        for s, seq in ((t1c, "t1c"), (t2f, "t2f")):
            gap = s.slice_gaps()
            if gap:
                plan.refuse(f"series {s.label!r} ({seq}): {gap}", "re-export the complete series",
                            relative(Path(s.files[0]).parent, root))
        geo = {"t1c": t1c.geometry(), "t2f": t2f.geometry()}
        broken = [(seq, why) for seq, g in geo.items() if g is not None and (why := g.problem())]
        for seq, why in broken:
            plan.refuse(f"series {(t1c if seq == 't1c' else t2f).label!r} ({seq}): {why}",
                        "re-export the series; its geometry headers are broken")
        if broken:
            continue
        masks: dict[str, Path] = {}
        for name in SOURCE_MASKS:
            rule = getattr(cfg.masks, name)
            files = mask_files[name]
            if len(candidates) > 1 or len(files) > 1:
                files = [f for f in files if mask_fits(f, geo[rule.space]) or crop_fits(str(f), geo[rule.space])]
            if len(files) == 1:
                masks[name] = files[0]
            elif len(files) > 1:
                plan.refuse(f"{len(files)} files match masks.{name}: {[relative(f, root) for f in files]}",
                            f"keep one {name} mask per study or tighten masks.{name}.glob")
        if len(masks) < 2:
            if len(candidates) > 1:
                plan.refuse("a study has no mask of its own geometry and is not ingested",
                            "add its masks, or ignore this note for follow-up scans", blocking=False)
            continue
        plan.studies.append(StudyPlan(
            study_id=pseudonymise_study(cfg.center, plan.raw_id, study_uid, key),
            scan_date=_scan_date(t1c, plan),
            t1c=SourceRef("dicom", tuple(t1c.files), t1c.label, t1c.series_uid),
            t2f=SourceRef("dicom", tuple(t2f.files), t2f.label, t2f.series_uid),
            lesion=SourceRef("file", (str(masks["lesion"]),), relative(masks["lesion"], folder)),
            tumor=SourceRef("file", (str(masks["tumor"]),), relative(masks["tumor"], folder)),
            geometry=geo,
        ))

