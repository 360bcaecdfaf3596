"""Write a SimpleITK volume as a classic one-file-per-slice MR DICOM series.

Real exports are what the ingest has to survive, so the files carry the geometry tags a reader
relies on (position, orientation, spacing, frame of reference), stored integers with a rescale,
and the identifying tags (PHI) a de-identifier must strip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Keys of ``patient`` that are copied verbatim into every file (all are PHI).
PATIENT_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StationName",
    "OperatorsName",
)

_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's implementation class UID root
_SAFE_NAME = re.compile(r"[^A-Za-z0-9+.-]+")


def ds_str(value: float) -> str:
    """A DICOM DS string (at most 16 characters) that keeps 10 significant digits."""
    text = f"{value:.10g}"
    if text in ("-0", "-0.0"):
        text = "0"
    if len(text) > 16:
        text = f"{value:.9e}" if abs(value) < 1e-4 else f"{value:.8g}"
    return text


def safe_name(text: str) -> str:
    """Folder-safe version of a series description (``T1 MPRAGE +C AX`` -> ``T1_MPRAGE_+C_AX``)."""
    return _SAFE_NAME.sub("_", text).strip("_") or "series"


def stored_values(
    values: np.ndarray,
    slope: float,
    intercept: float,
    *,
    quantize: bool = False,
    pixel_representation: int | None = None,
) -> tuple[np.ndarray, int]:
    """Integers ``s`` with ``s * slope + intercept == values`` and the PixelRepresentation to use.

    ``pixel_representation`` None picks int16 (1) unless only uint16 (0) can hold the range.
    Values that are not on the ``slope`` lattice are an error unless ``quantize`` (then they are
    rounded), because a silent rounding would break the promise that the series reads back as
    the input image.
    """
    if slope == 0:
        raise ValueError("rescale_slope must not be 0")
    raw = (np.asarray(values, dtype=np.float64) - intercept) / slope
    stored = np.rint(raw)
    if not quantize:
        err = np.max(np.abs(stored - raw)) if raw.size else 0.0
        if err > 1e-3:
            raise ValueError(
                f"image values are not stored*{slope}+{intercept} for integer stored values "
                f"(off by up to {err:.3g} steps); quantise the image first or pass quantize=True"
            )
    lo, hi = (stored.min(), stored.max()) if stored.size else (0.0, 0.0)
    if pixel_representation == 0:
        if lo < 0 or hi > 65535:
            raise ValueError(f"stored values {lo:.0f}..{hi:.0f} do not fit uint16")
        return stored.astype(np.uint16), 0
    if pixel_representation is None and lo >= 0 and hi > 32767:
        if hi > 65535:
            raise ValueError(f"stored values up to {hi:.0f} exceed uint16; use a larger rescale_slope")
        return stored.astype(np.uint16), 0
    if lo < -32768 or hi > 32767:
        raise ValueError(f"stored values {lo:.0f}..{hi:.0f} exceed int16; use a larger rescale_slope")
    return stored.astype(np.int16), 1


def write_dicom_series(
    image: sitk.Image,
    folder: Path,
    *,
    series_description: str,
    protocol_name: str,
    study_uid: str,
    series_uid: str | None,
    patient: Mapping[str, str],
    study_date: str,
    series_number: int,
    modality: str = "MR",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    filename_pattern: str = "IM{index:04d}.dcm",
    extra: Mapping[str, Any] | None = None,
    slice_thickness: float | None = None,
    first_instance: int = 1,
    frame_of_reference_uid: str | None = None,
    series_time: str = "120000",
    quantize: bool = False,
    pixel_representation: int | None = None,
) -> list[Path]:
    """Write ``image`` (3D, any direction with determinant +1) as one MR Image Storage file per slice.

    ``stored * rescale_slope + rescale_intercept`` equals the image values, so a reader that
    applies the rescale (GDCM does) gets the input back. ``filename_pattern`` may use ``{index}``
    (the InstanceNumber), ``{slice}`` (0-based) and ``{sop_uid}``. ``extra`` adds or overrides tags
    by keyword. ``slice_thickness`` defaults to the slice spacing (pass more/less for gaps or
    overlap; SpacingBetweenSlices is always the true spacing). ``pixel_representation`` 0 forces
    uint16, 1 int16, None picks. Several calls with the same
    ``series_uid`` and increasing ``first_instance`` build a series of differently oriented single
    slices (a 3-plane localizer).
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if np.linalg.det(direction) < 0:
        raise ValueError("the image direction is a reflection (det < 0); DICOM slices cannot store it")
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    stored, pixel_rep = stored_values(
        sitk.GetArrayViewFromImage(image),
        rescale_slope,
        rescale_intercept,
        quantize=quantize,
        pixel_representation=pixel_representation,
    )
    nz, rows, cols = stored.shape
    series_uid = series_uid or generate_uid(entropy_srcs=[study_uid, str(series_number), series_description])
    frame_uid = frame_of_reference_uid or generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    iop = [ds_str(v) for v in (*row_dir, *col_dir)]
    thickness = spacing[2] if slice_thickness is None else slice_thickness
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(stored.min()), float(stored.max())
    center = (vmin + vmax) / 2 * rescale_slope + rescale_intercept
    width = max((vmax - vmin) * abs(rescale_slope), 1.0)

    written: list[Path] = []
    for k in range(nz):
        instance = first_instance + k
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(instance)])
        position = origin + k * spacing[2] * normal

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _IMPLEMENTATION_UID
        meta.ImplementationVersionName = "ATRX_SYNTH_1"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.InstanceCreationDate = study_date
        ds.InstanceCreationTime = series_time
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime = series_time
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_time
        ds.Modality = modality
        for key in PATIENT_KEYS:
            if key in patient:
                setattr(ds, key, patient[key])
        ds.StudyDescription = "MRI BRAIN W/WO CONTRAST"
        ds.SeriesDescription = series_description
        ds.ProtocolName = protocol_name
        ds.BodyPartExamined = "BRAIN"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [ds_str(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = ds_str(float(position @ normal))
        ds.SliceThickness = ds_str(thickness)
        ds.SpacingBetweenSlices = ds_str(spacing[2])
        ds.PixelSpacing = [ds_str(spacing[1]), ds_str(spacing[0])]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = pixel_rep
        ds.RescaleIntercept = ds_str(rescale_intercept)
        ds.RescaleSlope = ds_str(rescale_slope)
        ds.RescaleType = "US"
        ds.WindowCenter = ds_str(round(center, 3))
        ds.WindowWidth = ds_str(round(width, 3))
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored[k]).tobytes())

        path = folder / filename_pattern.format(index=instance, slice=k, sop_uid=sop_uid)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        written.append(path)
    return written
