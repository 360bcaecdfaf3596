"""The DICOM side of a plan: group a patient's files into series and choose each study's series.

Headers only (``stop_before_pixels``): a series' geometry, slice gaps and tags come from its
files' headers, so planning a center does not read its pixels. Copies are told apart by content:
a file carrying a SOPInstanceUID already seen is read in full only then, and a byte-identical
copy (of a series folder, or of a whole patient folder: :func:`identical_folders`) is processed
once, with a note; a different file under the same UID is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from atrx.config.center import CenterConfig, MaskRule, SequenceRule
from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.deid import pseudonymise_patient, pseudonymise_study
from ingest.discover.files import file_sha256, glob_files, inside_source, mask_fits
from ingest.discover.plan import Geometry, PatientPlan, SourceRef, StudyPlan, relative
from ingest.masks import crop_fits

__all__ = ["HEADER_TAGS", "NON_DICOM_SUFFIXES", "FolderCopy", "SeriesInfo", "drop_identical_copies",
           "identical_folders", "plan_dicom_patient", "scan_dicom_folder"]

NON_DICOM_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".json", ".txt", ".csv",
                      ".xlsx", ".md", ".yaml", ".yml", ".png", ".jpg")
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

    @property
    def label(self) -> str:
        """What the engineer recognises: the description, the protocol, or the UID's tail."""
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


class _Instances:
    """The SOPInstanceUIDs seen in one patient folder: a repeat is a copy (same bytes) or a conflict."""

    def __init__(self) -> None:
        self.first: dict[str, Path] = {}
        self.hashes: dict[Path, str] = {}
        self.copies: dict[tuple[Path, Path], int] = defaultdict(int)  # (copy folder, original folder)

    def _hash(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = file_sha256(path)
        return self.hashes[path]

    def repeat(self, sop: str, path: Path, plan: PatientPlan, root: Path) -> bool:
        """True when ``path`` repeats an instance already seen (then it is not used)."""
        first = self.first.get(sop)
        if first is None:
            self.first[sop] = path
            return False
        if self._hash(first) == self._hash(path):
            self.copies[(path.parent, first.parent)] += 1
        else:
            plan.refuse(f"two different files carry one SOPInstanceUID ({relative(first, root)} and this one): "
                        "the series is exported twice with different content",
                        "re-export the series once; remove the stale copy from the patient's folder",
                        relative(path, root))
        return True

    def report(self, plan: PatientPlan, root: Path) -> None:
        for (copy, original), n in sorted(self.copies.items()):
            where = (f"{relative(copy, root)}: {n} instances stored twice" if copy == original else
                     f"{relative(copy, root)}: same {n} instances as {relative(original, root)}")
            plan.refuse(f"{where}, processed once",
                        "none needed (byte-identical copies); remove the copy to silence this note",
                        relative(copy, root), blocking=False)


def scan_dicom_folder(folder: Path, skip: set[Path], plan: PatientPlan, root: Path) -> list[SeriesInfo]:
    """Group every DICOM file under ``folder`` by SeriesInstanceUID; unreadable files are problems.

    An instance seen twice (same SOPInstanceUID) is used once: a byte-identical copy is a note,
    a different file a refusal.
    """
    series: dict[str, SeriesInfo] = {}
    instances = _Instances()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path in skip or path.name.startswith(".") or path.name.lower().endswith(NON_DICOM_SUFFIXES):
            continue
        if not inside_source(path, root):
            plan.refuse(f"{relative(path, root)} leads outside source (a link); not followed",
                        "copy the file into the export, or point source at a folder that holds it",
                        relative(path, root))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            plan.refuse(f"unreadable DICOM file ({type(e).__name__})",
                        "re-export the file or remove it from the patient's folder", relative(path, root))
            continue
        uid = _tag_text(ds, "SeriesInstanceUID")
        if not uid:
            plan.refuse("DICOM file without SeriesInstanceUID", "re-export the series", relative(path, root))
            continue
        expected = _expected_pixel_bytes(ds)
        if expected and path.stat().st_size < expected:
            plan.refuse(f"truncated DICOM file ({path.stat().st_size} bytes, pixel data alone needs {expected})",
                        "re-export the series; the copy was cut short", relative(path, root))
            continue
        sop = _tag_text(ds, "SOPInstanceUID")
        if sop and instances.repeat(sop, path, plan, root):
            continue
        info = series.get(uid)
        if info is None:
            tags = {k: _tag_text(ds, k) for k in HEADER_TAGS}
            info = series[uid] = SeriesInfo(uid, tags["StudyInstanceUID"], tags)
        info.files.append(str(path))
        ipp = ds.get("ImagePositionPatient")
        if ipp is not None and len(ipp) == 3:
            info.positions.append(tuple(float(x) for x in ipp))
    instances.report(plan, root)
    return list(series.values())


@dataclass(frozen=True)
class FolderCopy:
    """A folder whose files are byte for byte those of an earlier one (by sorted path)."""

    copy: Path
    original: Path
    instances: int  # its DICOM instances (files with a SOPInstanceUID)

    def note(self) -> str:
        """``P013 - Copy: same 96 instances as P013, processed once``."""
        return f"{self.copy.name}: same {self.instances} instances as {self.original.name}, processed once"


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _fingerprint(files: list[Path]) -> tuple[tuple[str, str], ...]:
    """(SOPInstanceUID or '', sha256) of every file, sorted: equal for byte-identical folders."""
    out = []
    for path in files:
        sop = ""
        if not path.name.lower().endswith(NON_DICOM_SUFFIXES):
            try:
                sop = _tag_text(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]),
                                "SOPInstanceUID")
            except (InvalidDicomError, OSError, ValueError, EOFError):
                sop = ""
        out.append((sop, file_sha256(path)))
    return tuple(sorted(out))


def identical_folders(folders: Iterable[Path]) -> list[FolderCopy]:
    """Folders (patient or series) that are byte-identical copies of an earlier one by sorted path.

    Identical means every file has its twin: the same bytes, so the same SOPInstanceUIDs; a folder
    without DICOM instances is never a copy. Only folders whose file sizes agree are read, so an
    export without copies costs one ``stat`` per file.
    """
    by_sizes: dict[tuple[int, ...], list[tuple[Path, list[Path]]]] = defaultdict(list)
    for folder in sorted(set(folders)):
        files = _folder_files(folder)
        if files:
            by_sizes[tuple(sorted(p.stat().st_size for p in files))].append((folder, files))
    out: list[FolderCopy] = []
    for group in by_sizes.values():
        if len(group) < 2:
            continue
        originals: dict[tuple[tuple[str, str], ...], Path] = {}
        for folder, files in group:
            fp = _fingerprint(files)
            n = sum(1 for sop, _ in fp if sop)
            if not n:
                continue
            if fp in originals:
                out.append(FolderCopy(folder, originals[fp], n))
            else:
                originals[fp] = folder
    return sorted(out, key=lambda c: c.copy)


def drop_identical_copies(entries: dict[str, list[Path]], clinical_ids: Collection[str], center: str,
                          key: str) -> dict[str, list[str]]:
    """Remove from ``entries`` (raw id -> patient folders) every byte-identical copy of a folder.

    ``P013 - Copy`` is then processed once, as ``P013``; the notes returned (raw id of the folder
    kept -> notes) say so. A copy under another raw id is dropped too, unless that id has a
    clinical row of its own (``clinical_ids``): two patients claiming one set of images stay for
    the duplicate checks to refuse. A copy named by another raw id is noted with that id
    pseudonymised, as the note is recorded under the patient kept.
    """
    raw_of = {folder: raw for raw, folders in entries.items() for folder in folders}
    notes: dict[str, list[str]] = defaultdict(list)
    for c in identical_folders(raw_of):
        raw_copy, raw_kept = raw_of[c.copy], raw_of[c.original]
        if raw_copy != raw_kept and raw_copy in clinical_ids:
            continue
        entries[raw_copy].remove(c.copy)
        if not entries[raw_copy]:
            del entries[raw_copy]
        note = c.note()
        if raw_copy != raw_kept:
            note = note.replace(raw_copy, pseudonymise_patient(center, raw_copy, key))
        notes[raw_kept].append(note)
    return dict(notes)


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
        for s, seq in ((t1c, "t1c"), (t2f, "t2f")):
            gap = s.slice_gaps()
            if gap:
                plan.refuse(f"series {s.label!r} ({seq}): {gap}", "re-export the complete series",
                            relative(Path(s.files[0]).parent, root))
        geo = {"t1c": t1c.geometry(), "t2f": t2f.geometry()}
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
            scan_date=_dicom_date(t1c.tags),
            t1c=SourceRef("dicom", tuple(t1c.files), t1c.label, t1c.series_uid),
            t2f=SourceRef("dicom", tuple(t2f.files), t2f.label, t2f.series_uid),
            lesion=SourceRef("file", (str(masks["lesion"]),), relative(masks["lesion"], folder)),
            tumor=SourceRef("file", (str(masks["tumor"]),), relative(masks["tumor"], folder)),
            geometry=geo,
        ))

