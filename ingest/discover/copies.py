"""Copies in a DICOM export: an instance stored twice, a series or patient folder copied whole.

Told apart by content: a file carrying a SOPInstanceUID already seen is hashed only then, and a
byte-identical copy (of a series folder, or of a whole patient folder: :func:`identical_folders`)
is processed once, with a note; a different file under the same UID is refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ingest.discover.files import file_sha256
from ingest.discover.plan import PatientPlan, relative

__all__ = ["NON_DICOM_SUFFIXES", "FolderCopy", "Instances", "drop_identical_copies", "identical_folders", "tag_text"]

NON_DICOM_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".json", ".txt", ".csv",
                      ".xlsx", ".md", ".yaml", ".yml", ".png", ".jpg")


def tag_text(ds: pydicom.Dataset, key: str) -> str:
    """A tag's value as text (multi-values joined by backslashes), empty when absent."""
    value = ds.get(key)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


class Instances:
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
                sop = tag_text(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]),
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


def drop_identical_copies(entries: dict[str, list[Path]], clinical_ids: Collection[str]) -> dict[str, list[str]]:
    """Remove from ``entries`` (raw id -> patient folders) every byte-identical copy of a folder.

    ``P013 - Copy`` is then processed once, as ``P013``; the notes returned (raw id of the folder
    kept -> notes) say so. A copy under another raw id is dropped too, unless that id has a
    clinical row of its own (``clinical_ids``): two patients claiming one set of images stay for
    the duplicate checks to refuse. The notes name folders as they are (the plan's redactor
    records each folder as its patient's pseudonym).
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
        notes[raw_kept].append(c.note())
    return dict(notes)
