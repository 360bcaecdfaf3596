"""The features job end to end: a real Zarr store, DuckDB catalog, Dask cluster and offline store.

The store is built here (small 40x48x40 studies: z-scored noise, a bright blob, ball masks), so the
test does not depend on the ingest stage. Most runs use a reduced radiomics parameter set (the
Original image only) and seeded random CNN weights to stay fast; one run uses the real parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from atrx.catalog import Catalog
from atrx.errors import InputError
from atrx.imagestore import version_path, write_version
from atrx.names import ROIS, SEQUENCES, all_views, view_name
from atrx.workspace import Workspace
from features.deep import N_DEEP_FEATURES, deep_feature_names
from features.errors import WeightsNotFoundError
from features.job import run_features
from features.radiomics import feature_count, load_params, view_feature_names
from features.reference import reference_stats, shell_mask
from features.tasks import radiomics_task
from features.versioning import deep_version, radiomics_version

pytestmark = pytest.mark.timeout(600)

Z, Y, X = 40, 48, 40
GEOMETRY = {"spacing": [1.0, 1.0, 1.0], "origin": [-20.0, -24.0, -20.0],
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "size": [X, Y, Z]}
CENTER = "c1"
# patient, study, version, scan date, seed, edema present
STUDIES = [
    ("A-00000000000a", "S-a1", 1, dt.date(2020, 1, 10), 0, True),
    ("A-00000000000b", "S-b1", 1, dt.date(2020, 3, 5), 1, True),
    ("A-00000000000b", "S-b2", 1, dt.date(2021, 3, 5), 2, False),  # lesion == tumor: empty edema
    ("A-00000000000c", "S-c1", 1, dt.date(2019, 6, 1), 3, True),   # superseded by version 2
    ("A-00000000000c", "S-c1", 2, dt.date(2019, 6, 1), 4, True),
]
LATEST = [s for s in STUDIES if not (s[1] == "S-c1" and s[2] == 1)]
NO_EDEMA = ("A-00000000000b", "S-b2")
RANDOM = "random:0"


def reduced_params() -> dict:
    """The repository's settings on the Original image only (107 features instead of 1130)."""
    return {**load_params(), "imageType": {"Original": {}}}


def study_arrays(seed: int, edema: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:Z, :Y, :X]
    d2 = (z - Z // 2) ** 2 + (y - Y // 2) ** 2 + (x - X // 2) ** 2
    tumor = d2 <= 5**2
    overall = d2 <= 9**2 if edema else tumor
    arrays = {}
    for seq in SEQUENCES:
        a = rng.standard_normal((Z, Y, X)) + 3.0 * np.exp(-d2 / (2 * 6.0**2))
        arrays[seq] = ((a - a.mean()) / a.std()).astype(np.float32)
    arrays["brain"] = np.ones((Z, Y, X), np.uint8)
    arrays["lesion"] = overall.astype(np.uint8)
    arrays["overall"] = overall.astype(np.uint8)
    arrays["tumor"] = tumor.astype(np.uint8)
    arrays["edema"] = (overall & ~tumor).astype(np.uint8)
    return arrays


def build_workspace(home: Path, studies: list[tuple] = STUDIES) -> Workspace:
    """Write ``studies`` to a fresh image store and catalog (scans, clinical, labels)."""
    ws = Workspace.at(home)
    ws.ensure()
    with Catalog(ws.catalog) as cat:
        run_id = cat.start_run("ingest", CENTER, None, None, {})
        for pid, sid, version, date, seed, edema in studies:
            path = version_path(CENTER, pid, sid, version)
            arrays = study_arrays(seed, edema)
            digest = write_version(ws.images, path, arrays, {"geometry": GEOMETRY, "scan_date": date.isoformat()})
            cat.record_scan(CENTER, run_id, {
                "patient_id": pid, "study_id": sid, "version": version, "scan_date": date,
                "zarr_path": path, "source_hash": f"src-{seed}", "content_hash": digest,
                "shape": [Z, Y, X], "roi_voxels": {k: int(arrays[k].sum()) for k in ROIS},
                "sources": {},
            }, "pp-test", "pre-test")
        patients = sorted({s[0] for s in studies})
        cat.upsert_clinical(CENTER, run_id, [
            {"patient_id": pid, "age": 40.0 + i, "sex": "female" if i % 2 else "male", "who_grade": 4,
             "vasari_score": 10.0 + i, "atrx_status": "mutant" if i % 2 else "wildtype",
             "pathology_date": dt.date(2022, 1, 1), "row_hash": f"h{i}"}
            for i, pid in enumerate(patients)])
        cat.finish_run(run_id, "ok", {})
    return ws


def read_view(ws: Workspace, view: str, version: str) -> pd.DataFrame:
    parts = sorted(Path(ws.offline, view, version).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _lineage_rows(ws: Workspace) -> int:
    if not Path(ws.catalog).exists():
        return 0
    with Catalog(ws.catalog, read_only=True) as cat:
        return cat.query("select count(*) from lineage")[0][0]


def lineage(ws: Workspace) -> pd.DataFrame:
    with Catalog(ws.catalog) as cat:
        return cat.lineage()


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes shared by the tests (the env survives restarts)."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR, env=env) as lc, Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cluster):
    ws = build_workspace(tmp_path_factory.mktemp("features-home"))
    calls: list[tuple[int, int, str]] = []
    summary = run_features(ws, scheduler=cluster.scheduler.address, weights=RANDOM, batch_size=8,
                           radiomics_params=reduced_params(), progress=lambda *a: calls.append(a))
    return ws, summary, calls


# versions and tasks ---------------------------------------------------------------------------
def test_versions_change_with_what_changes_the_numbers() -> None:
    params = reduced_params()
    assert radiomics_version(params) == radiomics_version(json.loads(json.dumps(params)))
    assert radiomics_version(params).startswith("rad-") and len(radiomics_version(params)) == 16
    assert radiomics_version(params) != radiomics_version(load_params())
    assert deep_version("a" * 64) == deep_version("a" * 64) != deep_version("b" * 64)
    assert deep_version("a" * 64).startswith("dl-")


def test_radiomics_task_reports_a_bad_roi_instead_of_raising(tmp_path) -> None:
    root, path = str(tmp_path / "images.zarr"), version_path(CENTER, "A-x", "S-x", 1)
    write_version(root, path, study_arrays(0, edema=False), {"geometry": GEOMETRY})
    empty = radiomics_task(root, path, "edema", "t1c", reduced_params())
    assert empty.status == "failed" and empty.values is None
    assert "rad_edema_t1c" in empty.reason and "empty mask" in empty.reason
    missing = radiomics_task(root, "c1/A-x/S-x/v9", "tumor", "t1c", reduced_params())
    assert missing.status == "error" and "v9" in missing.reason
    ok = radiomics_task(root, path, "tumor", "t2f", reduced_params())
    assert ok.status == "ok" and len(ok.values) == feature_count(reduced_params()) + 3
    # the reference tissue: brain within 10 mm of the overall lesion, outside it (features/reference.py)
    arrays = study_arrays(0, False)
    shell = shell_mask(arrays["overall"], arrays["brain"], list(reversed(GEOMETRY["spacing"])), 10.0)
    expected = reference_stats(arrays["t2f"], shell, 100)
    assert [ok.values[f"rad_tumor_t2f__reference__shell__{s}"] for s in ("median", "iqr", "voxels")] == \
        pytest.approx([expected["median"], expected["iqr"], expected["voxels"]], rel=1e-6)
    assert expected["voxels"] > 100 and np.isfinite(expected["median"])
    # the grid comes from the geometry attrs: the volume is measured in mm
    assert ok.values["rad_tumor_t2f__original__shape__voxelvolume"] == float((study_arrays(0, False)["tumor"]).sum())


# one run --------------------------------------------------------------------------------------
def test_the_three_roi_views_of_a_sequence_carry_the_same_reference_tissue(first_run) -> None:
    ws, summary, _ = first_run
    for seq in SEQUENCES:
        frames = {roi: read_view(ws, view_name("rad", roi, seq), summary.versions["rad"])
                  .set_index(["patient_id", "study_id"]) for roi in ROIS}
        cols = [f"__reference__shell__{s}" for s in ("median", "iqr", "voxels")]
        ref = {roi: f[[f"rad_{roi}_{seq}{c}" for c in cols]].set_axis(cols, axis=1)
               for roi, f in frames.items()}
        both = ref["edema"].index  # the study without edema has no edema row
        pd.testing.assert_frame_equal(ref["tumor"].loc[both], ref["edema"])
        pd.testing.assert_frame_equal(ref["tumor"], ref["overall"])
        assert (ref["tumor"][cols[2]] > 100).all() and ref["tumor"][cols[0]].notna().all()


def test_every_view_has_its_rows_names_and_counts(first_run) -> None:
    ws, summary, calls = first_run
    n_rad = feature_count(reduced_params())
    rad_v, dl_v = summary.versions["rad"], summary.versions["dl"]
    assert summary.scans == len(LATEST) == 4
    assert summary.tasks == 4 + 3  # a radiomics task per study version; 24 crops in batches of 8
    assert calls[-1][:2] == (summary.tasks, summary.tasks) and len(calls) == summary.tasks
    for kind, roi, seq in all_views():
        view = view_name(kind, roi, seq)
        frame = read_view(ws, view, rad_v if kind == "rad" else dl_v)
        names = (view_feature_names(roi, seq, reduced_params()) if kind == "rad"
                 else deep_feature_names(roi, seq))
        assert len(names) == (n_rad + 3 if kind == "rad" else N_DEEP_FEATURES)
        assert list(frame.columns) == ["patient_id", "event_timestamp", "created_timestamp",
                                       "feature_version", "study_id", "scan_version", *names]
        expected = len(LATEST) - (roi == "edema")
        assert len(frame) == expected == summary.per_view[view].written == summary.per_view[view].total
        assert not frame.duplicated(["patient_id", "study_id", "scan_version"]).any()
        assert frame[names].notna().all().all() or kind == "rad"
        assert (frame["feature_version"] == (rad_v if kind == "rad" else dl_v)).all()
        # only the latest version of a study; event time = scan date (UTC)
        got = dict(zip(frame["study_id"], frame["scan_version"], strict=True))
        assert got.get("S-c1") == 2
        dates = {s[1]: s[3] for s in LATEST}
        for sid, ts in zip(frame["study_id"], frame["event_timestamp"], strict=True):
            assert ts == pd.Timestamp(dates[sid], tz="UTC")
    assert summary.results == {"ok": 44, "failed": 4}
    labels = dict(summary.rows())
    assert labels["ROIs failed (recorded, not retried)"] == "4"
    assert [v for v, _, _ in summary.view_rows()] == [view_name(*v) for v in all_views()]


def test_a_failed_roi_is_in_lineage_with_its_reason_and_not_in_parquet(first_run) -> None:
    ws, summary, _ = first_run
    rows = lineage(ws)
    assert len(rows) == len(LATEST) * 12
    assert not rows.duplicated(["patient_id", "study_id", "scan_version", "feature_view"]).any()
    failed = rows[rows["status"] == "failed"]
    assert sorted(failed["feature_view"]) == ["dl_edema_t1c", "dl_edema_t2f", "rad_edema_t1c", "rad_edema_t2f"]
    assert set(zip(failed["patient_id"], failed["study_id"], strict=True)) == {NO_EDEMA}
    assert failed["reason"].str.contains("empty mask").all()
    assert {(p, v) for p, v, _, _ in summary.failure_rows()} == {
        (NO_EDEMA[0], v) for v in failed["feature_view"]}
    for view in failed["feature_view"]:
        frame = read_view(ws, view, summary.versions[view.split("_")[0]])
        assert NO_EDEMA[1] not in set(frame["study_id"])


def test_lineage_records_versions_libraries_and_weights(first_run) -> None:
    ws, summary, _ = first_run
    rows = lineage(ws)
    dl = rows[rows["feature_view"].str.startswith("dl_")]
    rad = rows[rows["feature_view"].str.startswith("rad_")]
    for _, row in dl.iterrows():
        v = json.loads(row["versions"])
        assert v["weights"] == RANDOM and v["weights_id"] == summary.weights_id
        assert v["feature_version"] == row["feature_version"] == summary.versions["dl"]
        assert {"pyradiomics", "torch", "torchvision", "SimpleITK", "numpy"} <= set(v)
    assert (rad["feature_version"] == summary.versions["rad"]).all()
    assert rad["params_hash"].nunique() == 1 and len(rad["params_hash"].iloc[0]) == 64
    with Catalog(ws.catalog) as cat:
        (stage, status, versions, counts), = cat.query(
            "SELECT stage, status, versions, counts FROM runs WHERE run_id = ?", [summary.run_id])
    assert (stage, status) == ("features", "ok")
    assert json.loads(versions)["weights"] == RANDOM
    assert json.loads(counts)["ok"] == 44


def test_clinical_and_labels_are_exported_and_views_registered(first_run) -> None:
    ws, summary, _ = first_run
    assert summary.clinical_exported
    assert set(summary.applied) >= {view_name(*v) for v in all_views()}
    parts = list(Path(ws.offline, "clinical").rglob("*.parquet"))  # its layout is feature_repo's
    assert parts, "no clinical Parquet written"
    frame = pd.concat([pd.read_parquet(p) for p in parts])
    first_scan = {"A-00000000000a": dt.date(2020, 1, 10), "A-00000000000b": dt.date(2020, 3, 5),
                  "A-00000000000c": dt.date(2019, 6, 1)}
    for pid, ts in zip(frame["patient_id"], frame["event_timestamp"], strict=True):
        assert pd.Timestamp(ts).tz_convert("UTC") == pd.Timestamp(first_scan[pid], tz="UTC")


def test_a_rerun_with_nothing_new_submits_nothing(first_run, cluster) -> None:
    ws, first, _ = first_run
    parts = sorted(Path(ws.offline).rglob("*.parquet"))
    n_lineage = len(lineage(ws))
    again = run_features(ws, scheduler=cluster.scheduler.address, weights=RANDOM,
                         radiomics_params=reduced_params())
    assert again.tasks == 0 and sum(again.results.values()) == 0
    assert {v: c.written for v, c in again.per_view.items()} == dict.fromkeys(first.per_view, 0)
    assert {v: c.total for v, c in again.per_view.items()} == {v: c.total for v, c in first.per_view.items()}
    assert sorted(Path(ws.offline).rglob("*.parquet")) == parts
    assert len(lineage(ws)) == n_lineage
    assert not again.clinical_exported


def test_random_weights_give_the_same_features_in_a_fresh_cluster(first_run, tmp_path) -> None:
    """``random:0`` is a reproducible model: another run in new worker processes gives the same numbers."""
    ws, first, _ = first_run
    other = build_workspace(tmp_path / "home")
    second = run_features(other, workers=2, weights=RANDOM, batch_size=5, kinds=("dl",))
    assert second.weights_id == first.weights_id and second.versions["dl"] == first.versions["dl"]
    for kind, roi, seq in all_views():
        if kind != "dl":
            continue
        view = view_name(kind, roi, seq)
        a = read_view(ws, view, first.versions["dl"]).sort_values("study_id", ignore_index=True)
        b = read_view(other, view, second.versions["dl"]).sort_values("study_id", ignore_index=True)
        assert list(a["study_id"]) == list(b["study_id"])
        names = deep_feature_names(roi, seq)
        np.testing.assert_allclose(a[names].to_numpy(), b[names].to_numpy(), rtol=1e-4, atol=1e-4)


def test_a_new_study_version_is_computed_alone(first_run, cluster) -> None:
    """Version 2 of a study gets its 12 views; nothing else is recomputed, version 1 rows stay."""
    ws, first, _ = first_run
    pid, sid, _, date, _, _ = STUDIES[0]
    with Catalog(ws.catalog) as cat:
        path = version_path(CENTER, pid, sid, 2)
        arrays = study_arrays(99, edema=True)
        digest = write_version(ws.images, path, arrays, {"geometry": GEOMETRY})
        cat.record_scan(CENTER, "ingest-test-2", {
            "patient_id": pid, "study_id": sid, "version": 2, "scan_date": date, "zarr_path": path,
            "source_hash": "src-99", "content_hash": digest, "shape": [Z, Y, X], "roi_voxels": {},
            "sources": {}}, "pp-test", "pre-test")
    summary = run_features(ws, scheduler=cluster.scheduler.address, weights=RANDOM,
                           radiomics_params=reduced_params())
    assert summary.tasks == 1 + 1 and summary.results == {"ok": 12}  # one radiomics task, one deep batch
    for view, written, total in summary.view_rows():
        assert written == 1 and total == first.per_view[view].total + 1
        frame = read_view(ws, view, summary.versions[view.split("_")[0]])
        versions = sorted(frame.loc[frame["study_id"] == sid, "scan_version"])
        assert versions == [1, 2]  # the old row stays; Feast takes the newer created_timestamp


# failure modes --------------------------------------------------------------------------------
def test_a_worker_killed_mid_run_still_gives_every_row_once(tmp_path, cluster) -> None:
    """SIGKILL the worker running a deep batch; the scheduler reruns it elsewhere, rows stay unique."""
    ws = build_workspace(tmp_path / "home")
    killed: dict[str, int] = {}

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for addr, keys in cluster.processing().items():
                if any(str(k).startswith("dl-batch") for k in keys):
                    pid = cluster.run(os.getpid, workers=[addr])[addr]
                    os.kill(pid, signal.SIGKILL)
                    killed[addr] = pid
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    summary = run_features(ws, scheduler=cluster.scheduler.address, weights=RANDOM, batch_size=4,
                           radiomics_params=reduced_params())
    killer.join(timeout=5)
    assert killed, "the killer never saw a deep batch running"
    cluster.wait_for_workers(2, timeout=60)
    assert not set(killed) & set(cluster.scheduler_info(n_workers=-1)["workers"])  # it really died
    assert summary.results == {"ok": 44, "failed": 4}
    rows = lineage(ws)
    assert len(rows) == len(LATEST) * 12
    assert not rows.duplicated(["patient_id", "study_id", "scan_version", "feature_view"]).any()
    for kind, roi, seq in all_views():
        view = view_name(kind, roi, seq)
        frame = read_view(ws, view, summary.versions[kind])
        assert len(frame) == len(LATEST) - (roi == "edema")
        assert not frame.duplicated(["patient_id", "study_id", "scan_version"]).any()


def test_a_killed_driver_keeps_its_checkpoints_and_the_next_run_does_the_rest(tmp_path, cluster) -> None:
    """SIGKILL the whole `atrx features` process group after its first checkpoint: what was
    stored stays (Parquet + lineage), the next run computes only the rest, every ROI gets one
    lineage row."""
    ws = build_workspace(tmp_path / "home")
    env = {**os.environ, "ATRX_HOME": ws.home, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atrx.cli", "features", "--weights", RANDOM, "--workers", "1",
         "--checkpoint-seconds", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    # the lineage rows of the first checkpoint follow its Parquet parts; the catalog can be read
    # while the job runs (it holds the file only for its short transactions)
    while time.monotonic() < deadline and not _lineage_rows(ws):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    all_targets = len(LATEST) * 12
    resumed = run_features(ws, scheduler=cluster.scheduler.address, weights=RANDOM)
    computed = sum(resumed.results.values())
    assert 0 < computed < all_targets, f"the rerun computed {computed} of {all_targets} ROIs"
    rows = lineage(ws)
    assert len(rows) == all_targets
    assert not rows.duplicated(["patient_id", "study_id", "scan_version", "feature_view"]).any()
    assert set(rows["status"]) == {"ok", "failed"}  # failed: the study without edema
    for kind, roi, seq in all_views():
        view = view_name(kind, roi, seq)
        frame = read_view(ws, view, resumed.versions[kind])
        keys = set(zip(frame["patient_id"], frame["study_id"], frame["scan_version"], strict=True))
        ok = rows[(rows["feature_view"] == view) & (rows["status"] == "ok")]
        assert keys == set(zip(ok["patient_id"], ok["study_id"], ok["scan_version"], strict=True))


def test_missing_imagenet_weights_fail_before_any_work(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started before the weights were checked")

    monkeypatch.setattr("features.compute.dask_client", no_cluster)
    ws = Workspace.at(tmp_path / "home")
    with pytest.raises(WeightsNotFoundError, match="ImageNet ResNet34 weights not found") as info:
        run_features(ws, weights="imagenet")
    assert str(tmp_path / "empty-torch-home") in str(info.value)
    assert not Path(ws.catalog).exists()


@pytest.mark.parametrize("gpus, scheduler, fix", [(False, None, "add --gpus"),
                                                   (True, "tcp://127.0.0.1:1", "--nthreads N --resources GPU=N")])
def test_threads_per_gpu_outside_the_gpu_cluster_it_starts_fails_before_any_work(
        tmp_path, gpus, scheduler, fix) -> None:
    """``--threads-per-gpu`` sizes the LocalCUDACluster of ``--gpus``; anywhere else it would be
    silently ignored, so it is refused, naming what sizes the workers there."""
    ws = Workspace.at(tmp_path / "home")
    with pytest.raises(InputError, match="--threads-per-gpu applies only") as info:
        run_features(ws, gpus=gpus, scheduler=scheduler, weights=RANDOM, threads_per_gpu=2)
    assert fix in info.value.fix
    assert not Path(ws.catalog).exists()


def test_workers_with_the_gpu_cluster_fails_before_any_work(tmp_path) -> None:
    """The GPU cluster has one worker per GPU: a ``--workers`` count would be silently ignored."""
    ws = Workspace.at(tmp_path / "home")
    with pytest.raises(InputError, match="--workers does not apply with --gpus") as info:
        run_features(ws, gpus=True, workers=4, weights=RANDOM)
    assert "CUDA_VISIBLE_DEVICES" in info.value.fix and "--threads-per-gpu" in info.value.fix
    assert not Path(ws.catalog).exists()


def test_the_real_parameters_on_one_study(tmp_path, cluster) -> None:
    ws = build_workspace(tmp_path / "home", STUDIES[:1])
    summary = run_features(ws, scheduler=cluster.scheduler.address, weights=RANDOM)
    assert summary.results == {"ok": 12}
    for kind, roi, seq in all_views():
        view = view_name(kind, roi, seq)
        frame = read_view(ws, view, summary.versions[kind])
        names = view_feature_names(roi, seq) if kind == "rad" else deep_feature_names(roi, seq)
        assert len(names) == (1133 if kind == "rad" else 1000)
        assert list(frame.columns)[6:] == names and len(frame) == 1
    assert summary.versions["rad"] == radiomics_version(load_params())
