"""Bad input that used to stop the plan or mislead it (issue 14, item 5), on tiny real exports.

Compressed DICOM is not "truncated"; stray files in a series folder are notes; an interpolated
(non-integer) mask is refused; an output grid over the voxel budget is refused at plan time; a
malformed date or orientation refuses that patient and never stops the center.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from dicom_phantom import dicom_patient, phantom
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from atrx.config.center import CenterConfig, load_center
from ingest.discover import PatientPlan, plan_center
from ingest.readers import ReadError, read_image, read_mask

N_SLICES = 6


def _phantom(size=(24, 28, N_SLICES), noise: float = 5.0) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    return phantom(size, (0, 2, 3), (2.0, 5, 5), noise=noise)


def _dicom_patient(root: Path, raw: str, n: int, **kw) -> Path:
    return dicom_patient(root, raw, f"1.2.826.0.1.3680043.8.498.78.{n}", _phantom(**kw),
                         {"PatientName": f"BAD^{raw}", "PatientID": raw})


CLINICAL = ("id,age,sex,who,vasari,atrx,path,scan\n"
            "P1,50,F,4,70,mutant,2020-01-20,2020-01-02\nP2,61,M,3,40,wildtype,2020-02-01,2020-01-02\n")
COLUMNS = {"patient_id": "id", "age": "age", "sex": "sex", "who_grade": "who", "vasari_score": "vasari",
           "atrx_status": "atrx", "pathology_date": "path"}


def _write_cfg(tmp_path: Path, **over) -> CenterConfig:
    cfg = {
        "center": "BAD", "source": "export", "format": "dicom", "synthetic": True, "deid": {"key": "k" * 32},
        "patients": {"glob": "P*", "id_regex": r"^(?P<patient>P\d+)$"},
        "sequences": {"t1c": {"dicom": {"SeriesDescription": "POST GD"}},
                      "t2f": {"dicom": {"SeriesDescription": "FLAIR"}}},
        "masks": {"lesion": {"glob": "masks/lesion.nii.gz", "space": "t2f"},
                  "tumor": {"glob": "masks/tumor.nii.gz", "space": "t1c"}},
        "clinical": {"path": "clinical.csv", "columns": COLUMNS, "values": {"sex": {"F": "female", "M": "male"}}},
        **over,
    }
    (tmp_path / "BAD.yaml").write_text(yaml.safe_dump(cfg))
    return load_center(tmp_path / "BAD.yaml")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """Two DICOM patients, P1 and P2, with NIfTI masks and a clinical sheet."""
    src = tmp_path / "export"
    _dicom_patient(src, "P1", 1)
    _dicom_patient(src, "P2", 2)
    (src / "clinical.csv").write_text(CLINICAL)
    return src


def _plan(tmp_path: Path, **over) -> dict[str, PatientPlan]:
    return {p.raw_id: p for p in plan_center(_write_cfg(tmp_path, **over), "k").patients}


def _what(plan: PatientPlan, blocking: bool | None = None) -> list[str]:
    return [p.what for p in plan.problems if blocking is None or p.blocking == blocking]


def _one(plan: PatientPlan, text: str, blocking: bool = True):
    found = [p for p in plan.problems if text in p.what and p.blocking == blocking]
    assert found, (text, [(p.what, p.blocking) for p in plan.problems])
    return found[0]


# --- a. compressed DICOM ------------------------------------------------------------------------------


def _recode(folder: Path, fn) -> None:
    for path in sorted(folder.glob("IM*.dcm")):
        ds = pydicom.dcmread(path)
        fn(ds)
        ds.save_as(path, enforce_file_format=True)


def test_rle_compressed_series_is_decoded_not_called_truncated(export: Path, tmp_path: Path) -> None:
    shutil.rmtree(export / "P1")
    _dicom_patient(export, "P1", 1, size=(64, 64, N_SLICES), noise=0.0)  # compresses well: files < rows x cols
    before = read_image(_plan(tmp_path)["P1"].studies[0].t2f)
    _recode(export / "P1" / "FLAIR", lambda ds: ds.compress(RLELossless))
    assert pydicom.dcmread(next((export / "P1" / "FLAIR").glob("IM*.dcm"))).file_meta.TransferSyntaxUID == RLELossless
    p1 = _plan(tmp_path)["P1"]
    assert p1.ok, _what(p1)
    assert not any("truncated" in w or "lossy" in w for w in _what(p1))
    after = read_image(p1.studies[0].t2f)  # the ingest's reader decodes it (SimpleITK/GDCM)
    assert np.array_equal(sitk.GetArrayFromImage(after), sitk.GetArrayFromImage(before))


def _jpeg8(ds: pydicom.Dataset) -> bytes:
    arr = ds.pixel_array.astype(float)
    buf = io.BytesIO()
    PILImage.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _encapsulated(uid: str, frame=None):
    def fn(ds: pydicom.Dataset) -> None:
        data = frame(ds) if frame else b"\xff\xd8 not a decodable frame \xff\xd9"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    return fn


@pytest.mark.parametrize("uid, name", [
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
])
def test_undecodable_compressed_series_is_refused_naming_its_transfer_syntax(export: Path, tmp_path: Path,
                                                                           uid: str, name: str) -> None:
    _recode(export / "P1" / "T1_POST", _encapsulated(uid))
    by_id = _plan(tmp_path)
    p1 = by_id["P1"]
    assert not p1.ok and not any("truncated" in w for w in _what(p1))
    problem = _one(p1, f"compressed as {name}")
    assert uid in problem.what and "cannot be decoded" in problem.what
    assert "uncompressed" in problem.fix and "T1_POST" in (problem.file or "")
    assert by_id["P2"].ok  # the rest of the center goes on


def test_lossy_jpeg_series_is_decoded_with_a_note(export: Path, tmp_path: Path) -> None:
    _recode(export / "P1" / "FLAIR", _encapsulated("1.2.840.10008.1.2.4.50", _jpeg8))
    p1 = _plan(tmp_path)["P1"]
    assert not any("truncated" in w for w in _what(p1))
    _one(p1, "possibly lossy compression (JPEG Baseline", blocking=False)
    assert read_image(p1.studies[0].t2f).GetSize() == (24, 28, N_SLICES)


def test_a_cut_compressed_file_is_truncated_and_a_whole_one_is_not(export: Path, tmp_path: Path) -> None:
    _recode(export / "P1" / "FLAIR", lambda ds: ds.compress(RLELossless))
    cut = sorted((export / "P1" / "FLAIR").glob("IM*.dcm"))[2]
    cut.write_bytes(cut.read_bytes()[:-40])
    p1 = _plan(tmp_path)["P1"]
    problem = _one(p1, "truncated DICOM file")
    assert "RLE Lossless" in problem.what and problem.file.endswith(cut.name)


def test_a_native_slice_cut_by_less_than_its_header_is_truncated(export: Path, tmp_path: Path) -> None:
    cut = sorted((export / "P1" / "FLAIR").glob("IM*.dcm"))[2]
    cut.write_bytes(cut.read_bytes()[:-400])  # still longer than its pixel data alone (24 x 28 x 2 bytes)
    problem = _one(_plan(tmp_path)["P1"], "truncated DICOM file")
    assert "its pixel data ends at byte" in problem.what and problem.file.endswith(cut.name)


# --- b. stray files --------------------------------------------------------------------------------


def _dicomdir(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.79"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    ds.save_as(path, enforce_file_format=True)


def test_stray_files_in_series_folders_are_a_note_naming_them(export: Path, tmp_path: Path) -> None:
    flair = export / "P1" / "FLAIR"
    _dicomdir(export / "P1" / "DICOMDIR")
    shutil.copy(export / "P1" / "DICOMDIR", flair / "INDEX")  # a DICOMDIR under another name
    (flair / "LOCKFILE").write_text("locked by PACS export 2020-01-02\n")
    (flair / "VERSION").write_text("1.0\n")
    (flair / "notes.txt").write_text("exported by the night shift\n")
    (flair / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(range(256)))
    (flair / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200))
    p1 = _plan(tmp_path)["P1"]
    assert p1.ok, _what(p1, True)
    note = _one(p1, "non-DICOM files ignored", blocking=False)
    assert note.what == ("7 non-DICOM files ignored: DICOMDIR, FLAIR/.DS_Store, FLAIR/INDEX, FLAIR/LOCKFILE, "
                         "FLAIR/Thumbs.db, FLAIR/VERSION, FLAIR/notes.txt")
    assert len(p1.studies[0].t2f.files) == N_SLICES
    assert read_image(p1.studies[0].t2f).GetSize() == (24, 28, N_SLICES)  # GDCM skips them too


@pytest.mark.parametrize("name, content", [("IM0099.dcm", bytes(4096)),  # a slice zeroed by a failed copy
                                           ("IM0098.dcm", b"this is not DICOM at all"),  # named as a slice
                                           ("IM0097", b"\x01\x02 binary, not a known stray file")])
def test_a_file_that_is_no_dicom_and_no_stray_is_still_refused(export: Path, tmp_path: Path, name, content) -> None:
    (export / "P1" / "FLAIR" / name).write_bytes(content)
    problem = _one(_plan(tmp_path)["P1"], "unreadable DICOM file")
    assert "no DICM marker" in problem.what and problem.file.endswith(name)


# --- c. masks with non-integer values ---------------------------------------------------------------


def _blur_mask(path: Path, values: dict[float, float] | None = None) -> None:
    mask = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(mask).astype(np.float32)
    edge = (arr == 0) & (np.roll(arr, 1, axis=2) == 1)
    arr[edge] = 0.5
    arr[(arr == 0) & (np.roll(arr, -1, axis=2) == 1)] = 0.3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(mask)
    sitk.WriteImage(out, str(path))


def test_an_interpolated_float_mask_is_refused_naming_values_and_fix(export: Path, tmp_path: Path) -> None:
    _blur_mask(export / "P1" / "masks" / "lesion.nii.gz")
    by_id = _plan(tmp_path)
    problem = _one(by_id["P1"], "non-integer values")
    assert "0.3" in problem.what and "0.5" in problem.what and "lesion" in problem.what
    assert "nearest-neighbour" in problem.fix
    assert by_id["P2"].ok
    # the ingest's reader says the same (a plan made before the mask was re-exported)
    study = _plan(tmp_path)["P2"].studies[0]
    _blur_mask(Path(study.lesion.files[0]))
    with pytest.raises(ReadError, match="non-integer values"):
        read_mask(study.lesion, _write_cfg(tmp_path).masks.lesion, read_image(study.t2f), "lesion")


def test_a_float_mask_of_whole_labels_is_accepted(export: Path, tmp_path: Path) -> None:
    path = export / "P1" / "masks" / "lesion.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32), str(path))
    assert _plan(tmp_path)["P1"].ok


# --- d. voxel budget ---------------------------------------------------------------------------------


def test_an_output_grid_over_the_voxel_budget_is_refused_at_plan_time(export: Path, tmp_path: Path) -> None:
    problem = _one(_plan(tmp_path, max_voxels=1000)["P1"], "over the budget of 1,000 (max_voxels)")
    assert "36 x 42 x 24 = 36,288 voxels" in problem.what  # 24 x 28 x 6 voxels of 1.5 x 1.5 x 4 mm
    assert "max_voxels" in problem.fix and "spacing" in problem.fix and problem.file == "P1/T1_POST"
    # the default budget (64 million) takes a brain; a spacing header 100x too large is refused
    _recode(export / "P1" / "T1_POST", lambda ds: setattr(ds, "PixelSpacing", ["150", "150"]))
    by_id = _plan(tmp_path)
    assert by_id["P2"].ok
    _one(by_id["P1"], "over the budget of 64,000,000")


# --- e. malformed dates and orientations -------------------------------------------------------------


def _set(**tags):
    return lambda ds: [setattr(ds, k, v) for k, v in tags.items()]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_a_malformed_study_date_refuses_the_patient_not_the_center(export: Path, tmp_path: Path) -> None:
    for series in ("T1_POST", "FLAIR"):
        _recode(export / "P1" / series, _set(StudyDate="20231345", SeriesDate="20231345", AcquisitionDate=""))
    by_id = _plan(tmp_path)
    problem = _one(by_id["P1"], "malformed scan date")
    assert "StudyDate '20231345'" in problem.what
    assert not any(w == "no scan date" for w in _what(by_id["P1"]))
    assert by_id["P2"].ok


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_a_malformed_study_date_with_a_valid_series_date_is_a_note(export: Path, tmp_path: Path) -> None:
    _recode(export / "P1" / "T1_POST", _set(StudyDate="2020-01-02"))
    p1 = _plan(tmp_path)["P1"]
    assert p1.ok and str(p1.studies[0].scan_date) == "2020-01-02"
    _one(p1, "StudyDate '2020-01-02'", blocking=False)


@pytest.mark.parametrize("iop, why", [
    (["1", "0", "0", "0", "1"], "ImageOrientationPatient has 5 values"),
    (["0", "0", "0", "0", "1", "0"], "zero vector"),
    (["1", "0", "0", "1", "0", "0"], "not perpendicular"),
])
def test_a_broken_image_orientation_refuses_the_patient(export: Path, tmp_path: Path, iop, why) -> None:
    _recode(export / "P1" / "FLAIR", _set(ImageOrientationPatient=iop))
    by_id = _plan(tmp_path)
    problem = _one(by_id["P1"], why)
    assert "'FLAIR AX' (t2f)" in problem.what and "re-export" in problem.fix
    assert by_id["P2"].ok


def _nifti_export(tmp_path: Path, session: str = "ses-20200131") -> Path:
    src = tmp_path / "export"
    image, lesion, tumor = _phantom()
    for raw in ("P1", "P2"):
        anat = src / raw / session / "anat"
        anat.mkdir(parents=True)
        for name, im in (("T1c", image), ("FLAIR", image), ("lesion", lesion), ("tumor", tumor)):
            sitk.WriteImage(im, str(anat / f"{raw}_{name}.nii"))
    (src / "clinical.csv").write_text(CLINICAL)
    return src


def _nifti_cfg(**over):
    return {"format": "nifti", "sequences": {"t1c": {"glob": "**/*_T1c.nii"}, "t2f": {"glob": "**/*_FLAIR.nii"}},
            "masks": {"lesion": {"glob": "**/*_lesion.nii", "space": "t2f"},
                      "tumor": {"glob": "**/*_tumor.nii", "space": "t1c"}}, **over}


@pytest.mark.parametrize("regex, session, taken", [
    (r"ses-(?P<date>\d{8})", "ses-20231345", "20231345"),  # month 13
    (r"ses-(?P<date>[^/]+)", "ses-baseline", "baseline"),  # a regex that takes non-digits
])
def test_a_malformed_scan_date_from_the_regex_refuses_the_patient(tmp_path: Path, regex, session, taken) -> None:
    _nifti_export(tmp_path, session)
    shutil.move(tmp_path / "export" / "P2" / session, tmp_path / "export" / "P2" / "ses-20200131")
    by_id = _plan(tmp_path, **_nifti_cfg(patients={"glob": "P*", "id_regex": r"^(?P<patient>P\d+)$",
                                                   "scan_date_regex": regex}))
    problem = _one(by_id["P1"], "malformed scan date")
    assert repr(taken) in problem.what and "YYYYMMDD" in problem.what
    assert by_id["P2"].ok and str(by_id["P2"].studies[0].scan_date) == "2020-01-31"


def _patch_srow(path: Path, srow) -> None:
    """Rewrite a .nii's sform (qform off): what a broken converter leaves."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<hh", data, 252, 0, 1)  # qform_code 0, sform_code 1
    struct.pack_into("<12f", data, 280, *np.asarray(srow, dtype=float).ravel())
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("srow, why", [
    ([[1.5, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 0]], "orthonormal"),  # singular: a zero row
    (np.full((3, 4), np.nan), "non-finite"),
])
def test_a_nifti_with_a_singular_affine_refuses_the_patient(tmp_path: Path, srow, why) -> None:
    src = _nifti_export(tmp_path)
    _patch_srow(src / "P1" / "ses-20200131" / "anat" / "P1_T1c.nii", srow)
    by_id = _plan(tmp_path, **_nifti_cfg(patients={"glob": "P*", "id_regex": r"^(?P<patient>P\d+)$",
                                                   "scan_date_regex": r"ses-(?P<date>\d{8})"}))
    problem = _one(by_id["P1"], why)
    assert problem.file.endswith("P1_T1c.nii") and "Exception thrown" not in problem.what
    assert not by_id["P1"].studies
    assert by_id["P2"].ok


def test_an_unexpected_error_in_one_patient_does_not_stop_the_center(export: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.discover.center as center

    real = center.plan_dicom_patient

    def flaky(cfg, plan, folder, key):
        if plan.raw_id == "P1":
            raise ZeroDivisionError("a header nobody foresaw")
        return real(cfg, plan, folder, key)

    monkeypatch.setattr(center, "plan_dicom_patient", flaky)
    monkeypatch.delenv("ATRX_DEBUG", raising=False)
    by_id = _plan(tmp_path)
    problem = _one(by_id["P1"], "unexpected error while planning this patient: ZeroDivisionError")
    assert "ATRX_DEBUG=1" in problem.fix
    assert by_id["P2"].ok
    monkeypatch.setenv("ATRX_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        _plan(tmp_path)


# --- the ingest: what validate accepted is ingested, what it refused is quarantined -----------------


def test_ingest_takes_rle_and_stray_files_and_quarantines_the_interpolated_mask(export: Path, tmp_path: Path) -> None:
    import duckdb

    from atrx.workspace import Workspace
    from ingest.driver import run_ingest

    _recode(export / "P1" / "FLAIR", lambda ds: ds.compress(RLELossless))
    (export / "P1" / "FLAIR" / "LOCKFILE").write_text("locked\n")
    _dicomdir(export / "P1" / "DICOMDIR")
    _blur_mask(export / "P2" / "masks" / "tumor.nii.gz")
    home = tmp_path / "home"
    summary = run_ingest(_write_cfg(tmp_path), Workspace.at(home), workers=1)
    assert summary.studies["ingested"] == 1 and summary.patients_quarantined == 1, summary.quarantined
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute("select reason, fix, blocking from quarantine").fetchall()
    # recorded, the series folder's name is a keyed token; the names of stray files are kept
    assert any(re.match(r"2 non-DICOM files ignored: DICOMDIR, #[0-9a-f]{8}/LOCKFILE", r[0]) and not r[2]
               for r in rows), rows
    assert any("non-integer values (0.3, 0.5" in r[0] and "nearest-neighbour" in r[1] and r[2] for r in rows)
