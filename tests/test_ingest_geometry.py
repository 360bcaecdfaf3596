"""Geometry round trip: a known ellipsoid in an oblique DICOM series lands where it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from atrx.config.center import load_center
from atrx.imagestore import read_version
from atrx.workspace import Workspace
from ingest.driver import run_ingest
from ingest.synth import write_dicom_series

CENTER_MM = np.array([6.0, -12.0, 9.0])  # physical (LPS) centre of the planted lesion


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def _phantom(spacing: tuple[float, float, float], direction: np.ndarray, size: tuple[int, int, int]) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """A head (bright skull, brain, ellipsoidal lesion with a smaller tumour) on an arbitrary grid."""
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    extent = direction @ (np.array(size) * np.array(spacing))
    image.SetOrigin(tuple(-extent / 2))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    phys = np.array(image.GetOrigin()) + (idx * np.array(spacing)) @ direction.T
    r_head = np.linalg.norm(phys / np.array([50.0, 58.0, 45.0]), axis=1)
    d = (phys - CENTER_MM) / np.array([14.0, 10.0, 8.0])
    r_lesion = np.linalg.norm(d, axis=1)
    values = np.where(r_head < 0.85, 400.0, 0.0) + np.where((r_head >= 0.88) & (r_head < 0.98), 900.0, 0.0)
    values += np.where(r_lesion < 1.0, 500.0, 0.0) + np.where(r_lesion < 0.5, 300.0, 0.0)
    rng = np.random.default_rng(0)
    values = values + rng.normal(0, 10, values.shape) + 20.0
    arr = values.reshape(size).transpose(2, 1, 0).astype(np.float32)  # numpy order z,y,x
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    lesion = sitk.GetImageFromArray((r_lesion < 1.0).reshape(size).transpose(2, 1, 0).astype(np.uint8))
    tumor = sitk.GetImageFromArray((r_lesion < 0.5).reshape(size).transpose(2, 1, 0).astype(np.uint8))
    lesion.CopyInformation(image)
    tumor.CopyInformation(image)
    return img, lesion, tumor


def test_oblique_dicom_ellipsoid_lands_where_it_should(tmp_path: Path) -> None:
    src = tmp_path / "export"
    patient = src / "P0000001"
    oblique = _rotation(12.0, 8.0)
    t1c, _, tumor = _phantom((1.2, 1.2, 2.0), oblique, (96, 110, 48))
    t2f, lesion, _ = _phantom((1.0, 1.0, 4.0), np.eye(3), (110, 124, 25))
    who = {"PatientName": "ROUNDTRIP^TEST", "PatientID": "P0000001", "PatientBirthDate": "19600101",
           "PatientSex": "F", "InstitutionName": "Nowhere", "ReferringPhysicianName": "X^Y",
           "AccessionNumber": "ACC1"}
    common = {"study_uid": "1.2.826.0.1.3680043.8.498.1", "patient": who, "study_date": "20200102"}
    write_dicom_series(t1c, patient / "t1c", series_description="T1 POST GD OBLIQUE", protocol_name="t1",
                       series_uid=None, series_number=3, rescale_slope=0.5, quantize=True, **common)
    write_dicom_series(t2f, patient / "t2f", series_description="FLAIR AX", protocol_name="flair",
                       series_uid=None, series_number=2, quantize=True, **common)
    (patient / "masks").mkdir()
    sitk.WriteImage(lesion, str(patient / "masks" / "lesion.nii.gz"))
    sitk.WriteImage(tumor, str(patient / "masks" / "tumor.nrrd"))
    (src / "clinical.csv").write_text(
        "id,age,sex,who,vasari,atrx,path\nP0000001,50,F,4,70,mutant,2020-01-20\n")
    cfg = {
        "center": "G", "source": "export", "format": "dicom", "synthetic": True, "deid": {"key": "k" * 32},
        "patients": {"glob": "P*", "id_regex": "^(?P<patient>P\\d+)$"},
        "sequences": {"t1c": {"dicom": {"SeriesDescription": "POST GD"}},
                      "t2f": {"dicom": {"SeriesDescription": "FLAIR"}}},
        "masks": {"lesion": {"glob": "masks/lesion.nii.gz", "space": "t2f"},
                  "tumor": {"glob": "masks/tumor.nrrd", "space": "t1c"}},
        "clinical": {"path": "clinical.csv", "columns": {
            "patient_id": "id", "age": "age", "sex": "sex", "who_grade": "who", "vasari_score": "vasari",
            "atrx_status": "atrx", "pathology_date": "path"}, "values": {"sex": {"F": "female"}}},
    }
    (tmp_path / "G.yaml").write_text(yaml.safe_dump(cfg))
    home = tmp_path / "home"
    summary = run_ingest(load_center(tmp_path / "G.yaml"), Workspace.at(home), workers=1)
    assert summary.studies["ingested"] == 1, summary.quarantined
    path = next((home / "images.zarr").glob("G/*/*/v1"))
    arrays, attrs = read_version(str(home / "images.zarr"), str(path.relative_to(home / "images.zarr")))
    geo = attrs["geometry"]
    ref = sitk.Image([int(s) for s in geo["size"]], sitk.sitkUInt8)
    ref.SetSpacing(geo["spacing"])
    ref.SetOrigin(geo["origin"])
    ref.SetDirection(geo["direction"])
    for name, radius in (("tumor", 0.5), ("lesion", 1.0)):
        zyx = np.argwhere(arrays[name] > 0).mean(axis=0)
        centroid = np.array(ref.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1])))
        assert np.linalg.norm(centroid - CENTER_MM) < 1.0, (name, centroid)
        expected_ml = 4 / 3 * np.pi * 14 * 10 * 8 * radius**3 / 1000
        assert arrays[name].sum() / 1000 == pytest.approx(expected_ml, rel=0.15)
    # the stored images are in the one orientation the preprocessing promises
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(geo["direction"]) == "LPS"
