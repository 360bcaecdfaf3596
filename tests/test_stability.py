"""Feature stability: the ICC(2,1) formula, the perturbations, and ``atrx stability`` end to end.

The end-to-end run uses the features job's small synthetic workspace (a real Zarr store and DuckDB
catalog, :func:`test_features_job.build_workspace`), a real two-worker Dask cluster, and the
repository's radiomics settings on the Original image only, so it stays well under a minute.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
from test_features_job import CENTER, build_workspace, cluster, reduced_params  # noqa: F401 (cluster: fixture)
from typer.testing import CliRunner

from atrx.catalog import StudyVersion
from atrx.cli import app
from atrx.errors import InputError, NotFoundError
from atrx.imagestore import version_path
from atrx.names import ROIS, SEQUENCES, view_name
from atrx.stability import COLUMNS, META_KEY, read_stability, stability_path, write_stability
from atrx.workspace import Workspace
from features.errors import FeatureError
from features.radiomics import feature_count, load_params
from features.stability import CONDITIONS, MIN_VOXELS, icc, icc_features, icc_table, perturbed
from features.stability_job import run_stability, sample_studies, stability_task
from features.versioning import radiomics_version

pytestmark = pytest.mark.timeout(600)

#: Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; their ICC(2,1) is 0.29
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                          [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float)
# four patients, one study each; D has no edema (lesion == tumor): its edema ROIs are skipped
STUDIES = [
    ("A-00000000000a", "S-a1", 1, dt.date(2020, 1, 10), 0, True),
    ("A-00000000000b", "S-b1", 1, dt.date(2020, 3, 5), 1, True),
    ("A-00000000000c", "S-c1", 1, dt.date(2019, 6, 1), 3, True),
    ("A-00000000000d", "S-d1", 1, dt.date(2021, 2, 1), 5, False),
]


# the ICC -------------------------------------------------------------------------------------
def test_icc_reproduces_the_published_example() -> None:
    # by hand from Shrout & Fleiss' mean squares: BMS 11.24, JMS 32.49, EMS 1.02 (n 6, k 4):
    # (11.24 - 1.02) / (11.24 + 3 * 1.02 + 4 * (32.49 - 1.02) / 6) = 0.290
    assert icc(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)


def test_icc_matches_a_two_way_anova_from_statsmodels() -> None:
    smf = pytest.importorskip("statsmodels.formula.api")
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(3)
    n, k = 12, 4
    x = rng.normal(size=(n, 1)) * 2 + rng.normal(size=(1, k)) * 0.5 + rng.normal(size=(n, k))
    long = pd.DataFrame({"y": x.ravel(), "patient": np.repeat(np.arange(n), k),
                         "condition": np.tile(np.arange(k), n)})
    table = anova_lm(smf.ols("y ~ C(patient) + C(condition)", long).fit())
    ms = table["sum_sq"] / table["df"]
    msr, msc, mse = ms["C(patient)"], ms["C(condition)"], ms["Residual"]
    expected = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    assert icc(x) == pytest.approx(expected, rel=1e-10)


def test_icc_extremes_offsets_and_undefined_cases() -> None:
    rng = np.random.default_rng(0)
    patients = rng.normal(size=(40, 1))
    identical = np.repeat(patients, 4, axis=1)
    assert icc(identical) == pytest.approx(1.0)
    assert abs(icc(rng.normal(size=(4000, 4)))) < 0.03  # pure noise: no agreement
    noisy = identical + 0.3 * rng.normal(size=identical.shape)
    offset = noisy + np.array([0.0, 0.0, 0.0, 1.0])  # one condition shifts every patient alike
    assert icc(offset) < icc(noisy) - 0.05  # absolute agreement sees the offset
    assert np.isnan(icc(np.full((5, 4), 3.7)))  # no variance at all
    assert np.isnan(icc(patients[:1].repeat(4, axis=1)))  # one patient
    assert np.isnan(icc(patients.repeat(1, axis=1)))  # one condition


def test_icc_is_vectorised_and_leaves_incomplete_rows_out() -> None:
    rng = np.random.default_rng(1)
    cube = rng.normal(size=(7, 15, 4)) + rng.normal(size=(7, 15, 1)) * np.arange(7)[:, None, None]
    cube[2, 5, 1] = np.nan
    cube[4, :, :] = 1e6  # a constant feature of large magnitude: undefined, not rounding noise
    got = icc_features(cube)
    assert got.shape == (7,)
    for f in (0, 1, 3, 5, 6):
        assert got[f] == pytest.approx(icc(cube[f]), rel=1e-12)
    assert got[2] == pytest.approx(icc(np.delete(cube[2], 5, axis=0)), rel=1e-12)
    assert np.isnan(got[4])
    assert got[6] > got[0]  # a stronger patient effect agrees better


def test_icc_table_keeps_complete_patients_and_strips_the_view_prefix() -> None:
    view = view_name("rad", "tumor", "t1c")
    names = [f"{view}__original__firstorder__mean", f"{view}__original__shape__elongation"]
    rows = {p: {c: np.array([i + 0.1 * j, 2.0 * i + 0.05 * j]) for j, c in enumerate(CONDITIONS)}
            for i, p in enumerate(["p1", "p2", "p3"])}
    rows["p4"] = {"original": np.array([9.0, 9.0])}  # lacks three conditions: left out
    frame = icc_table(view, names, rows)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["base_feature"].tolist() == ["original__firstorder__mean", "original__shape__elongation"]
    assert frame["n_patients"].tolist() == [3, 3] and frame["n_conditions"].tolist() == [4, 4]
    assert (frame["icc"] > 0.9).all()


# the perturbations ---------------------------------------------------------------------------
def _ramp_cube(spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> tuple[sitk.Image, sitk.Image]:
    z, y, x = np.mgrid[:20, :20, :20]
    image = sitk.GetImageFromArray((x + 10.0 * y + 100.0 * z).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-3.0, 4.0, 7.5))
    image.SetDirection([float(v) for v in direction])
    cube = np.zeros((20, 20, 20), np.uint8)
    cube[5:15, 5:15, 5:15] = 1
    mask = sitk.GetImageFromArray(cube)
    mask.CopyInformation(image)
    return image, mask


def _count(mask: sitk.Image) -> int:
    return int(sitk.GetArrayViewFromImage(mask).sum())


def test_perturbations_keep_the_grid_and_move_the_boundary_by_one_voxel() -> None:
    image, mask = _ramp_cube()
    out = perturbed(image, mask)
    assert list(out) == list(CONDITIONS)
    for img, msk in out.values():
        for a in (img, msk):
            assert a.GetSize() == image.GetSize() and a.GetSpacing() == image.GetSpacing()
            assert a.GetOrigin() == image.GetOrigin() and a.GetDirection() == image.GetDirection()
        assert img.GetPixelID() == image.GetPixelID() and msk.GetPixelID() == mask.GetPixelID()
    assert _count(out["original"][1]) == 1000
    assert _count(out["eroded"][1]) == 8**3  # one face layer off each side
    assert _count(out["dilated"][1]) == 1000 + 6 * 100  # 6-connected: faces only, no edges
    assert out["eroded"][0] is image and out["dilated"][0] is image
    shifted_image, shifted_mask = out["shifted"]
    assert _count(shifted_mask) == 1000  # moved, not resized
    moved = sitk.GetArrayFromImage(shifted_image)[:-1, :-1, :-1]
    original = sitk.GetArrayFromImage(image)[:-1, :-1, :-1]
    np.testing.assert_allclose(moved - original, 0.5 + 5.0 + 50.0, atol=1e-3)  # linear, half voxel
    zz, yy, xx = np.nonzero(sitk.GetArrayFromImage(shifted_mask))
    assert {zz.min(), yy.min(), xx.min()} <= {4, 5} and {zz.max(), yy.max(), xx.max()} <= {13, 14}


def test_perturbations_follow_an_oblique_anisotropic_grid() -> None:
    image, mask = _ramp_cube(spacing=(0.8, 1.0, 1.3), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    out = perturbed(image, mask)
    shifted_image, shifted_mask = out["shifted"]
    assert shifted_mask.GetDirection() == image.GetDirection()
    moved = sitk.GetArrayFromImage(shifted_image)[:-1, :-1, :-1]
    original = sitk.GetArrayFromImage(image)[:-1, :-1, :-1]
    np.testing.assert_allclose(moved - original, 55.5, atol=1e-3)  # half a voxel in index space
    assert _count(shifted_mask) == 1000


def test_small_rois_lose_conditions_or_are_refused() -> None:
    image, _ = _ramp_cube()
    slab = np.zeros((20, 20, 20), np.uint8)
    slab[10, 5:10, 5:10] = 1  # 25 voxels, one slice thick: erosion leaves nothing
    mask = sitk.GetImageFromArray(slab)
    mask.CopyInformation(image)
    out = perturbed(image, mask)
    assert "eroded" not in out and {"original", "dilated", "shifted"} <= set(out)
    tiny = np.zeros_like(slab)
    tiny[10, 10, 10:10 + MIN_VOXELS - 1] = 1
    small = sitk.GetImageFromArray(tiny)
    small.CopyInformation(image)
    with pytest.raises(FeatureError, match=f"fewer than the {MIN_VOXELS}"):
        perturbed(image, small)


# the table and the driver --------------------------------------------------------------------
def test_sample_is_seeded_nested_and_takes_each_patients_first_study() -> None:
    studies = [StudyVersion(f"P{i:02d}", "c", f"S{i}-{j}", 1, dt.date(2020 + j, 1, 1), f"z/{i}/{j}")
               for i in range(12) for j in (1, 0)]
    five, eight = sample_studies(studies, 5, seed=7), sample_studies(studies, 8, seed=7)
    assert len(five) == 5 and {s.patient_id for s in five} <= {s.patient_id for s in eight}
    assert five == sample_studies(studies, 5, seed=7) != sample_studies(studies, 5, seed=8)
    assert all(s.study_id.endswith("-0") for s in eight)  # the earliest study
    assert len(sample_studies(studies, 50, seed=0)) == 12


def test_missing_table_names_the_command(tmp_path) -> None:
    ws = Workspace.at(tmp_path)
    with pytest.raises(NotFoundError) as err:
        read_stability(ws, "rad-000000000000")
    assert stability_path(ws, "rad-000000000000") in str(err.value)
    assert "atrx stability" in (err.value.fix or "")
    with pytest.raises(InputError):
        write_stability(ws, "rad-000000000000", pd.DataFrame({"view": []}), {})


@pytest.fixture(scope="module")
def stability_run(tmp_path_factory, cluster):  # noqa: F811 (the imported fixture)
    ws = build_workspace(tmp_path_factory.mktemp("stability-home"), STUDIES)
    calls: list[tuple[int, int, str]] = []
    summary = run_stability(ws, patients=4, seed=0, scheduler=cluster.scheduler.address,
                            params=reduced_params(), progress=lambda *a: calls.append(a))
    return ws, summary, calls


def test_run_writes_one_row_per_view_and_feature(stability_run) -> None:
    ws, summary, calls = stability_run
    version = radiomics_version(reduced_params())
    frame = read_stability(ws, version)
    n = feature_count(reduced_params())
    views = [view_name("rad", r, s) for r in ROIS for s in SEQUENCES]
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 6 * n
    assert frame.groupby("view").size().to_dict() == dict.fromkeys(views, n)
    assert not frame.duplicated(["view", "feature"]).any()
    assert all(f == f"{v}__{b}" for v, f, b in frame[["view", "feature", "base_feature"]].itertuples(index=False))
    assert np.isfinite(frame["icc"]).mean() > 0.8 and (frame["icc"].dropna() <= 1.0 + 1e-9).all()
    by_view = frame.groupby("view")["n_patients"].max()
    assert by_view["rad_tumor_t1c"] == 4 and by_view["rad_edema_t2f"] == 3  # D's edema skipped
    assert (frame["n_conditions"] == 4).all()
    # the table's ICCs are those of the patients x conditions matrix computed here, in process
    tumor = frame[frame["view"] == "rad_tumor_t1c"]
    direct = [[list(stability_task(ws.images, version_path(CENTER, pid, sid, v), "tumor", "t1c",
                                   reduced_params()).values[c]) for c in CONDITIONS]
              for pid, sid, v, *_ in STUDIES]
    cube = np.transpose(np.asarray(direct), (2, 0, 1))  # features x patients x conditions
    np.testing.assert_allclose(tumor["icc"], icc_features(cube), rtol=1e-9, equal_nan=True)
    assert summary.results["ok"] == 22 and len(summary.skipped) == 2
    assert {v for _, v, _ in summary.skipped} == {"rad_edema_t1c", "rad_edema_t2f"}
    assert summary.path == stability_path(ws, version) and summary.features == len(frame)
    assert calls[-1][:2] == (24, 24)
    rows = dict(summary.rows())
    assert rows["ROIs computed"] == "22" and rows["ROIs skipped"] == "2"


def test_run_records_how_the_table_was_made(stability_run) -> None:
    ws, summary, _ = stability_run
    version = radiomics_version(reduced_params())
    meta = read_stability(ws, version).attrs["stability"]
    assert meta["seed"] == 0 and meta["patients"] == summary.patients and len(meta["patients"]) == 4
    assert meta["centers"] == [CENTER] and meta["centers_requested"] is None  # every center
    assert meta["radiomics_version"] == version and meta["engine"].startswith("atrx")
    assert set(meta["perturbations"]) == set(CONDITIONS) and meta["icc"].startswith("ICC(2,1)")
    assert {"numpy", "SimpleITK", "python", "atrx"} <= set(meta["libraries"]) and meta["created_at"]
    assert META_KEY.encode() in pq.read_schema(summary.path).metadata
    before = read_stability(ws, version)
    again = write_stability(ws, version, before, meta)  # round trip, replaced atomically
    assert again == summary.path
    after = read_stability(ws, version)
    pd.testing.assert_frame_equal(after, before)
    assert after.attrs["stability"] == before.attrs["stability"]
    assert not [p for p in Path(again).parent.iterdir() if p.name.endswith(".tmp")]  # no temp files


def test_cli_runs_and_reports(stability_run, cluster) -> None:  # noqa: F811
    ws, _, _ = stability_run
    runner = CliRunner()
    done = runner.invoke(app, ["stability", "--home", ws.home, "--patients", "2", "--seed", "1",
                               "--centers", CENTER, "--scheduler", cluster.scheduler.address])
    # the shipped parameter file: its own version and table beside the reduced one's
    assert done.exit_code == 0, done.output
    assert "stability summary" in done.output and "median ICC(2,1)" in done.output
    assert "centers sampled" in done.output
    meta = read_stability(ws, radiomics_version(load_params())).attrs["stability"]
    assert meta["centers"] == meta["centers_requested"] == [CENTER]
    # a center without scans is bad input naming it, before any cluster work
    unknown = runner.invoke(app, ["stability", "--home", ws.home, "--centers", f"{CENTER},Z"])
    assert unknown.exit_code == 2 and "Z" in unknown.output and f"centers with scans: {CENTER}" in unknown.output
    empty = runner.invoke(app, ["stability", "--home", str(ws.home) + "-missing"])
    assert empty.exit_code == 2 and "atrx ingest" in empty.output
