"""The task boundary and the driver's pure steps, without a cluster.

A task turns an unexpected exception into an ``error`` result naming the ROI, except with
``ATRX_DEBUG=1``, where the raw exception (and its traceback) goes through; a bad ROI
(:class:`features.errors.FeatureError`) is a ``failed`` result either way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
import zarr

from atrx.catalog import StudyVersion
from atrx.cluster import _visible_gpus, gpu_worker_threads
from atrx.errors import DEBUG_ENV, AtrxError, ExitCode
from atrx.imagestore import IncompleteVersionError, version_path, write_version
from atrx.names import SEQUENCES, all_views, view_name
from features.compute import Outcome, _task_results, batch_targets, check_outcome, radiomics_device
from features.errors import (
    FeatureError,
    FeaturesJobError,
    RadiomicsParamsError,
    WeightsError,
    WeightsNotFoundError,
)
from features.plan import Target, pending_targets
from features.radiomics import extract_radiomics_rois
from features.tasks import TaskResult, deep_batch_task, radiomics_study_task, radiomics_task
from features.versioning import features_library_versions, pyradiomics_version

N = 24
GEOMETRY = {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "size": [N, N, N]}
PARAMS = {"imageType": {"Original": {}}, "featureClass": {"firstorder": []},
          "setting": {"binWidth": 0.25, "label": 1}}


def _arrays(seed: int) -> dict[str, np.ndarray]:
    """A study whose edema is empty (the lesion is the tumour ball)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:N, :N, :N]
    ball = ((z - N // 2) ** 2 + (y - N // 2) ** 2 + (x - N // 2) ** 2 <= 5**2).astype(np.uint8)
    arrays = {s: rng.standard_normal((N, N, N)).astype(np.float32) for s in SEQUENCES}
    zeros = np.zeros_like(ball)
    return {**arrays, "brain": np.ones_like(ball), "lesion": ball, "overall": ball, "tumor": ball,
            "edema": zeros}


@pytest.fixture()
def store(tmp_path) -> tuple[str, str, str]:
    """(root, a complete version, a version whose write never finished)."""
    root = str(tmp_path / "images.zarr")
    good, broken = version_path("c1", "A-x", "S-x", 1), version_path("c1", "A-x", "S-x", 2)
    write_version(root, good, _arrays(0), {"geometry": GEOMETRY})
    write_version(root, broken, _arrays(1), {"geometry": GEOMETRY})
    zarr.open_group(store=root, path=broken, mode="r+").attrs["complete"] = False
    return root, good, broken


# the task boundary ----------------------------------------------------------------------------
def test_radiomics_task_results_are_typed(store) -> None:
    root, good, _ = store
    ok = radiomics_task(root, good, "tumor", "t1c", PARAMS)
    assert isinstance(ok, TaskResult) and ok.status == "ok" and ok.reason is None
    assert all(k.startswith("rad_tumor_t1c__") for k in ok.values) and ok.seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.status = "failed"  # type: ignore[misc]


def test_an_unexpected_error_is_a_result_without_debug(store, monkeypatch) -> None:
    root, _, broken = store
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    res = radiomics_task(root, broken, "tumor", "t1c", PARAMS)
    assert res.status == "error" and res.values is None
    assert "rad_tumor_t1c" in res.reason and "IncompleteVersionError" in res.reason
    (item,) = deep_batch_task([(root, broken, "tumor", "t1c")], "random:0", "cpu")
    assert item.status == "error" and "dl_tumor_t1c" in item.reason


def test_atrx_debug_lets_the_raw_error_through(store, monkeypatch) -> None:
    root, good, broken = store
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(IncompleteVersionError, match="never marked complete"):
        radiomics_task(root, broken, "tumor", "t1c", PARAMS)
    with pytest.raises(IncompleteVersionError):
        deep_batch_task([(root, good, "tumor", "t1c"), (root, broken, "tumor", "t1c")], "random:0", "cpu")
    with pytest.raises(WeightsError):
        deep_batch_task([(root, good, "tumor", "t1c")], "random:x", "cpu")


@pytest.mark.parametrize("debug", ["", "1"])
def test_a_bad_roi_is_failed_with_or_without_debug(store, monkeypatch, debug) -> None:
    root, good, _ = store
    monkeypatch.setenv(DEBUG_ENV, debug)
    res = radiomics_task(root, good, "edema", "t2f", PARAMS)
    assert res.status == "failed" and "empty mask" in res.reason
    empty, tumor = deep_batch_task([(root, good, "edema", "t1c"), (root, good, "tumor", "t1c")],
                                   "random:0", "cpu")
    assert empty.status == "failed" and "empty mask" in empty.reason
    assert tumor.status == "ok" and len(tumor.values) == 1000


# the driver's pure steps ----------------------------------------------------------------------
def _target(kind: str, zarr_path: str = "c1/A-x/S-x/v1", roi: str = "tumor", seq: str = "t1c") -> Target:
    return Target("A-x", "S-x", 1, zarr_path, dt.date(2020, 1, 1), kind, roi, seq)


class _GaveUp:
    """A future the scheduler gave up on (a worker died on it repeatedly)."""

    released = False

    def result(self) -> None:
        raise RuntimeError("KilledWorker: worker died three times")

    def release(self) -> None:
        self.released = True


def test_the_driver_records_a_task_the_cluster_gave_up_on_unless_debugging(monkeypatch) -> None:
    batch = [_target("dl"), _target("dl", roi="edema")]
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    fut = _GaveUp()
    out = _task_results(fut, batch)
    assert [r.status for r in out] == ["error", "error"] and fut.released
    assert "dl_edema_t1c of c1/A-x/S-x/v1: the task failed on the cluster" in out[1].reason
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="KilledWorker"):
        _task_results(_GaveUp(), batch)


def test_check_outcome_gives_a_float64_row_or_an_error() -> None:
    t = _target("rad")
    names = [f"{t.view}__a", f"{t.view}__b"]
    ok = check_outcome(t, TaskResult("ok", {names[0]: 1.5, names[1]: 2.0}, None, 0.3), names)
    assert ok.status == "ok" and ok.row.dtype == np.float64 and ok.row.tolist() == [1.5, 2.0]
    wrong = check_outcome(t, TaskResult("ok", {names[1]: 2.0, names[0]: 1.5}, None, 0.3), names)
    assert wrong == Outcome("error", None, wrong.reason, 0.3) and "out of date" in wrong.reason
    failed = check_outcome(t, TaskResult("failed", None, "empty mask", 0.1), names)
    assert failed == Outcome("failed", None, "empty mask", 0.1)


def test_batches_group_radiomics_by_study_version_and_deep_crops_by_study() -> None:
    rad = [_target("rad", zarr_path=p, roi=r) for p in ("c1/B/S/v1", "c1/A/S/v1") for r in ("tumor", "edema")]
    dl = [_target("dl", zarr_path=p, roi=r) for p in ("c1/B/S/v1", "c1/A/S/v1") for r in ("tumor", "edema")]
    batches = batch_targets([dl[0], rad[0], dl[1], rad[2], rad[1], dl[2], dl[3], rad[3]], batch_size=3)
    assert batches[:2] == [[rad[0], rad[1]], [rad[2], rad[3]]]  # one task per version, first seen first
    assert [[t.zarr_path for t in b] for b in batches[2:]] == [["c1/A/S/v1"] * 2 + ["c1/B/S/v1"],
                                                               ["c1/B/S/v1"]]


@pytest.mark.parametrize("engine", ["pyradiomics", "atrx"])
def test_study_task_equals_one_task_per_roi(store, engine) -> None:
    """One task for a version's ROIs gives each ROI what its own task gives, bad ROIs included."""
    root, good, broken = store
    params = {**PARAMS, "engine": engine,
              "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}},
              "featureClass": {"firstorder": [], "glcm": []}}
    items = [("tumor", "t1c"), ("edema", "t1c"), ("overall", "t2f"), ("tumor", "t2f")]
    batch = radiomics_study_task(root, good, items, params)
    single = [radiomics_task(root, good, roi, seq, params) for roi, seq in items]
    assert [r.status for r in batch] == ["ok", "failed", "ok", "ok"]
    for b, s in zip(batch, single, strict=True):
        assert b.status == s.status and b.values == s.values  # bitwise, names in schema order
    assert "rad_edema_t1c of c1/A-x/S-x/v1" in batch[1].reason and "empty mask" in batch[1].reason
    gone = radiomics_study_task(root, broken, items[:2], params)
    assert [r.status for r in gone] == ["error", "error"]
    assert "rad_edema_t1c of c1/A-x/S-x/v2" in gone[1].reason


def test_study_task_on_the_torch_backend_agrees_and_names_bad_rois(store) -> None:
    """``device`` (what ``--gpus`` passes as "cuda") runs the torch backend: same keys in the same
    order, values within 1e-9 of numba's, the bad ROI still ``failed`` with its reason."""
    root, good, _ = store
    params = {**PARAMS, "engine": "atrx", "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}},
              "featureClass": {"firstorder": [], "glcm": [], "glszm": []}}
    items = [("tumor", "t1c"), ("edema", "t1c"), ("overall", "t2f")]
    numba = radiomics_study_task(root, good, items, params)
    torch_cpu = radiomics_study_task(root, good, items, params, "cpu")
    assert [r.status for r in torch_cpu] == [r.status for r in numba] == ["ok", "failed", "ok"]
    assert "rad_edema_t1c of c1/A-x/S-x/v1" in torch_cpu[1].reason
    for a, b in ((numba[0], torch_cpu[0]), (numba[2], torch_cpu[2])):
        assert list(a.values) == list(b.values)
        np.testing.assert_allclose(list(b.values.values()), list(a.values.values()), rtol=1e-9, atol=1e-12)


def test_gpus_choose_the_radiomics_device_by_engine(caplog) -> None:
    assert radiomics_device({**PARAMS, "engine": "atrx"}, gpus=False) is None
    assert radiomics_device({**PARAMS, "engine": "atrx"}, gpus=True) == "cuda"
    assert radiomics_device({**PARAMS, "engine": "pyradiomics"}, gpus=True) is None
    assert "no GPU backend" in caplog.text
    with pytest.raises(RadiomicsParamsError, match="pyradiomics engine") as info:
        extract_radiomics_rois(None, {}, "t1c", {**PARAMS, "engine": "pyradiomics"}, "cuda")
    assert "engine: atrx" in info.value.fix


def test_gpu_workers_share_the_host_cores_among_the_gpus(monkeypatch) -> None:
    """Under ``--gpus`` each GPU runs cores/GPUs tasks at once unless ``--threads-per-gpu`` says."""
    assert gpu_worker_threads(16, 1) == 16
    assert gpu_worker_threads(16, 3) == 5
    assert gpu_worker_threads(2, 4) == 1
    assert gpu_worker_threads(16, 1, requested=4) == 4
    with pytest.raises(AtrxError, match="threads-per-gpu") as info:
        gpu_worker_threads(16, 1, requested=0)
    assert "leave it out" in info.value.fix
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2, 3")
    assert _visible_gpus() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _visible_gpus() == 0
    assert gpu_worker_threads(16, _visible_gpus()) == 16


def test_pending_skips_only_rows_settled_at_the_current_version() -> None:
    study = StudyVersion("A-x", "c1", "S-x", 2, dt.date(2020, 1, 1), "c1/A-x/S-x/v2")
    views = {view_name(*v): "rad-new" for v in all_views() if v[0] == "rad"}
    settled = {("A-x", "S-x", 2, "rad_tumor_t1c", "rad-new"),   # done at this version
               ("A-x", "S-x", 2, "rad_tumor_t2f", "rad-old"),   # another recipe: computed again
               ("A-x", "S-x", 1, "rad_edema_t1c", "rad-new")}   # another study version
    targets = pending_targets([study], settled, views)
    assert [t.view for t in targets] == [v for v in views if v != "rad_tumor_t1c"]
    assert {(t.scan_version, t.zarr_path) for t in targets} == {(2, "c1/A-x/S-x/v2")}


# errors and versions --------------------------------------------------------------------------
def test_feature_errors_are_in_the_family_and_keep_their_builtins() -> None:
    assert issubclass(FeatureError, AtrxError) and issubclass(FeatureError, ValueError)
    assert issubclass(WeightsError, ValueError) and WeightsError("x").exit_code == ExitCode.BAD_INPUT
    assert issubclass(WeightsNotFoundError, FileNotFoundError)
    assert WeightsNotFoundError("x").exit_code == ExitCode.BAD_INPUT
    assert issubclass(FeaturesJobError, RuntimeError) and FeaturesJobError("x").exit_code == ExitCode.FAILURE
    with pytest.raises(WeightsError) as info:
        from features.deep import WeightsSpec

        WeightsSpec.parse("random:seven")
    assert "random:SEED" in info.value.fix


def test_library_versions_keep_the_keys_driver_and_workers_compare() -> None:
    libs = features_library_versions()
    assert list(libs) == ["pyradiomics", "torch", "torchvision", "SimpleITK", "numpy"]
    assert libs["pyradiomics"] == pyradiomics_version()
    assert libs["numpy"] == np.__version__
    assert "not installed" not in libs.values()
