"""Serving end to end: a REAL ``bentoml serve`` on a free loopback port over a REAL Feast store.

The workspace is built like the pipeline builds it (``write_offline`` + ``export_clinical_and_
labels`` + ``apply``), the model is trained and registered by ``training.run.run_train`` on a tiny
study and promoted, and ``serving.materialize.run_materialize`` loads the online store. Nothing is
mocked. The server is started once per module (bounded wait) and always stopped; the test that
switches a feature version runs last because it changes the shared workspace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from stable_table import write_all_stable

from atrx.workspace import Workspace

pytestmark = pytest.mark.timeout(600)

VIEWS = ("rad_overall_t1c", "rad_overall_t2f")
N_FEATURES = 6
CENTERS = {"A": 20, "B": 20, "C": 14}
CREATED = pd.Timestamp("2024-01-01", tz="UTC")
# pseudonyms (CENTER-12 hex) that sort after the random ones of their center
NO_IMAGING = "C-ffffffffff01"  # clinical row and label, no imaging row in any view
NULL_VASARI = "C-ffffffffff02"  # every row present, clinical vasari_score is null
API_KEY = "test-key-0123456789-abcdefghijklmnopqrstuvwxyz"  # the service wants >= 32
START_TIMEOUT = 180.0
TINY_STUDY = """\
name: tiny
imaging:
  feature_types: [radiomics]
  rois: [overall]
  compare_classifiers: [lr]
selection:
  lasso_cv: 3
  lasso_cs: 5
"""


#: first-order features of the reference-tissue variant: location, location, location, spread,
#: squared spread, unchanged by the map (training/reference_norm.py)
REFERENCE_FEATURES = ("mean", "median", "10percentile", "interquartilerange", "variance", "skewness")


def feature_names(view: str, reference: bool = False) -> list[str]:
    """The view's columns: ``f0000``..., or with ``reference`` original first-order features
    followed by the view's reference-tissue median, IQR and voxel count."""
    if not reference:
        return [f"{view}__f{j:04d}" for j in range(N_FEATURES)]
    return ([f"{view}__original__firstorder__{f}" for f in REFERENCE_FEATURES]
            + [f"{view}__reference__shell__{s}" for s in ("median", "iqr", "voxels")])


def build_workspace(home: Path, seed: int = 0, reference: bool = False) -> Workspace:
    """Offline store + Feast registry of a small three-center cohort (two imaging views).

    ``reference``: first-order features and reference-tissue columns, each center's intensities
    offset and scaled by its own reference (the normalisation's case)."""
    from feature_repo.offline import export_clinical_and_labels, write_offline
    from feature_repo.store import apply

    rng = np.random.default_rng(seed)
    pids = [f"{c}-{rng.bytes(6).hex()}" for c, n in CENTERS.items() for _ in range(n)]
    pids += [NO_IMAGING, NULL_VASARI]
    n = len(pids)
    y = rng.permutation(np.arange(n) % 2)
    pathology = pd.Timestamp("2019-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 1200, n), unit="D"
    )
    scan = pathology - pd.to_timedelta(rng.integers(3, 30, n), unit="D")
    vasari = rng.normal(72.5 - 1.5 * y, 6)
    vasari[pids.index(NULL_VASARI)] = np.nan
    clinical = pd.DataFrame(
        {
            "patient_id": pids,
            "age": rng.normal(54 - 3 * y, 11),
            "sex": rng.choice(["male", "female"], n),
            "who_grade": np.where(rng.random(n) < 0.45 + 0.15 * y, 4, 3),
            "vasari_score": vasari,
            "event_timestamp": scan,
        }
    )
    labels = pd.DataFrame(
        {
            "patient_id": pids,
            "atrx_status": np.where(y == 1, "mutant", "wildtype"),
            "pathology_date": pathology.date,
        }
    )
    ws = Workspace.at(home)
    ws.ensure()
    names = {v: feature_names(v, reference) for v in VIEWS}
    for view in VIEWS:
        values = rng.standard_normal((n, N_FEATURES))
        values[:, 0] += 1.6 * (y - 0.5)
        values[:, 1] -= 0.8 * (y - 0.5)
        if reference:
            center = np.array([ord(p[0]) - ord("A") for p in pids])
            median = 0.5 * center + 0.1 * rng.standard_normal(n)
            iqr = (1.0 + 0.5 * center) * np.exp(0.05 * rng.standard_normal(n))
            values[:, :3] = values[:, :3] * iqr[:, None] + median[:, None]
            values[:, 3] *= iqr
            values[:, 4] = np.abs(values[:, 4]) * iqr**2
            values = np.column_stack([values, median, iqr, np.full(n, 5000.0)])
        meta = pd.DataFrame(
            {
                "patient_id": pids,
                "event_timestamp": scan,
                "created_timestamp": CREATED,
                "study_id": [f"S-{p}" for p in pids],
                "scan_version": 1,
            }
        )
        frame = pd.concat(
            [meta, pd.DataFrame(values.astype(np.float32), columns=names[view])], axis=1
        )
        frame = frame[frame["patient_id"] != NO_IMAGING].reset_index(drop=True)
        write_offline(ws, view, "test-v1", frame, feature_names=names[view])
    export_clinical_and_labels(ws, clinical, labels, CREATED)
    apply(
        ws,
        {**dict.fromkeys(VIEWS, "test-v1"), "clinical": "v1", "labels": "v1"},
        feature_names=names,
    )
    write_all_stable(ws, {v: [c for c in names[v] if "__reference__" not in c] for v in VIEWS})
    return ws


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Workspace with a trained, promoted model and a materialized online store."""
    from atrx import registry
    from serving.materialize import run_materialize
    from training.run import run_train

    root = tmp_path_factory.mktemp("serving")
    ws = build_workspace(root / "home")
    study = root / "tiny.yaml"
    study.write_text(TINY_STUDY)
    trained = run_train(ws, as_of="2025-01-01", study_path=study)
    registry.promote(ws, trained.tag, reason="test")
    summary = run_materialize(ws)
    assert summary.model_tag == trained.tag
    return ws


@pytest.fixture(scope="module")
def model(ws: Workspace):
    from atrx import registry

    return registry.load_model(ws)


@pytest.fixture(scope="module")
def patients(ws: Workspace, model) -> list[str]:
    """Patients with every feature the model needs online."""
    from feature_repo.offline import read_offline

    pids = read_offline(ws, "clinical", "v1")["patient_id"].tolist()
    return [p for p in pids if p not in (NO_IMAGING, NULL_VASARI)]


@pytest.fixture(scope="module")
def expected(ws: Workspace, model, patients: list[str]) -> dict[str, float]:
    """In-process reference: Feast online lookup (feature_repo.store) + the registry's model.

    One row per call, as ``/predict`` computes it: a multi-row ``predict_proba`` may differ in
    the last bit (BLAS blocking), so batch answers are compared to 1e-12 instead.
    """
    from feature_repo.store import online_features

    frame = online_features(ws, patients, model.required_features)[model.required_features]
    return {
        pid: float(model.predict_proba(frame.iloc[[i]])[0, 1]) for i, pid in enumerate(patients)
    }


@pytest.fixture(scope="module")
def server(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from serving.server import free_port, serve

    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    handle = serve(ws, free_port(), api_key=API_KEY, log_file=log)
    try:
        handle.wait_ready(START_TIMEOUT)
        yield handle
    finally:
        handle.stop()
    assert not handle.running


def post(server, route: str, payload, key: str | None = API_KEY) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    if isinstance(payload, bytes | str):
        return httpx.post(
            f"{server.url}{route}", content=payload, timeout=30,
            headers={**headers, "Content-Type": "application/json"},
        )
    return httpx.post(f"{server.url}{route}", json=payload, headers=headers, timeout=30)


def served_lever(root: Path, study_extra: str, reference: bool = False) -> Iterator:
    """Train TINY_STUDY plus ``study_extra`` on :func:`build_workspace`, promote, materialise and
    serve it on a free port; yields (workspace, trained run, server handle, API key)."""
    from atrx import registry
    from serving.materialize import run_materialize
    from serving.server import free_port, serve
    from training.run import train
    from training.study import load_study

    ws = build_workspace(root / "home", reference=reference)
    study_path = root / "study.yaml"
    study_path.write_text(TINY_STUDY + study_extra)
    trained = train(ws, "2025-01-01", load_study(study_path), study_path)
    registry.promote(ws, trained.run.tag, reason="test")
    run_materialize(ws)
    handle = serve(ws, free_port(), api_key=API_KEY, log_file=root / "server.log")
    try:
        handle.wait_ready(START_TIMEOUT)
        yield ws, trained, handle, API_KEY
    finally:
        handle.stop()


def assert_served_test_patients_match(trained, handle, key: str, abs_tol: float) -> None:
    """/predict for the first and last test-center patient equals the protocol's own probability
    (the served model applies the run's transforms to raw online features)."""
    from training.protocol import FUSION

    run = trained.run
    test_ids = run.data.frame.iloc[run.split.test]["patient_id"].tolist()
    protocol_p = run.result.probabilities["test"][FUSION]
    for i in (0, len(test_ids) - 1):
        pid = test_ids[i]
        assert pid.startswith("C-")
        r = httpx.post(f"{handle.url}/predict", json={"patient_id": pid},
                       headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(float(protocol_p[i]), abs=abs_tol)


def error_of(response: httpx.Response) -> str:
    from serving.server import error_message

    return error_message(response)


# --- materialization ---------------------------------------------------------------------------


def test_materialize_loads_exactly_the_production_models_views(ws: Workspace, model) -> None:
    from serving.materialize import run_materialize
    from serving.model import feature_views_of

    summary = run_materialize(ws)  # incremental: nothing new, still fine
    needed = list(feature_views_of(model.required_features))
    assert summary.views == needed and "labels" not in summary.views
    assert set(summary.feature_versions) == set(needed)
    assert "labels" in summary.skipped_views
    rows = dict(summary.rows())
    assert rows["production model"] == summary.model_tag and rows["mode"] == "incremental"


def test_materialize_without_production_model_says_what_to_run(tmp_path: Path) -> None:
    from serving.errors import ServingSetupError
    from serving.materialize import run_materialize

    with pytest.raises(ServingSetupError, match=r"atrx train.*atrx retrain"):
        run_materialize(Workspace.at(tmp_path / "empty"))


# --- predictions -------------------------------------------------------------------------------


def test_predict_matches_in_process(server, ws: Workspace, model, patients, expected) -> None:
    from atrx import registry
    from feature_repo.store import online_features
    from serving.model import feature_views_of
    from serving.server import predict_http

    pid = patients[0]
    out = predict_http(server.url, pid, api_key=API_KEY)
    assert out["patient_id"] == pid
    assert out["probability"] == expected[pid]
    assert out["risk_group"] == model.risk_group([expected[pid]])[0]
    assert out["model_version"] == registry.production(ws).tag
    frame = online_features(ws, [pid], model.required_features)[model.required_features]
    assert out["imaging_score"] == pytest.approx(float(model.imaging_score(frame)[0]), abs=1e-12)
    points = model.contributions(frame).iloc[0]
    assert set(out["contributions"]) == set(model.nomogram_.coefs)
    for name, value in out["contributions"].items():
        assert value == pytest.approx(float(points[name]), abs=1e-9)
    assert set(out["feature_timestamps"]) == set(feature_views_of(model.required_features))


def test_predict_batch_one_lookup_in_request_order(server, patients, expected) -> None:
    ids = [patients[3], patients[1], patients[3]]
    r = post(server, "/predict_batch", {"patient_ids": ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["patient_id"] for p in body["predictions"]] == ids
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(
        [expected[i] for i in ids], rel=1e-12, abs=1e-15
    )


def test_predict_features_without_lookup(server, ws: Workspace, model, patients, expected) -> None:
    from feature_repo.store import online_features

    pid = patients[2]
    # /predict_features takes all four clinical values, whichever the fusion kept
    row = online_features(ws, [pid], [*model.selected_imaging_features_, "age", "sex", "who_grade",
                                      "vasari_score"]).iloc[0]
    imaging = {f: float(row[f]) for f in model.selected_imaging_features_}
    clinical = {
        "age": float(row["age"]), "sex": row["sex"], "who_grade": int(row["who_grade"]),
        "vasari_score": float(row["vasari_score"]),
    }
    r = post(server, "/predict_features", {"clinical": clinical, "imaging": imaging})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["probability"] == expected[pid]
    assert out["patient_id"] is None and out["feature_timestamps"] == {}

    dropped = model.selected_imaging_features_[0]
    partial = {k: v for k, v in imaging.items() if k != dropped}
    r = post(server, "/predict_features", {"clinical": clinical, "imaging": partial})
    assert r.status_code == 422 and dropped in error_of(r)
    r = post(server, "/predict_features",
             {"clinical": clinical, "imaging": {**imaging, "rad_overall_t1c__nope": 1.0}})
    assert r.status_code == 422 and "rad_overall_t1c__nope" in error_of(r)


def test_model_description(server, ws: Workspace, model) -> None:
    r = post(server, "/model", {})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["required_features"] == model.required_features
    assert "labels" not in body["feature_versions"]


# --- errors ------------------------------------------------------------------------------------


def test_unknown_patient_is_404_naming_its_position_not_the_id(server, patients) -> None:
    r = post(server, "/predict", {"patient_id": "Z-000000000000"})
    assert r.status_code == 404 and "Z-000000000000" not in error_of(r)
    assert "unknown patient id (request position 0)" in error_of(r)
    r = post(server, "/predict_batch", {"patient_ids": [patients[0], "Z-000000000001"]})
    assert r.status_code == 404 and "position 1" in error_of(r)
    assert "Z-000000000001" not in error_of(r) and patients[0] not in error_of(r)


def test_missing_and_null_features_are_422_naming_them(server, model) -> None:
    r = post(server, "/predict", {"patient_id": NO_IMAGING})
    assert r.status_code == 422
    for name in model.selected_imaging_features_:
        assert name in error_of(r)
    assert "age" not in error_of(r).split("missing features")[-1]
    r = post(server, "/predict", {"patient_id": NULL_VASARI})
    assert r.status_code == 422 and "vasari_score" in error_of(r)


@pytest.mark.parametrize(
    ("route", "payload", "field"),
    [
        ("/predict", {}, "patient_id"),
        ("/predict", {"patient_id": 12}, "patient_id"),
        ("/predict", {"patient_id": "A-1", "extra": 1}, "unexpected key"),
        ("/predict", {"patient_id": "bad id; drop"}, "patient_id"),
        ("/predict", b"{not json", "Invalid JSON"),
        ("/predict", b"[1, 2]", "PredictRequest"),
        ("/predict_batch", {"patient_ids": []}, "patient_ids"),
        ("/predict_batch", {"patient_ids": "A-1"}, "patient_ids"),
        ("/predict_features", {"clinical": {"age": 50, "sex": "male", "who_grade": 9,
                                            "vasari_score": 70}, "imaging": {}}, "who_grade"),
        ("/predict_features", {"clinical": {"age": 50, "sex": "x", "who_grade": 3,
                                            "vasari_score": 70}, "imaging": {}}, "clinical.sex"),
        ("/predict_features", {"clinical": {"age": 50, "sex": "male", "who_grade": 3,
                                            "vasari_score": 70},
                               "imaging": {"rad_overall_t1c__f0000": "high"}}, "imaging"),
    ],
)
def test_malformed_payload_is_422_naming_the_field(server, route, payload, field) -> None:
    r = post(server, route, payload)
    assert r.status_code == 422, r.text
    assert field in error_of(r)


def test_api_key(server, patients) -> None:
    assert post(server, "/predict", {"patient_id": patients[0]}, key="wrong").status_code == 401
    assert post(server, "/predict", {"patient_id": patients[0]}, key=None).status_code == 401
    # before the body is even parsed: no hint about the payload to an unauthenticated caller
    assert post(server, "/predict", b"{not json", key="wrong").status_code == 401
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200  # probes stay open


def test_logs_hold_ids_but_no_feature_values(server, patients) -> None:
    clinical = {"age": 61.987654, "sex": "female", "who_grade": 4, "vasari_score": 70.123456}
    post(server, "/predict_features", {"clinical": clinical, "imaging": {"x__y": 3.14159}})
    post(server, "/predict_features", {"clinical": {**clinical, "age": 987.654321}, "imaging": {}})
    post(server, "/predict", {"patient_id": "Z-0000000010fe"})  # unknown: not logged either
    text = server.log_tail(10**7)
    for value in ("61.987654", "70.123456", "3.14159", "987.654321", "Z-0000000010fe"):
        assert value not in text
    assert "unknown patient id" in text
    assert "Traceback" not in text.split("unknown patient id")[-1][:2000]  # 4xx: one line, no trace


def test_concurrent_requests_match_in_process(server, patients, expected) -> None:
    ids = [patients[i % len(patients)] for i in range(200)]
    with httpx.Client(timeout=60, headers={"X-API-Key": API_KEY}) as client:

        def call(pid: str) -> tuple[str, int, dict]:
            r = client.post(f"{server.url}/predict", json={"patient_id": pid})
            return pid, r.status_code, r.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, ids))
    assert [a[1] for a in answers] == [200] * 200
    for pid, _, body in answers:
        assert body["patient_id"] == pid
        assert body["probability"] == expected[pid]


def test_in_process_predictor_from_a_feature_store_yaml(
    ws: Workspace, patients, expected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ATRX_FEAST_CONFIG`` (the production route, e.g. Redis) reads and loads the same rows.

    The yaml names Feast's stock SQLite store, ``expected`` was read through ours
    (``feature_repo.fast_online``, requested features only): equal answers on the same file.
    """
    from serving.materialize import run_materialize
    from serving.online import FEAST_CONFIG_ENV
    from serving.predictor import FusionPredictor

    yaml = tmp_path / "feature_store.yaml"
    yaml.write_text(
        json.dumps(
            {
                "project": "atrx", "provider": "local",
                "registry": {"registry_type": "file", "path": ws.feast_registry},
                "online_store": {"type": "sqlite", "path": ws.online},
                "offline_store": {"type": "duckdb"},
                "entity_key_serialization_version": 3,
            }
        )
    )
    monkeypatch.setenv(FEAST_CONFIG_ENV, str(yaml))
    summary = run_materialize(ws)
    assert summary.online_store == f"sqlite: {ws.online}"
    predictor = FusionPredictor.load(ws)
    got = predictor.predict_ids(patients[:5])
    assert [p.probability for p in got] == pytest.approx(
        [expected[p] for p in patients[:5]], rel=1e-12, abs=1e-15
    )


def test_sigterm_to_atrx_serve_stops_the_server_and_frees_the_port(ws: Workspace, tmp_path: Path) -> None:
    """A scheduler's SIGTERM to `atrx serve` must not leave `bentoml serve` holding the port."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import psutil
    from process_tree import gone, kill_all

    from serving.server import free_port, wait_ready

    port = free_port()
    env = {**os.environ, "ATRX_API_KEY": API_KEY}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "atrx.cli", "serve", "--home", ws.home,
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    tree: list[psutil.Process] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", START_TIMEOUT)
        tree = psutil.Process(proc.pid).children(recursive=True)  # bentoml's arbiter and workers
        assert tree
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert all(gone(p) for p in tree)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(tree)  # a failure must not leave a server behind for the tests after this one
        log.close()
    with socket.socket() as sock:  # the port is free again: nothing was left behind
        sock.bind(("127.0.0.1", port))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)


# --- versions (runs last: switches a feature version of the shared workspace) -----------------


def test_stale_version_is_422_and_a_mismatch_refuses_to_start(
    server, ws: Workspace, model, patients, tmp_path: Path
) -> None:
    from feature_repo.offline import read_offline, write_offline
    from feature_repo.store import apply, materialize
    from serving.errors import ServingSetupError
    from serving.model import feature_views_of
    from serving.server import ServerStartError, free_port, serve

    view = next(v for v in feature_views_of(model.required_features) if v != "clinical")
    frame = read_offline(ws, view, "test-v1").drop(columns=["feature_version"])
    write_offline(ws, view, "test-v2", frame, feature_names=feature_names(view))
    apply(ws, {view: "test-v2"}, feature_names={view: feature_names(view)})
    materialize(ws, views=[view])  # the new version's rows are online: values, but another recipe

    r = post(server, "/predict", {"patient_id": patients[0]})
    assert r.status_code == 422, r.text
    message = error_of(r)
    assert "stale" in message and "test-v2" in message and "test-v1" in message
    for name in feature_views_of(model.required_features)[view]:
        assert name in message

    with pytest.raises(ServingSetupError, match=rf"refusing to serve.*{view}.*test-v1.*test-v2"):
        serve(ws, free_port(), api_key=API_KEY)  # the pre-flight check, in this process
    refused = serve(ws, free_port(), api_key=API_KEY, check=False,
                    log_file=tmp_path / "refused.log")
    try:
        with pytest.raises(ServerStartError, match=r"exited") as info:
            refused.wait_ready(START_TIMEOUT)
        assert "refusing to serve" in str(info.value) and view in str(info.value)
    finally:
        refused.stop()
    assert not refused.running
