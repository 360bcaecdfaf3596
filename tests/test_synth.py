"""The synthetic cohort: Table 1, DICOM round trips, center layouts, configs and the ATRX signal."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import yaml

from atrx.config.center import load_center
from ingest.synth import (
    LATENT,
    TABLE1,
    center_yaml,
    clinical_table,
    generate_cohort,
    synth_head,
    truth_table,
    write_dicom_series,
)
from ingest.synth.centers import CENTERS, REPO_SOURCE, synthetic_key
from ingest.synth.cohort import center_plan, rng_for
from ingest.synth.phantom import EDEMA, NECROSIS, RIM, WM, draw_head_params

REPO = Path(__file__).resolve().parents[1]
SMALL = {"scale": 0.05, "seed": 0, "per_center": 1}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    summary = generate_cohort(out, workers=1, **SMALL)
    assert [r["patients"] for r in summary.table()] == [1, 1, 1, 3]
    return out


def read_series(folder: Path, description: str) -> tuple[sitk.Image, pydicom.Dataset]:
    reader = sitk.ImageSeriesReader()
    for uid in reader.GetGDCMSeriesIDs(str(folder)):
        names = reader.GetGDCMSeriesFileNames(str(folder), uid)
        ds = pydicom.dcmread(names[0], stop_before_pixels=True)
        if ds.SeriesDescription == description:
            reader.SetFileNames(names)
            return reader.Execute(), ds
    raise AssertionError(f"no series {description!r} in {folder}")


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


# -- Table 1 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_clinical_table_reproduces_table1(seed: int) -> None:
    table = clinical_table(scale=1.0, seed=seed)
    assert len(table) == 234 and (table.atrx == "mutant").sum() == 120
    for (center, group), cell_df in table.groupby(["center", "atrx"]):
        cell = TABLE1[center][group]
        assert len(cell_df) == cell.n
        assert (cell_df.sex == "male").sum() == cell.male and (cell_df.sex == "female").sum() == cell.female
        assert (cell_df.who_grade == 3).sum() == cell.who3 and (cell_df.who_grade == 4).sum() == cell.who4
        assert round(cell_df.age.mean(), 1) == pytest.approx(cell.age[0], abs=0.1)
        assert round(cell_df.age.std(ddof=1), 1) == pytest.approx(cell.age[1], abs=0.1)
        assert round(cell_df.vasari.mean(), 1) == pytest.approx(cell.vasari[0], abs=0.1)
        assert round(cell_df.vasari.std(ddof=1), 1) == pytest.approx(cell.vasari[1], abs=0.1)
        assert cell_df.age.dtype.kind == "i"
        assert np.allclose(cell_df.vasari * 10, np.round(cell_df.vasari * 10))
    for _, frame in table.groupby("center"):
        assert list(frame.patient_index) == list(range(len(frame)))
        assert set(frame.atrx[: len(frame) // 2]) == {"mutant", "wildtype"}  # shuffled, not sorted


def test_scaled_counts_keep_two_per_group() -> None:
    table = clinical_table(scale=0.05, seed=0)
    counts = table.groupby(["center", "atrx"]).size()
    assert (counts >= 2).all()
    assert counts["B", "mutant"] == 3  # round(59 * 0.05)


# -- DICOM writer ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rotation, slope, intercept, pixel_rep",
    [((0.0, 0.0, 0.0), 1.0, 0.0, None), ((0.2, -0.1, 0.3), 0.5, -100.0, None), ((0.0, 0.15, 0.0), 2.0, 0.0, 0)],
)
def test_dicom_series_round_trip(tmp_path: Path, rotation, slope, intercept, pixel_rep) -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3000, size=(6, 17, 13)).astype(np.float64) * slope + intercept
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.2, 0.9, 2.5))
    image.SetOrigin((-10.5, 20.25, 33.0))
    rot = sitk.Euler3DTransform()
    rot.SetRotation(*rotation)
    image.SetDirection(rot.GetMatrix())
    files = write_dicom_series(
        image, tmp_path, series_description="test", protocol_name="p", study_uid="1.2.3.4",
        series_uid=None, patient={"PatientName": "DOE^JANE", "PatientID": "X1"}, study_date="20200131",
        series_number=7, rescale_slope=slope, rescale_intercept=intercept, pixel_representation=pixel_rep,
    )
    assert len(files) == 6
    back, ds = read_series(tmp_path, "test")
    assert same_geometry(back, image)
    assert np.array_equal(sitk.GetArrayFromImage(back), values)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert float(ds.RescaleSlope) == slope and ds.PatientName == "DOE^JANE"
    assert ds.InstanceNumber == 1 and ds.FrameOfReferenceUID
    if pixel_rep == 0:
        assert ds.PixelRepresentation == 0


def test_dicom_writer_refuses_values_off_the_slope_lattice(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.full((2, 4, 4), 0.3))
    with pytest.raises(ValueError, match="quantise"):
        write_dicom_series(image, tmp_path, series_description="x", protocol_name="x", study_uid="1.2",
                           series_uid=None, patient={}, study_date="20200101", series_number=1)


# -- phantom -----------------------------------------------------------------------------------

def test_synth_head_contrasts() -> None:
    params = draw_head_params(rng_for(5, "t"), mutant=True)
    truth = synth_head(params, rng_for(5, "r"))
    labels = sitk.GetArrayFromImage(truth["labels"])
    assert truth["labels"].GetSpacing() == (1.0, 1.0, 1.0)
    assert set(np.unique(labels)) == set(range(9))
    t1c, t2f = sitk.GetArrayFromImage(truth["t1c"]), sitk.GetArrayFromImage(truth["t2f"])
    wm1, wm2 = t1c[labels == WM].mean(), t2f[labels == WM].mean()
    assert t1c[labels == RIM].mean() > 1.1 * wm1 and t1c[labels == NECROSIS].mean() < 0.6 * wm1
    assert t2f[labels == EDEMA].mean() > 1.3 * wm2 and t2f[labels == RIM].mean() > 1.2 * wm2


# -- the written cohort ------------------------------------------------------------------------

def test_generation_is_deterministic(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_cohort(again, workers=2, **SMALL)  # the process pool must not change a byte
    assert tree_digest(again) == tree_digest(cohort)
    other = tmp_path / "other"
    generate_cohort(other, scale=0.05, seed=1, per_center=1, centers=("C",))
    assert tree_digest(other / "C") != tree_digest(cohort / "C")
    with pytest.raises(FileExistsError):
        generate_cohort(other, scale=0.05, seed=1, per_center=1, centers=("C",))


def test_center_a_layout(cohort: Path) -> None:
    (patient,) = [p for p in (cohort / "A").iterdir() if p.is_dir()]
    assert sorted(p.name for p in patient.iterdir()) == [
        "1_3-plane_Localizer", "2_AX_T2_FLAIR", "3_T1_MPRAGE_AX", "5_T1_MPRAGE_+C_AX", "masks"]
    t1c, ds1 = read_series(patient / "5_T1_MPRAGE_+C_AX", "T1 MPRAGE +C AX")
    t2f, ds2 = read_series(patient / "2_AX_T2_FLAIR", "AX T2 FLAIR")
    assert (patient / "5_T1_MPRAGE_+C_AX" / "IM0001.dcm").is_file()
    assert ds1.ProtocolName == "t1_mprage_tra_post" and ds1.PatientID == patient.name
    assert float(ds2.RescaleSlope) == 0.5
    assert float(ds2.SliceThickness) > float(ds1.SliceThickness)
    assert ds1.InstitutionName and ds1.PatientBirthDate and ds1.AccessionNumber and ds1.ReferringPhysicianName
    lesion = sitk.ReadImage(str(patient / "masks" / "lesion_t2f.nii.gz"))
    tumor = sitk.ReadImage(str(patient / "masks" / "tumor_t1c.nii.gz"))
    assert same_geometry(lesion, t2f) and same_geometry(tumor, t1c)
    assert sitk.GetArrayViewFromImage(tumor).sum() > 100 and sitk.GetArrayViewFromImage(lesion).sum() > 100
    clinical = pd.read_csv(cohort / "A" / "clinical_A.csv", sep=",", decimal=".")
    assert list(clinical.columns) == ["Patient ID", "Sex", "Age", "WHO grade", "VASARI", "ATRX", "Pathology date"]
    row = clinical.iloc[0]
    assert row["Patient ID"] == patient.name and row["ATRX"] in ("loss", "retained")
    assert clinical.VASARI.dtype == float and row["WHO grade"] in ("III", "IV")
    days = (dt.date.fromisoformat(row["Pathology date"]) - dt.datetime.strptime(ds1.StudyDate, "%Y%m%d").date()).days
    assert 3 <= days <= 21


def test_center_b_layout(cohort: Path) -> None:
    (patient,) = [p for p in (cohort / "B").iterdir() if p.is_dir()]
    files = list((patient / "dicom").iterdir())
    descriptions = {pydicom.dcmread(f, stop_before_pixels=True).SeriesDescription for f in files}
    assert descriptions == {"t1_se_tra_KM", "t2_tirm_tra_dark-fluid", "localizer", "ep2d_diff_3scan_trace"}
    assert all(f.name.startswith("1.2.") and f.suffix == ".dcm" for f in files)
    t1c, ds1 = read_series(patient / "dicom", "t1_se_tra_KM")
    t2f, ds2 = read_series(patient / "dicom", "t2_tirm_tra_dark-fluid")
    assert ds1.PixelRepresentation == 0 and ds1.ProtocolName == "t1_se_tra_KM"
    assert not np.allclose(t2f.GetDirection(), np.eye(3).ravel())  # an oblique (AC-PC tilted) stack
    assert float(ds2.SliceThickness) == 5.0 and float(ds2.SpacingBetweenSlices) == 5.5
    assert t2f.GetSpacing()[2] == pytest.approx(5.5, abs=1e-3)
    assert t2f.GetSpacing()[2] > t1c.GetSpacing()[2]
    lesion = sitk.ReadImage(str(patient / "seg" / f"{patient.name}_lesion.nrrd"))
    tumor = sitk.ReadImage(str(patient / "seg" / f"{patient.name}_tumor.nrrd"))
    assert same_geometry(lesion, t2f) and same_geometry(tumor, t1c)
    clinical = pd.read_csv(cohort / "B" / "clinical_B.csv", sep=";", decimal=",")
    assert list(clinical.columns) == ["Pat-Nr", "Geschlecht", "Alter", "WHO", "VASARI-Score", "ATRX-Status",
                                      "Datum Pathologie"]
    assert clinical["VASARI-Score"].dtype == float and set(clinical.Geschlecht) <= {1, 2}
    assert clinical["ATRX-Status"].iloc[0] in ("mutiert", "wildtyp")
    dt.datetime.strptime(clinical["Datum Pathologie"].iloc[0], "%d.%m.%Y")


def test_center_c_layout(cohort: Path) -> None:
    (patient,) = [p for p in (cohort / "C").iterdir() if p.is_dir()]
    pid = patient.name
    assert sorted(p.name for p in patient.iterdir()) == [f"{pid}-seg.nii.gz", f"{pid}-t1c.nii.gz", f"{pid}-t2f.nii.gz"]
    t1c = sitk.ReadImage(str(patient / f"{pid}-t1c.nii.gz"))
    t2f = sitk.ReadImage(str(patient / f"{pid}-t2f.nii.gz"))
    seg = sitk.ReadImage(str(patient / f"{pid}-seg.nii.gz"))
    assert same_geometry(seg, t1c) and t2f.GetSpacing()[2] > t1c.GetSpacing()[2]
    assert set(np.unique(sitk.GetArrayViewFromImage(seg))) == {0, 1, 2, 3}
    (plan,) = [p for p in center_plan("C", 0.05, 0) if p.patient_id == pid]
    assert plan.name in t1c.GetMetaData("descrip")  # planted PHI
    clinical = pd.read_excel(cohort / "C" / "clinical_C.xlsx", sheet_name="patients")
    assert list(clinical.columns) == ["ID", "Gender", "Age at diagnosis", "Grade", "VASARI total", "ATRX IHC",
                                      "Date of surgery", "MRI date"]
    row = clinical.iloc[0]
    assert row.ID == pid and row.Grade in ("G3", "G4") and row["ATRX IHC"] in ("lost", "retained")
    assert dt.datetime.strptime(row["MRI date"], "%d/%m/%Y").date() == plan.scan_date


def test_truth_matches_the_sheets(cohort: Path) -> None:
    truth = pd.read_csv(cohort / "truth.csv")
    assert len(truth) == 3 and set(truth.center) == set(CENTERS)
    a = pd.read_csv(cohort / "A" / "clinical_A.csv")
    row = truth[truth.center == "A"].iloc[0]
    assert a["ATRX"].iloc[0] == ("loss" if row.atrx_status == "mutant" else "retained")
    realised = truth.necrosis_ml / (truth.necrosis_ml + truth.rim_ml)
    assert np.allclose(realised, truth.necrosis_fraction, atol=0.08)


# -- center configs ----------------------------------------------------------------------------

def test_center_configs_load_and_match_repo(cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATRX_COHORT", str(cohort))
    for center in CENTERS:
        generated = cohort / "centers" / f"{center}.yaml"
        repo = REPO / "centers" / f"{center}.yaml"
        assert repo.read_text() == center_yaml(center, REPO_SOURCE.replace("{center}", center))
        cfg_gen, cfg_repo = load_center(generated), load_center(repo)
        assert cfg_gen.source_path == cfg_repo.source_path == (cohort / center).resolve()
        a, b = yaml.safe_load(generated.read_text()), yaml.safe_load(repo.read_text())
        assert a.pop("source") == f"../{center}" and b.pop("source").startswith("${ATRX_COHORT")
        assert a == b
        assert cfg_gen.synthetic and cfg_gen.deid.resolve_key() == synthetic_key(center)
        assert len(synthetic_key(center).encode()) >= 32


# -- the ATRX signal ---------------------------------------------------------------------------

def test_latent_properties_carry_the_documented_signal() -> None:
    truth = truth_table(scale=0.5, seed=0)
    mutant = truth.atrx_status == "mutant"
    assert 100 < len(truth) < 130
    score = np.zeros(len(truth))
    for p in LATENT:
        x = truth[p.name].to_numpy()
        a, b = x[mutant], x[~mutant]
        t = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert np.sign(t) == np.sign(p.effect) and abs(t) > 2.0, (p.name, t)
        score += np.sign(p.effect) * (x - x.mean()) / x.std()
    # oracle AUC of the summed standardised properties (Mann-Whitney)
    ranks = pd.Series(score).rank().to_numpy()
    auc = (ranks[mutant].sum() - mutant.sum() * (mutant.sum() + 1) / 2) / (mutant.sum() * (~mutant).sum())
    assert 0.85 < auc < 0.995
    for group in (mutant, ~mutant):  # no leak of age into the imaging signal
        r = pd.Series(score[group]).corr(truth.age[group].reset_index(drop=True), method="spearman")
        assert abs(r) < 0.35
    motion = np.linalg.norm(truth[[f"t2f_shift_{a}_mm" for a in "xyz"]].to_numpy(), axis=1)
    angle = np.linalg.norm(truth[[f"t2f_rotation_{a}_deg" for a in "xyz"]].to_numpy(), axis=1)
    assert motion.min() >= 2.0 and motion.max() <= 4.0 and angle.min() >= 1.0 and angle.max() <= 3.0
