"""DICOM input as exports really come: stray files, compressed pixel data, broken headers.

What :mod:`ingest.discover.dicom` asks of one file or series before trusting it:

- :func:`is_stray`: a file that is not an image of the export (``DICOMDIR``, ``LOCKFILE``,
  ``VERSION``, ``Thumbs.db``, ``.DS_Store``, ``*.txt``, ...) is ignored with a note, not refused.
- :func:`pixel_problem`: compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE) is smaller than
  its rows x columns, so it is checked by transfer syntax, never reported as "truncated";
  :func:`decode_problem` decodes one file of a compressed series through SimpleITK/GDCM, the
  reader the ingest uses, so what the plan accepts is what the ingest can read.
- :func:`orientation_problem`, :func:`dicom_date`: ImageOrientationPatient, PixelSpacing and
  the study date as numbers a plan can use, or the reason they are not.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import UID

from ingest.masks import itk_reason

__all__ = ["DICOMDIR_UID", "LOSSY_SYNTAXES", "UNCOMPRESSED_FIX", "decode_problem", "dicom_date", "is_stray",
           "is_text", "lossy", "orientation_problem", "pixel_problem", "syntax_name", "transfer_syntax"]

#: Media Storage Directory Storage: a DICOMDIR (an index of the files, no image)
DICOMDIR_UID = "1.2.840.10008.1.3.10"
#: file names of what PACS exports, CD burners and file browsers leave beside the images
STRAY_NAMES = frozenset({"dicomdir", "lockfile", "version", "thumbs.db", "desktop.ini", "autorun.inf",
                         "readme", "index.htm", "index.html", "ehthumbs.db", ".ds_store"})
STRAY_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".json", ".txt", ".csv", ".xlsx",
                  ".md", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pdf", ".htm", ".html",
                  ".xml", ".log", ".ini", ".inf", ".db", ".exe", ".dll", ".bat", ".sh", ".zip", ".rtf", ".doc",
                  ".docx")
#: names that claim a file is DICOM
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dc3")
#: transfer syntaxes whose pixel data may have lost information (JPEG baseline/extended, JPEG-LS
#: near-lossless, JPEG 2000 and HTJ2K "lossy or lossless", MPEG video)
LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                            "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
                            *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))})
UNCOMPRESSED_FIX = ("export the series uncompressed (Explicit VR Little Endian) from the PACS or viewer, or "
                    "decompress its files (e.g. `gdcmconv --raw in.dcm out.dcm`); the ingest reads DICOM "
                    "through SimpleITK/GDCM, which decodes RLE, JPEG (baseline, extended, lossless), "
                    "JPEG-LS and JPEG 2000")
# the last 8 bytes of encapsulated pixel data: the Sequence Delimitation Item (FFFE,E0DD), length 0
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_TAIL_BYTES = 4096
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF


def is_stray(path: Path) -> bool:
    """Whether ``path``, by its name, is a file exports carry beside the images (never a slice)."""
    name = path.name.lower()
    return name.startswith(".") or name in STRAY_NAMES or name.endswith(STRAY_SUFFIXES)


def is_text(path: Path) -> bool:
    """Whether the file starts as text (a note, a log, a lock file) and is not named as a DICOM file
    (``*.dcm``, ``*.ima``: one that is not DICOM is a broken slice, refused)."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch >= 32 or ch in b"\t\r\n\f" for ch in head)


def transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    """The file's TransferSyntaxUID (file meta), or None when it has no file meta."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else None


def syntax_name(uid: str) -> str:
    """``JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50)``: how a message names a transfer syntax."""
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def lossy(uid: str | None) -> bool:
    """Whether pixel data in this transfer syntax may be lossy-compressed."""
    return uid in LOSSY_SYNTAXES


def _encapsulation_ends(path: Path) -> bool:
    """Encapsulated pixel data ends with a sequence delimiter; a cut file does not."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return False
    return tail.endswith(_SEQUENCE_END) or _SEQUENCE_END in tail  # trailing padding may follow


def pixel_problem(path: Path, ds: pydicom.Dataset, expected: int) -> tuple[str, str] | None:
    """(what, fix) when the file's pixel data cannot be whole: truncated, or an unknown syntax.

    Native pixel data must hold ``expected`` bytes (rows x columns x bits x frames); compressed
    (encapsulated) data is smaller by design, so only its end is checked; deflated files are
    compressed whole and left to the reader.
    """
    uid = transfer_syntax(ds)
    size = path.stat().st_size
    if uid is not None and not uid.is_transfer_syntax:
        return (f"DICOM file with unknown transfer syntax {uid}",
                "re-export the series with a standard transfer syntax; " + UNCOMPRESSED_FIX)
    if uid is not None and uid.is_compressed:
        if expected and not _encapsulation_ends(path):  # an image (rows, columns) whose data is cut
            return (f"truncated DICOM file ({size} bytes; its {syntax_name(uid)} compressed pixel data does not "
                    "end)", "re-export the series; the copy was cut short")
        return None
    if uid is not None and uid.is_deflated:
        return None
    if expected and size < expected:
        return (f"truncated DICOM file ({size} bytes, pixel data alone needs {expected})",
                "re-export the series; the copy was cut short")
    end = _native_pixels_end(path) if expected else None
    if end is not None and size < end:  # cut by less than its header: the size alone does not show it
        return (f"truncated DICOM file ({size} bytes, its pixel data ends at byte {end})",
                "re-export the series; the copy was cut short")
    return None


def _native_pixels_end(path: Path) -> int | None:
    """Where the file's (native, defined-length) pixel data ends by its header, or None if unknown.

    The value is deferred, not read: pydicom records where it starts and how long it says it is.
    """
    try:
        ds = pydicom.dcmread(path, defer_size=64, specific_tags=["PixelData"])
        elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader, not here
        return None
    length, start = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    if start is None or not length or length == _UNDEFINED_LENGTH:
        return None
    return int(start) + int(length)


def decode_problem(path: str, uid: str) -> str | None:
    """Why the pixel data of one compressed file cannot be decoded by the ingest's reader, or None."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.Execute()
    except RuntimeError as e:
        return f"its pixel data, compressed as {syntax_name(uid)}, cannot be decoded ({itk_reason(e, paths=[path])})"
    return None


def _numbers(text: str | None, n: int, what: str) -> tuple[list[float] | None, str | None]:
    if not text:
        return None, f"no {what}"
    parts = text.split("\\")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        return None, f"{what} {text!r} is not numbers"
    if len(values) != n:
        return None, f"{what} has {len(values)} values ({text}), {n} are expected"
    if not all(np.isfinite(values)):
        return None, f"{what} {text!r} is not finite"
    return values, None


def orientation_problem(tags: dict[str, str]) -> str | None:
    """What makes a series' ImageOrientationPatient or PixelSpacing unusable, or None."""
    iop, why = _numbers(tags.get("ImageOrientationPatient"), 6, "ImageOrientationPatient")
    if why:
        return why
    assert iop is not None
    row, col = np.array(iop[:3]), np.array(iop[3:])
    for name, v in (("row", row), ("column", col)):
        if np.linalg.norm(v) < 1e-3:
            return f"ImageOrientationPatient ({tags['ImageOrientationPatient']}): its {name} direction is a zero vector"
        if abs(np.linalg.norm(v) - 1) > 1e-2:
            return (f"ImageOrientationPatient ({tags['ImageOrientationPatient']}): its {name} direction has length "
                    f"{np.linalg.norm(v):.3g}, not 1")
    if abs(float(row @ col)) > 1e-2:
        return (f"ImageOrientationPatient ({tags['ImageOrientationPatient']}): the row and column directions are not "
                f"perpendicular (cosine {float(row @ col):.3g})")
    ps, why = _numbers(tags.get("PixelSpacing"), 2, "PixelSpacing")
    if why:
        return why
    assert ps is not None
    if min(ps) <= 0:
        return f"PixelSpacing ({tags['PixelSpacing']}) is not positive"
    return None


def dicom_date(tags: dict[str, str]) -> tuple[dt.date | None, list[str]]:
    """The first valid of StudyDate, SeriesDate, AcquisitionDate, and the malformed ones before it."""
    bad: list[str] = []
    for key in ("StudyDate", "SeriesDate", "AcquisitionDate"):
        text = (tags.get(key) or "").strip()
        if not text:
            continue
        if re.fullmatch(r"\d{8}", text):
            try:
                return dt.datetime.strptime(text, "%Y%m%d").date(), bad
            except ValueError:
                pass
        bad.append(f"{key} {text!r}")
    return None, bad
