"""A small three-center DICOM export with one planted fault per patient, for tests/test_faults.py.

Centers A and B are the study's development centers, C its external test center (the default
split of ``training/study.yaml``). Each center has six healthy patients (labels alternate, so
every set holds both classes) and a few patients with one fault each, made on real DICOM files
the way tests/test_bad_input.py makes them. :data:`FAULTS` says, per faulty patient, what the
catalog's ``quarantine`` table must say; patients whose fault is only a note are ingested.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import yaml
from dicom_phantom import dicom_center, dicom_patient, phantom
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from ingest.deid import pseudonymise_patient

SIZE = (24, 28, 6)  # x, y, z voxels of 1.5 x 1.5 x 4 mm: a 36 x 42 x 24 grid at 1 mm
MAX_VOXELS_C = 100_000  # center C's budget: its healthy grids (36,288 voxels) fit, a bigger one does not
HEALTHY = 6  # per center
CENTERS = ("A", "B", "C")


@dataclass(frozen=True)
class Fault:
    """One planted fault: the patient it is in and what the quarantine must say about it."""

    raw: str
    center: str
    name: str
    stage: str | None  # the quarantine row's stage; None: no row (decoded silently)
    reasons: tuple[str, ...]  # substrings of one row's reason (no raw id, no path)
    blocking: bool  # False: a note, the patient is ingested

    @property
    def ingested(self) -> bool:
        return not self.blocking


FAULTS: tuple[Fault, ...] = (
    Fault("P107", "A", "RLE-compressed series", None, (), False),
    Fault("P108", "A", "stray non-DICOM files", "discover", ("6 non-DICOM files ignored: DICOMDIR", "/LOCKFILE",
                                                          "/VERSION"), False),  # folder names are tokens
    Fault("P109", "A", "byte-identical copy of the patient folder", "discover",
          ("same 12 instances as", "processed once"), False),
    Fault("P110", "A", "undecodable JPEG 2000 series", "discover",
          ("compressed as JPEG 2000", "1.2.840.10008.1.2.4.90", "cannot be decoded"), True),
    Fault("P111", "A", "interpolated (non-integer) mask", "discover", ("non-integer values (0.3, 0.5", "lesion"), True),
    Fault("P112", "A", "truncated slice", "discover", ("truncated DICOM file",), True),
    Fault("P207", "B", "malformed StudyDate", "discover", ("malformed scan date", "StudyDate '20231345'"), True),
    Fault("P208", "B", "malformed ImageOrientationPatient", "discover", ("not perpendicular", "(t2f)"), True),
    Fault("P209", "B", "missing sequence", "discover", ("missing sequence", "sequences.t2f"), True),
    Fault("P210", "B", "empty mask", "discover", ("empty mask (tumor)",), True),
    Fault("P211", "B", "missing clinical row", "discover", ("no row in the clinical sheet",), True),
    Fault("P307", "C", "mask with an identity (default) header", "discover",
          ("default header (origin 0, spacing 1, identity direction)",), True),
    Fault("P308", "C", "1 mm grid over max_voxels", "discover",
          (f"over the budget of {MAX_VOXELS_C:,} (max_voxels)",), True),
    Fault("P309", "C", "one id in two folders of different content", "discover",
          ("duplicate patient: id", "is in 2 folders"), True),
)


def healthy_raw(center: str) -> list[str]:
    base = 100 * (CENTERS.index(center) + 1)
    return [f"P{base + i}" for i in range(1, HEALTHY + 1)]


def key_of(center: str) -> str:
    return f"faults-suite-{center}-pseudonymisation-key-not-secret"


def pid(center: str, raw: str) -> str:
    return pseudonymise_patient(center, raw, key_of(center))


def _images(n: int, mutant: bool, size=SIZE) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """A phantom whose lesion is larger when mutant, with its own jitter and noise per patient."""
    rng = np.random.default_rng(100 + n)
    grow = 2.5 * mutant
    radii = (1.6 + 0.6 * mutant + rng.uniform(-0.2, 0.2), 4.0 + grow + rng.uniform(-0.6, 0.6),
             4.0 + grow + rng.uniform(-0.6, 0.6))
    image, lesion, tumor = phantom(size, (0, 2, 3), radii, noise=0.0)
    noisy = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) + rng.normal(0, 8, size[::-1])).astype(np.float32))
    noisy.CopyInformation(image)
    return noisy, lesion, tumor


def _recode(folder: Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    for path in sorted(folder.glob("IM*.dcm")):
        ds = pydicom.dcmread(path)
        fn(ds)
        ds.save_as(path, enforce_file_format=True)


def _undecodable(uid: str) -> Callable[[pydicom.Dataset], None]:
    def fn(ds: pydicom.Dataset) -> None:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = encapsulate([b"\xff\xd8 not a decodable frame \xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    return fn


def _set(**tags) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: [setattr(ds, k, v) for k, v in tags.items()]


def _rewrite_mask(path: Path, fn: Callable[[np.ndarray], np.ndarray], keep_header: bool = True) -> None:
    mask = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(mask)))
    if keep_header:
        out.CopyInformation(mask)
    sitk.WriteImage(out, str(path))


def _blur(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    arr[(arr == 0) & (np.roll(arr, 1, axis=2) == 1)] = 0.5
    arr[(arr == 0) & (np.roll(arr, -1, axis=2) == 1)] = 0.3
    return arr


def _dicomdir(path: Path) -> None:
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.79"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    ds.save_as(path, enforce_file_format=True)


def _plant(fault: Fault, folder: Path) -> None:
    """Break ``folder`` (the patient's export) the way ``fault`` says."""
    name = fault.raw
    if name == "P107":
        _recode(folder / "FLAIR", lambda ds: ds.compress(RLELossless))
    elif name == "P108":
        _dicomdir(folder / "DICOMDIR")
        (folder / "FLAIR" / "LOCKFILE").write_text("locked by PACS export 2020-01-02\n")
        (folder / "FLAIR" / "VERSION").write_text("1.0\n")
        (folder / "FLAIR" / "notes.txt").write_text("exported by the night shift\n")
        (folder / "T1_POST" / "VERSION").write_text("1.0\n")
        (folder / "T1_POST" / "LOCKFILE").write_text("locked\n")
    elif name == "P109":
        shutil.copytree(folder, folder.with_name(f"{name} - Copy"))
    elif name == "P110":
        _recode(folder / "T1_POST", _undecodable("1.2.840.10008.1.2.4.90"))
    elif name == "P111":
        _rewrite_mask(folder / "masks" / "lesion.nii.gz", _blur)
    elif name == "P112":
        cut = sorted((folder / "FLAIR").glob("IM*.dcm"))[2]
        cut.write_bytes(cut.read_bytes()[:-400])
    elif name == "P207":
        for series in ("T1_POST", "FLAIR"):
            _recode(folder / series, _set(StudyDate="20231345", SeriesDate="20231345", AcquisitionDate=""))
    elif name == "P208":
        _recode(folder / "FLAIR", _set(ImageOrientationPatient=["1", "0", "0", "1", "0", "0"]))
    elif name == "P209":
        shutil.rmtree(folder / "FLAIR")
    elif name == "P210":
        _rewrite_mask(folder / "masks" / "tumor.nii.gz", np.zeros_like)
    elif name == "P307":
        _rewrite_mask(folder / "masks" / "tumor.nii.gz", lambda a: a, keep_header=False)
    elif name == "P309":
        copy = folder.with_name(f"{name} - Copy")
        shutil.copytree(folder, copy)
        path = sorted((copy / "FLAIR").glob("IM*.dcm"))[2]
        ds = pydicom.dcmread(path)
        ds.WindowWidth = "1234"  # same SOPInstanceUID, other bytes: a re-export, not a copy
        ds.save_as(path)
    elif name not in ("P211", "P308"):  # P211: no clinical row (below); P308: a bigger image
        raise AssertionError(f"no way to plant fault {fault}")


#: a name, a birth date and an MRN as hospitals leave them in folder and file names (and headers)
PHI = ("ZYGMUNTOWICZ", "QUENTINA", "19610203", "MRN4455667")


def _plant_phi(src: Path) -> None:
    """Healthy P101's folder, series folder, a slice and its headers, and the truncated P112's
    series folder (its quarantine row names a file there), hold the planted strings."""
    folder = src / "P101"
    for path in sorted((folder / "FLAIR").glob("IM*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientBirthDate, ds.PatientID = "ZYGMUNTOWICZ^QUENTINA", "19610203", "P101"
        ds.OtherPatientIDs = "MRN4455667"
        ds.save_as(path, enforce_file_format=True)
    first = sorted((folder / "FLAIR").glob("IM*.dcm"))[0]
    first.rename(first.with_name("ZYGMUNTOWICZ_QUENTINA_0001.dcm"))
    (folder / "FLAIR").rename(folder / "FLAIR_ZYGMUNTOWICZ_19610203")
    folder.rename(src / "P101_ZYGMUNTOWICZ^QUENTINA_19610203_MRN4455667")
    (src / "P112" / "FLAIR").rename(src / "P112" / "FLAIR_QUENTINA_MRN4455667")


def _center_yaml(root: Path, center: str) -> Path:
    over = {"max_voxels": MAX_VOXELS_C} if center == "C" else {}
    cfg = dicom_center(center, f"export/{center}", key_of(center), **over)
    path = root / f"{center}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def build_export(root: Path) -> dict[str, Path]:
    """Write ``root/export/{A,B,C}`` and ``root/{A,B,C}.yaml``; returns center -> center file."""
    configs = {}
    n = 0
    for center in CENTERS:
        src = root / "export" / center
        rows = ["id,age,sex,who,vasari,atrx,path"]
        faults = [f for f in FAULTS if f.center == center]
        for i, raw in enumerate([*healthy_raw(center), *(f.raw for f in faults)]):
            n += 1
            mutant = i % 2 == 1
            size = (48, 56, 12) if raw == "P308" else SIZE  # 72 x 84 x 48 mm: 290,304 voxels at 1 mm
            dicom_patient(src, raw, f"1.2.826.0.1.3680043.8.498.81.{n}", _images(n, mutant, size),
                          {"PatientName": f"FAULT^{raw}", "PatientID": raw})
            if raw != "P211":
                rows.append(f"{raw},{40 + n},{'FM'[(i // 2) % 2]},{3 + i % 3 // 2},{50 + 2 * n},"
                            f"{'mutant' if mutant else 'wildtype'},2020-03-01")
        for fault in faults:
            _plant(fault, src / fault.raw)
        if center == "A":
            _plant_phi(src)
        (src / "clinical.csv").write_text("\n".join(rows) + "\n")
        configs[center] = _center_yaml(root, center)
    return configs
