"""Tiny real DICOM exports for the discovery tests: a phantom head with a lesion (a tumour inside
it), written as a T1c and a FLAIR series per patient by :func:`ingest.synth.write_dicom_series`,
with NIfTI masks in ``masks/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ingest.synth import write_dicom_series


def phantom(size: tuple[int, int, int], lesion_offset: tuple[int, int, int], lesion_radii: tuple[float, float, float],
            skull: bool = False, noise: float = 5.0) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Image, lesion mask and tumour mask, axial 1.5 x 1.5 x 4 mm, centred on the origin.

    ``size`` is (x, y, z); ``lesion_offset`` and ``lesion_radii`` are in voxels, (z, y, x).
    """
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)
    centre = np.array(size[::-1]) / 2
    r_head = np.linalg.norm((idx - centre) / (centre * 0.9), axis=-1)
    r_les = np.linalg.norm((idx - centre - lesion_offset) / lesion_radii, axis=-1)
    values = np.where(r_head < 0.85, 400.0, 0.0) + np.where(r_les < 1, 300.0, 0.0) + 20
    if skull:
        values = values + np.where((r_head >= 0.88) & (r_head < 0.98), 900.0, 0.0)
    values = values + np.random.default_rng(1).normal(0, noise, values.shape)
    images = [sitk.GetImageFromArray(a) for a in (np.rint(values).astype(np.float32),
                                                  (r_les < 1).astype(np.uint8), (r_les < 0.5).astype(np.uint8))]
    spacing = (1.5, 1.5, 4.0)
    for im in images:
        im.SetSpacing(spacing)
        im.SetOrigin(tuple(-(n // 2) * s for n, s in zip(size, spacing, strict=True)))
    return images[0], images[1], images[2]


def dicom_patient(root: Path, raw: str, study_uid: str, images: tuple[sitk.Image, sitk.Image, sitk.Image],
                  patient: dict[str, str]) -> Path:
    """``root/raw``: a T1c series (``T1_POST``, "T1 POST GD") and a FLAIR series (``FLAIR``,
    "FLAIR AX") of one image, and ``masks/lesion.nii.gz`` and ``masks/tumor.nii.gz``."""
    folder = root / raw
    image, lesion, tumor = images
    common = {"study_uid": study_uid, "study_date": "20200102", "series_uid": None, "patient": patient,
              "quantize": True}
    write_dicom_series(image, folder / "T1_POST", series_description="T1 POST GD", protocol_name="t1",
                       series_number=3, **common)
    write_dicom_series(image, folder / "FLAIR", series_description="FLAIR AX", protocol_name="flair",
                       series_number=2, **common)
    (folder / "masks").mkdir()
    sitk.WriteImage(lesion, str(folder / "masks" / "lesion.nii.gz"))
    sitk.WriteImage(tumor, str(folder / "masks" / "tumor.nii.gz"))
    return folder


def dicom_center(center: str, source: str, key: str, **over: object) -> dict[str, object]:
    """A center file (as a dict) for an export of :func:`dicom_patient` folders named ``P<digits>``
    (a copy ``P013 - Copy`` is P013 too: the id regex is unanchored at the end), with a
    ``clinical.csv`` of columns id, age, sex (F/M), who, vasari, atrx, path."""
    return {
        "center": center, "source": source, "format": "dicom", "synthetic": True, "deid": {"key": key},
        "patients": {"glob": "P*", "id_regex": r"^(?P<patient>P\d+)"},
        "sequences": {"t1c": {"dicom": {"SeriesDescription": "POST GD"}},
                      "t2f": {"dicom": {"SeriesDescription": "FLAIR"}}},
        "masks": {"lesion": {"glob": "masks/lesion.nii.gz", "space": "t2f"},
                  "tumor": {"glob": "masks/tumor.nii.gz", "space": "t1c"}},
        "clinical": {"path": "clinical.csv", "columns": {
            "patient_id": "id", "age": "age", "sex": "sex", "who_grade": "who", "vasari_score": "vasari",
            "atrx_status": "atrx", "pathology_date": "path"}, "values": {"sex": {"F": "female", "M": "male"}}},
        **over,
    }
